"""arcade db: the ledger's database itself.

  arcade db upgrade [--db DB]

upgrade creates the ledger's schema in an empty database, or brings an existing one up to this
release: every named migration it has not had yet, each in its own transaction, each once (the
relay does the same when it opens the database; run this first to upgrade at a time you choose,
e.g. before starting several relays on one PostgreSQL database). DB is a SQLite path or a
postgresql://user:password@host:port/database URL (default: ARCADE_DB from the environment or .env;
prefer the environment to --db for a URL with a password: argv is visible to every local user).
"""
import argparse
import sys

from relay import ledger as ledger_mod
from relay.backends import redact
from relay.config import db_path
from relay.ledger import StorageError, open_ledger


def main(argv=None):
    p = argparse.ArgumentParser(prog="arcade db", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    up = sub.add_parser("upgrade", help="create or migrate the ledger's schema to this release",
                        description=__doc__.split("\n\n")[2])
    up.add_argument("--db", default=None, help="SQLite path or postgresql:// URL (default: ARCADE_DB or ./arcade.db)")
    args = p.parse_args(argv)
    db = args.db or db_path()
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
