"""arcade db: the ledger's database itself.

  arcade db upgrade [--db DB] [--backup-dir DIR]
  arcade db status [--db DB]

upgrade creates the ledger's schema in an empty database, or brings an existing one up to this
release: every named migration it has not had yet, each in its own transaction, each once (the
relay does the same when it opens the database; run this first to upgrade at a time you choose,
e.g. before starting several relays on one PostgreSQL database). DB is a SQLite path or a
postgresql://user:password@host:port/database URL (default: ARCADE_DB from the environment or .env;
prefer the environment to --db for a URL with a password: argv is visible to every local user).
Before migrating an existing SQLite database, upgrade copies it (SQLite's online backup API, 0600):
beside it as <db>.before-upgrade-<time>, or into --backup-dir (docs/deploy.md, Upgrades).

status says, without changing anything, which migrations a SQLite database has and lacks (exit 1
when it lacks some).
"""
import argparse
import sys

from relay import ledger as ledger_mod
from relay.backends import redact
from relay.config import db_path
from relay.ledger import LedgerError, StorageError, inspect_database, open_ledger
from tools.deploy.backup import BackupError, backup_before_upgrade


def main(argv=None):
    p = argparse.ArgumentParser(prog="arcade db", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    up = sub.add_parser("upgrade", help="create or migrate the ledger's schema to this release",
                        description=__doc__.split("\n\n")[2])
    up.add_argument("--db", default=None, help="SQLite path or postgresql:// URL (default: ARCADE_DB or ./arcade.db)")
    up.add_argument("--backup-dir", default=None, help="where the copy taken before migrating a SQLite database goes "
                                                      "(default: beside it)")
    st = sub.add_parser("status", help="which migrations a SQLite database has and lacks (changes nothing)")
    st.add_argument("--db", default=None, help="SQLite path (default: ARCADE_DB or ./arcade.db)")
    args = p.parse_args(argv)
    db = args.db or db_path()
    if args.command == "status":
        return _status(db)
    try:
        copy = backup_before_upgrade(db, args.backup_dir)
    except (BackupError, LedgerError, OSError) + StorageError as e:
        print("arcade db: cannot copy %s before upgrading it: %s" % (redact(db), e), file=sys.stderr)
        return 2
    if copy:
        print("arcade db: copied %s to %s first" % (redact(db), copy), flush=True)
    print("arcade db: opening %s ..." % redact(db), flush=True)
    try:
        with open_ledger(db) as led:
            created, applied, have = led.created_now, led.migrated_now, led.migrations()
            backend, ledger_id = led.backend, led.ledger_id
    except StorageError as e:
        print("arcade db: database %s: %s" % (redact(db), e), file=sys.stderr)
        return 2
    if created:
        print("created the ledger's schema (%s, ledger %s)" % (backend, ledger_id[:8]))
    for name in applied:
        print("applied migration %s" % name)
    print("%s (%s, ledger %s) is up to date: schema version %d with %d of %d migration(s)%s"
          % (redact(db), backend, ledger_id[:8], ledger_mod.SCHEMA_VERSION, len(have), len(ledger_mod.MIGRATIONS),
             "" if applied or created else "; nothing to do"))
    return 0


def _status(db):
    try:
        info = inspect_database(db)
    except (LedgerError,) + StorageError as e:
        print("arcade db status: %s" % e, file=sys.stderr)
        return 2
    print("%s: ledger %s, schema version %d, %d migration(s) applied, %s" % (
        db, info["ledger_id"][:8], info["schema_version"], len(info["migrations"]),
        ("missing: " + ", ".join(info["missing"]) + " (run arcade db upgrade)") if info["missing"] else "none missing"))
    return 1 if info["missing"] else 0
