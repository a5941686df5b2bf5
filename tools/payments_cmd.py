"""arcade payments: recent payments and where each one's credit is (state, reason, timestamps).

  arcade payments [--limit N] [--stuck] [--json]

--stuck lists only credits queued or sent and unacknowledged for longer than ARCADE_STUCK_AFTER.
"""
import argparse
import json
import os
import sys
import time

from relay import pricing
from relay.config import DEFAULTS, db_path
from relay.ledger import StorageError, open_ledger

TIMES = ("created_at", "paid_at", "queued_at", "sent_at", "done_at")


def _when(ts):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _stuck_after():
    try:
        return float(os.environ.get("ARCADE_STUCK_AFTER", DEFAULTS["ARCADE_STUCK_AFTER"]))
    except ValueError:
        return DEFAULTS["ARCADE_STUCK_AFTER"]


def main(argv=None):
    p = argparse.ArgumentParser(prog="arcade payments", description="Recent payments with their delivery state: "
                                "pending, queued, sent, applied, duplicate, rejected, invalid, failed, expired.")
    p.add_argument("--db", default=None, help="ledger database (default: ARCADE_DB or ./arcade.db)")
    p.add_argument("--limit", type=int, default=50, help="how many, newest first (default %(default)s)")
    p.add_argument("--stuck", action="store_true", help="only credits unacknowledged for longer than "
                   "--stuck-after seconds")
    p.add_argument("--stuck-after", type=float, default=None,
                   help="seconds (default ARCADE_STUCK_AFTER or %s)" % DEFAULTS["ARCADE_STUCK_AFTER"])
    p.add_argument("--json", action="store_true", help="a JSON array with every field; timestamps in Unix seconds")
    args = p.parse_args(argv)
    if args.limit < 1:
        p.error("--limit %d: give at least 1" % args.limit)
    db = args.db or db_path()
    if not os.path.exists(db):
        print("arcade payments: no database at %s: set ARCADE_DB (or --db) to the relay's database" % db,
              file=sys.stderr)
        return 2
    stuck_after = args.stuck_after if args.stuck_after is not None else _stuck_after()
    try:
        with open_ledger(db) as ledger:
            payments = ledger.list_payments(limit=args.limit, stuck=args.stuck, stuck_after=stuck_after)
    except StorageError as e:
        print("arcade payments: database %s: %s" % (db, e), file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(payments, indent=2))
        return 0
    if not payments:
        print("no stuck credits" if args.stuck else "no payments yet")
        return 0
    rows = [("CREATED", "CABINET", "STATE", "CREDITS", "PULSES", "AMOUNT", "SEQ", "TRIES", "UPDATED", "REASON",
             "SESSION")]
    for x in payments:
        amount = pricing.format_price(x["amount"], x["currency"]) if x["amount"] is not None and x["currency"] \
            else "-"
        rows.append((_when(x["created_at"]), x["cabinet_id"] or "-", x["state"], str(x["credits"]), str(x["pulses"]),
                     amount, str(x["seq"]) if x["seq"] is not None else "-", str(x["attempts"]),
                     _when(x["updated_at"]), x["reason"] or "-", x["session_id"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1])
    return 0
