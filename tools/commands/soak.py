"""arcade soak: the command line of tools/lab/soak.py (options, exit status, the printed figures)."""
import argparse
import json
import random
import sys

from tools.lab import soak as lab


def main(argv=None):
    p = argparse.ArgumentParser(prog="arcade soak", description=lab.__doc__.strip().splitlines()[0])
    p.add_argument("--payments", type=int, default=1000, help="payments to send (default %(default)s)")
    p.add_argument("--cabinets", type=int, default=20, help="simulated cabinets (default %(default)s)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: a new one, printed)")
    p.add_argument("--rate", type=float, default=10.0, help="payments per second (default %(default)s)")
    p.add_argument("--fault-every", default="3,8", help="seconds between faults, min,max (default %(default)s)")
    p.add_argument("--faults", default="1,2,3,4,5", help="fault kinds to fire (default %(default)s)")
    p.add_argument("--pulse-ms", type=int, default=20, help="simulated coin pulse width (default %(default)s)")
    p.add_argument("--gap-ms", type=int, default=20, help="simulated gap between pulses (default %(default)s)")
    p.add_argument("--dir", default=str(lab.ROOT / "build" / "soak"), help="work folder (logs, database, flash)")
    p.add_argument("--backend", default="sqlite", choices=lab.BACKENDS,
                   help="the ledger: a SQLite file, or a private PostgreSQL cluster (default %(default)s)")
    p.add_argument("--quiet", type=float, default=lab.QUIET, metavar="S",
                   help="after settling, seconds without a pulse before the books close (default %(default)s)")
    p.add_argument("--relays", type=int, default=1, metavar="N",
                   help="relay processes behind nginx (N > 1 needs --backend postgresql; default %(default)s)")
    p.add_argument("--broker", default="mosquitto", choices=lab.BROKERS,
                   help="one private mosquitto, or a 3-node NATS Server cluster (JetStream + MQTT; fault 2 "
                        "kills a node) (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the result as JSON too")
    args = p.parse_args(argv)
    try:
        gap = tuple(float(x) for x in args.fault_every.split(","))
        kinds = sorted({int(k) for k in args.faults.split(",") if k.strip()})
    except ValueError:
        p.error("--fault-every takes MIN,MAX seconds and --faults a list of 1..5")
    if len(gap) != 2 or not 0 < gap[0] <= gap[1] or not kinds or any(k not in lab.KINDS for k in kinds):
        p.error("--fault-every takes MIN,MAX seconds (0 < MIN <= MAX) and --faults a list of 1..5")
    if args.relays < 1 or (args.relays > 1 and args.backend != "postgresql"):
        p.error("--relays: 1, or more with --backend postgresql (several relays share one PostgreSQL database)")
    if args.payments < 1 or args.cabinets < 1 or args.rate <= 0:
        p.error("--payments, --cabinets and --rate must be positive")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10 ** 6)
    soak = lab.Soak(args.dir, args.payments, args.cabinets, seed, args.rate, gap, args.pulse_ms, args.gap_ms, kinds,
                    backend=args.backend, quiet=args.quiet, relays=args.relays, broker=args.broker)
    if 5 in kinds and soak.proxy_cls is None and args.broker == "mosquitto":
        print("arcade soak: fault 5 needs tools/lab/tcpproxy.py; running faults %s" % soak.kinds, file=sys.stderr)
    try:
        result = soak.run()
    except (TimeoutError, RuntimeError, OSError) as e:
        print("arcade soak: FAILED (seed %d): %s (logs in %s)" % (seed, e, soak.work), file=sys.stderr)
        return 1
    (soak.work / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    print(lab.summary(result))
    if args.json:
        print(json.dumps(result, indent=2))
    print("details: %s" % (soak.work / "soak.json"))
    return 0 if result["balanced"] else 1


if __name__ == "__main__":
    sys.exit(main())
