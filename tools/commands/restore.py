"""arcade restore: put a backup back as the relay's database.

  arcade restore SRC [--db PATH] [--force]

Refuses while a relay runs on the database (it holds the dispatcher lock) and refuses to replace an
existing database, unless --force; the replaced database is first copied beside it
(<db>.before-restore-<time>). The restored database keeps the backup's ledger id, so the ledger rules
of docs/protocol.md apply: cabinets re-sequence or recognise duplicates, nothing is pulsed twice.
An older backup's schema is upgraded. Payments made after the backup come back with `arcade reconcile`.
"""
import argparse
import sys

from relay.backends import redact
from relay.config import db_path
from relay.ledger import StorageError
from tools.deploy.backup import BackupError, restore


def main(argv=None):
    p = argparse.ArgumentParser(prog="arcade restore", description=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="a file `arcade backup` wrote")
    p.add_argument("--db", help="the database to restore into (default: ARCADE_DB from the environment or ./.env)")
    p.add_argument("--force", action="store_true", help="replace an existing (even a live) database")
    args = p.parse_args(argv)
    db = args.db or db_path()
    try:
        out = restore(args.src, db, force=args.force)
    except (BackupError, OSError) + StorageError as e:
        print("arcade restore: %s" % e, file=sys.stderr)
        return 2
    print("arcade restore: %s is now %s" % (redact(db), args.src))
    if out["ledger"]:
        print("  ledger %s, %d cabinet(s), %d payment(s)%s" % (out["ledger"][:8], out["cabinets"], out["payments"],
              "; schema upgraded: " + ", ".join(out["migrated"]) if out["migrated"] else ""))
    if out["replaced"]:
        print("  the database it replaced is kept in %s" % out["replaced"])
    if out["live"]:
        print("  a relay is running on it: restart it now (systemctl restart arcade-relay)")
    for note in out["notes"]:
        print("  note: %s" % note)
    return 0
