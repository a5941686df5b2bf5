"""The ledger for the current request (like flaskr's db.py): opened on first use.

In a server process (keep_connections(app), called by `arcade relay`) each web worker thread keeps its
SQLite ledger (its connection) open from one request to the next: opening one runs PRAGMAs and the
schema check, and closing the last connection checkpoints the WAL, which together cost more than the
webhook's own transaction. A ledger left in a transaction or after an unhandled error is closed at
teardown and opened afresh. Otherwise (tests, one-off apps: many apps in one process) a ledger is
opened per request and closed at teardown; PostgreSQL ledgers always borrow a pooled connection per
request.
"""
import threading

from flask import current_app, g

from relay.backends import is_postgres
from relay.ledger import open_ledger


def get_ledger():
    if "ledger" not in g:
        db, timeout = current_app.config["ARCADE_DB"], current_app.config["ARCADE_DB_BUSY_TIMEOUT"]
        kept = current_app.extensions.get("arcade_ledgers")
        if kept is None or is_postgres(db):
            g.ledger = open_ledger(db, timeout)
        else:
            ledger = getattr(kept, "ledger", None)
            if ledger is None or ledger.path != str(db):
                ledger = kept.ledger = open_ledger(db, timeout)
            g.ledger, g.ledger_kept = ledger, True
    return g.ledger


def close_ledger(e=None):
    ledger = g.pop("ledger", None)
    kept = g.pop("ledger_kept", False)
    if ledger is None:
        return
    if kept and e is None and not ledger.in_transaction:
        return          # this thread's next request uses it again
    if kept:
        current_app.extensions["arcade_ledgers"].ledger = None
    ledger.close()


def keep_connections(app):
    """SQLite: one open ledger per web thread of this app, for the life of the process (a server's
    threads are few and fixed)."""
    app.extensions["arcade_ledgers"] = threading.local()


def init_app(app):
    app.teardown_appcontext(close_ledger)
    # Create the database (and its ledger id) now, so a bad path stops the relay at start-up.
    with open_ledger(app.config["ARCADE_DB"], app.config["ARCADE_DB_BUSY_TIMEOUT"]) as ledger:
        app.config["ARCADE_LEDGER_ID"] = ledger.ledger_id
