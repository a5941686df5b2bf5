"""arcade bench: the command line of tools/lab/bench.py (options, exit status, the printed figures)."""
import argparse
import json
import os
import sys
import time
from pathlib import Path

from tools.lab import bench as lab


def main(argv=None):
    p = argparse.ArgumentParser(prog="arcade bench", description=lab.__doc__.strip().splitlines()[0])
    p.add_argument("--payments", type=int, default=200, help="payments for the latency figure (default %(default)s)")
    p.add_argument("--cabinets", type=int, default=4, help="simulated cabinets (default %(default)s)")
    p.add_argument("--webhooks", type=int, default=1000, help="webhooks for the throughput figure (default %(default)s)")
    p.add_argument("--senders", type=int, default=8, help="concurrent keep-alive senders (default %(default)s)")
    p.add_argument("--queued", type=int, default=10,
                   help="payments queued while a cabinet is stopped (default %(default)s)")
    p.add_argument("--ledger-sizes", default="10000,1000000",
                   help="ledger sizes (payments) for the growth figure, comma separated; '' to skip "
                        "(default %(default)s)")
    p.add_argument("--growth-webhooks", type=int, default=300, help="webhooks timed at each ledger size")
    p.add_argument("--pulse-ms", type=int, default=None, help="coin pulse width (default: the board's, 100)")
    p.add_argument("--gap-ms", type=int, default=None, help="gap between pulses (default: the board's, 150)")
    p.add_argument("--designs", default="relay,naive",
                   help="which designs to run, in order: relay, naive, relay-postgresql (the relay with its "
                        "ledger on a private PostgreSQL) (default %(default)s)")
    p.add_argument("--dir", default=str(lab.ROOT / "build" / "bench"), help="work folder (logs, databases)")
    p.add_argument("--out", default=None, help="write the figures as JSON here (default DIR/bench.json)")
    args = p.parse_args(argv)
    try:
        sizes = [int(s) for s in args.ledger_sizes.split(",") if s.strip()]
    except ValueError:
        p.error("--ledger-sizes %r: give whole numbers separated by commas, e.g. 10000,1000000" % args.ledger_sizes)
    designs = [d.strip() for d in args.designs.split(",") if d.strip()]
    if not designs or any(d not in ("relay", "naive", "relay-postgresql") for d in designs):
        p.error("--designs %r: use relay, naive and/or relay-postgresql" % args.designs)
    if min(args.payments, args.cabinets, args.webhooks, args.senders, args.queued) < 1 or \
            any(s < 0 for s in sizes) or sizes != sorted(sizes):
        p.error("counts must be positive and --ledger-sizes increasing")

    bench = lab.Bench(args)
    started = time.monotonic()
    result = {"config": {k: v for k, v in vars(args).items() if k not in ("dir", "out")},
              "cpus": os.cpu_count(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        bench.setup()
        for name in designs:
            result[name] = bench.run_design(name)
        if sizes:
            result["growth"] = bench.growth(sizes, args.growth_webhooks)
    except (TimeoutError, RuntimeError, OSError) as e:
        lab.say("arcade bench: FAILED: %s (logs in %s)" % (e, bench.work))
        return 1
    finally:
        bench.stop()
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    out = Path(args.out or bench.work / "bench.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    if "relay" in result and "naive" in result:
        print(lab.table(result))
    else:
        print(json.dumps(result, indent=2))
    print("\nfigures as JSON: %s (%.0f s)" % (out, result["elapsed_s"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
