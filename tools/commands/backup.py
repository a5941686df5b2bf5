"""arcade backup: a consistent copy of the relay's database, taken while the relay runs.

  arcade backup DEST [--db PATH]

DEST is a new file or a directory (a dated name, arcade-<ledger>-<UTC time>.db, is made in it).
SQLite: SQLite's online backup API, so payments keep flowing during the copy; the copy is checked
(integrity_check) and written 0600. PostgreSQL (ARCADE_DB=postgresql://...): pg_dump --format=custom.
docs/deploy.md has a nightly systemd timer and the restore drill.
"""
import argparse
import sys

from relay.config import db_path
from relay.ledger import StorageError
from tools.deploy.backup import BackupError, backup


def main(argv=None):
    p = argparse.ArgumentParser(prog="arcade backup", description=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dest", help="a new file, or a directory for a dated file")
    p.add_argument("--db", help="the database (default: ARCADE_DB from the environment or ./.env)")
    args = p.parse_args(argv)
    db = args.db or db_path()
    shown = [0]

    def progress(remaining, total):
        if total > 5000 and remaining and shown[0] != remaining * 10 // total:
            shown[0] = remaining * 10 // total
            print("  copied %d of %d pages" % (total - remaining, total), file=sys.stderr, flush=True)

    try:
        path, info = backup(db, args.dest, progress)
    except (BackupError, OSError) + StorageError as e:
        print("arcade backup: %s" % e, file=sys.stderr)
        return 2
    if info["kind"] == "sqlite":
        print("arcade backup: %s (ledger %s, %d cabinet(s), %d payment(s), %d bytes, 0600)"
              % (path, info["ledger_id"][:8], len(info["cabinets"]), info["payments"], info["size"]))
    else:
        print("arcade backup: %s (pg_dump, %d bytes, 0600)" % (path, info["size"]))
    return 0
