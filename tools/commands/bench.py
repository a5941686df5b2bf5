"""arcade bench: the command line of tools/lab/bench.py (options, exit status, the printed figures).

`--write-docs` also copies the JSON to docs/bench/latest.json and regenerates the marked region of
docs/benchmarks.md from it; `--render-docs` regenerates that region from the committed JSON without
running anything (tests/test_bench_smoke.py checks the two agree, so a hand edit fails).
"""
import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from tools.lab import bench as lab

DOCS = lab.ROOT / "docs" / "benchmarks.md"
LATEST = lab.ROOT / "docs" / "bench" / "latest.json"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="arcade bench", description=lab.__doc__.strip().splitlines()[0])
    p.add_argument("--payments", type=int, default=200, help="payments for the latency figure (default %(default)s)")
    p.add_argument("--cabinets", type=int, default=4, help="simulated cabinets (default %(default)s)")
    p.add_argument("--webhooks", type=int, default=1000, help="webhooks for the throughput figure (default %(default)s)")
    p.add_argument("--senders", type=int, default=8, help="concurrent keep-alive senders (default %(default)s)")
    p.add_argument("--queued", type=int, default=10,
                   help="payments queued while a cabinet is stopped (default %(default)s)")
    p.add_argument("--repeat", type=int, default=3,
                   help="repetitions of every figure; the median and the spread are reported (default %(default)s)")
    p.add_argument("--warmup", type=int, default=200,
                   help="untimed webhooks sent to each design before its figures (default %(default)s; 0: none)")
    p.add_argument("--ledger-sizes", default="10000,1000000",
                   help="ledger sizes (payments) for the growth figure, comma separated; '' to skip "
                        "(default %(default)s)")
    p.add_argument("--growth-webhooks", type=int, default=300, help="webhooks timed at each ledger size")
    p.add_argument("--profile", type=int, default=500,
                   help="webhooks profiled with pyinstrument, in process (default %(default)s; 0: no profile)")
    p.add_argument("--pulse-ms", type=int, default=None, help="coin pulse width (default: the board's, 100)")
    p.add_argument("--gap-ms", type=int, default=None, help="gap between pulses (default: the board's, 150)")
    p.add_argument("--designs", default="relay,relay-workers,naive,relay-postgresql,relay-postgresql-3,relay-nats-cluster",
                   help="which designs to run, in order: %s (default %%(default)s)" % ", ".join(lab.DESIGNS))
    p.add_argument("--dir", default=str(lab.ROOT / "build" / "bench"), help="work folder (logs, databases)")
    p.add_argument("--out", default=None, help="write the figures as JSON here (default DIR/bench.json)")
    p.add_argument("--write-docs", action="store_true",
                   help="also copy the JSON to docs/bench/latest.json and regenerate docs/benchmarks.md's table")
    p.add_argument("--render-docs", metavar="JSON", nargs="?", const=str(LATEST), default=None,
                   help="run nothing: regenerate docs/benchmarks.md's table from JSON (default docs/bench/latest.json)")
    args = p.parse_args(argv)
    if args.render_docs:
        try:
            result = json.loads(Path(args.render_docs).read_text())
            lab.write_docs(result, DOCS)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            print("arcade bench: cannot render %s: %s" % (args.render_docs, e), file=sys.stderr)
            return 1
        print("docs/benchmarks.md regenerated from %s" % args.render_docs)
        return 0
    try:
        sizes = [int(s) for s in args.ledger_sizes.split(",") if s.strip()]
    except ValueError:
        p.error("--ledger-sizes %r: give whole numbers separated by commas, e.g. 10000,1000000" % args.ledger_sizes)
    designs = [d.strip() for d in args.designs.split(",") if d.strip()]
    if not designs or any(d not in lab.DESIGNS for d in designs) or len(set(designs)) != len(designs):
        p.error("--designs %r: use each of %s at most once" % (args.designs, ", ".join(lab.DESIGNS)))
    if min(args.payments, args.cabinets, args.webhooks, args.senders, args.queued, args.repeat) < 1 or \
            min(args.warmup, args.profile) < 0 or any(s < 0 for s in sizes) or sizes != sorted(sizes):
        p.error("counts must be positive (--warmup and --profile may be 0) and --ledger-sizes increasing")

    bench = lab.Bench(args)
    started = time.monotonic()
    commit, dirty = lab.git_commit()
    result = {"schema": 2, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": commit,
              "dirty": dirty, "command": "arcade bench" + "".join(" " + shlex.quote(a) for a in argv
                                                                 if a not in ("--write-docs",)),
              "machine": lab.machine(),
              "options": {k: v for k, v in vars(args).items() if k not in ("dir", "out", "write_docs", "render_docs")},
              "designs": {}}
    try:
        if args.profile:
            lab.say("profile: %d webhooks through the app in process (pyinstrument)" % args.profile)
            result["profile"] = lab.profile_webhook(args.profile)
        bench.setup()
        for name in designs:
            result["designs"][name] = bench.run_design(name)
        if sizes:
            result["growth"] = bench.growth(sizes, args.growth_webhooks)
    except (TimeoutError, RuntimeError, OSError) as e:
        lab.say("arcade bench: FAILED: %s (logs in %s)" % (e, bench.work))
        return 1
    finally:
        bench.stop()
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    out = Path(args.out or bench.work / "bench.json")
    text = json.dumps(result, indent=2, ensure_ascii=False) + "\n"
    out.write_text(text)
    print(lab.table(result))
    print("figures as JSON: %s (%.0f s)" % (out, result["elapsed_s"]))
    if args.write_docs:
        LATEST.parent.mkdir(parents=True, exist_ok=True)
        LATEST.write_text(text)
        lab.write_docs(result, DOCS)
        print("docs/bench/latest.json and docs/benchmarks.md updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
