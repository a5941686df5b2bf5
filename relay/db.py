"""The ledger for the current request (like flaskr's db.py): opened on first use, closed at teardown."""
from flask import current_app, g

from relay.ledger import open_ledger


def get_ledger():
    if "ledger" not in g:
        g.ledger = open_ledger(current_app.config["ARCADE_DB"], current_app.config["ARCADE_DB_BUSY_TIMEOUT"])
    return g.ledger


def close_ledger(e=None):
    ledger = g.pop("ledger", None)
    if ledger is not None:
        ledger.close()


def init_app(app):
    app.teardown_appcontext(close_ledger)
    # Create the database (and its ledger id) now, so a bad path stops the relay at start-up.
    with open_ledger(app.config["ARCADE_DB"], app.config["ARCADE_DB_BUSY_TIMEOUT"]) as ledger:
        app.config["ARCADE_LEDGER_ID"] = ledger.ledger_id
