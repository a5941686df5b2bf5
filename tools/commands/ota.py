"""arcade ota: over-the-air firmware releases.

  arcade ota build [--out DIR] [--source]  compile the firmware (.mpy; --source: the .py files, for
                                           `arcade simulate`), add the pinned umqtt.simple and write
                                           DIR/<version>/manifest.json + files/ (default build/ota)
  arcade ota show DIR                      check a built release against its manifest and print it
  arcade ota push VERSION --cabinet ID | --all [--canary N] [--when idle]
                                           send a release over MQTT, install it, probe the new firmware;
                                           a rollout stops at the first cabinet that fails
  arcade ota status                        per cabinet: running version and the last `ota` it reported
"""
import argparse
import json
import sys
from pathlib import Path

from relay import config as relay_config
from relay import ota as relay_ota
from relay.ledger import ledger_exists, open_ledger
from tools.mpy import build as mpy_build
from tools.mpy import release


def _push(args):
    try:
        settings = relay_config.load(require_webhook_secret=False)
    except relay_config.ConfigError as e:
        print("arcade ota push: %s" % e, file=sys.stderr)
        return 2
    db = args.db or settings["ARCADE_DB"]
    rel = Path(args.releases) / args.version
    try:
        relay_ota.load(rel)
    except relay_ota.ReleaseError as e:
        print("arcade ota push: %s" % e, file=sys.stderr)
        return 1
    if not ledger_exists(db):
        print("arcade ota push: no ledger at %s" % db, file=sys.stderr)
        return 2
    with open_ledger(db) as ledger:
        cabs = [c for c in ledger.list_cabinets() if args.all or c["id"] == args.cabinet]
        if not cabs:
            print("arcade ota push: no cabinet %s in the ledger" % args.cabinet, file=sys.stderr)
            return 1
        secrets = {c["id"]: ledger.get_cabinet(c["id"])["secret"] for c in cabs}
    order = [c["id"] for c in cabs]
    canary = order[:args.canary] if args.canary else []
    rc = 0
    for i, cab in enumerate(order):
        if canary and i == len(canary):
            print("canaries %s updated and healthy: the rest of the rollout goes on" % ", ".join(canary))

        def idle(cab=cab):
            if args.when != "idle":
                return True
            with open_ledger(db) as ledger:      # no credit queued or sent and not yet acked
                return not any(c["id"] == cab and c["pending"] for c in ledger.list_cabinets())

        def progress(name, off, size, cab=cab):
            if off == 0:            # one line a file
                print("  %s: sending %s (%d B)" % (cab, name, size), file=sys.stderr)

        p = relay_ota.Pusher(settings["MQTT_URL"], settings["ARCADE_TOPIC_PREFIX"], cab, secrets[cab],
                             timeout=args.timeout)
        try:
            res = p.push(rel, idle=idle, probation_s=args.probation, progress=progress)
        except relay_ota.PushError as e:
            res = {"result": "lost", "reason": str(e)}
        finally:
            p.close()
        res["cabinet"] = cab
        print(json.dumps(res))
        if res["result"] not in ("ok", "already"):
            rc = 1
            if len(order) > 1:
                print("arcade ota push: %s: %s (%s): the rollout stops here; %d cabinet(s) not updated"
                      % (cab, res["result"], res.get("reason", ""), len(order) - i - 1), file=sys.stderr)
            break
    return rc


def _status(args):
    db = args.db or relay_config.db_path()
    if not ledger_exists(db):
        print("arcade ota status: no ledger at %s" % db, file=sys.stderr)
        return 2
    with open_ledger(db) as ledger:
        cabs = ledger.list_cabinets()
    print("%-16s %-8s %-8s %s" % ("cabinet", "online", "running", "ota (chip, MicroPython, state)"))
    for c in cabs:
        st = c.get("status") or {}
        print("%-16s %-8s %-8s %s" % (c["id"], "yes" if c.get("online") else "no", st.get("fw", "?"),
                                      st.get("ota", "-")))
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="arcade ota", description=__doc__.strip().splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build a release from firmware/ and the pinned umqtt.simple")
    b.add_argument("--out", default=str(release.OUT), help="releases folder (default %(default)s)")
    b.add_argument("--source", action="store_true", help="ship the .py sources (for `arcade simulate`: CPython)")
    b.add_argument("--src", default=str(mpy_build.SRC), help=argparse.SUPPRESS)
    b.add_argument("--version", default=None, help="the release's version (default: firmware/protocol.py's FW)")
    b.add_argument("--probation-s", type=int, default=120,
                   help="seconds the new firmware has to reach the broker and answer the probe (5-900)")
    s = sub.add_parser("show", help="check a built release and print its manifest")
    s.add_argument("dir", help="the release folder, e.g. build/ota/0.2.0")
    u = sub.add_parser("push", help="send a release to cabinets over MQTT")
    u.add_argument("version")
    g = u.add_mutually_exclusive_group(required=True)
    g.add_argument("--cabinet")
    g.add_argument("--all", action="store_true")
    u.add_argument("--canary", type=int, default=0, help="update these many first; stop if one fails")
    u.add_argument("--when", choices=("now", "idle"), default="idle",
                   help="idle (default): install only when the ledger has no credit in flight for it")
    u.add_argument("--releases", default=str(release.OUT))
    u.add_argument("--db", default=None)
    u.add_argument("--timeout", type=float, default=20.0, help="seconds without an answer before asking again")
    u.add_argument("--probation", type=int, default=relay_ota.PROBATION_S, help=argparse.SUPPRESS)
    t = sub.add_parser("status", help="per cabinet: running version, OTA state")
    t.add_argument("--db", default=None)
    args = p.parse_args(argv)
    if args.cmd == "push":
        return _push(args)
    if args.cmd == "status":
        return _status(args)
    if args.cmd == "build":
        try:
            release.build(args.out, src=args.src, source=args.source, version=args.version,
                          probation_s=args.probation_s)
        except (release.ReleaseError, mpy_build.BuildError) as e:
            print("arcade ota build: %s" % e, file=sys.stderr)
            return 1
        return 0
    try:
        raw, m, files = relay_ota.load(args.dir)
    except relay_ota.ReleaseError as e:
        print("arcade ota show: %s" % e, file=sys.stderr)
        return 1
    print("release %s for %s, MicroPython >= %s: %d files, %d bytes, every hash checked"
          % (m["version"], ", ".join(m["chips"]), m["min_micropython"], len(files), sum(map(len, files.values()))))
    for f in m["files"]:
        print("  %-20s %7d B  %s" % (f["name"], f["size"], f["sha256"][:16]))
    print(json.dumps({"manifest_bytes": len(raw)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
