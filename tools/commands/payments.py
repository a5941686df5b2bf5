"""arcade payments: recent payments and where each one's credit is (state, reason, timestamps).

  arcade payments [--limit N] [--stuck] [--session ID] [--json]

Each payment's TIMELINE is the states it went through with when: paid (money received, recorded
with its queued credit in one transaction), queued, sent (the broker took the publish), then
applied | duplicate | rejected (the cabinet's signed ack), e.g. `paid 12:00:01 > sent +0.1s >
applied +1.2s`. --stuck lists only credits queued or sent and unacknowledged for longer than
ARCADE_STUCK_AFTER, with how long they have waited and whether their cabinet is online.
docs/operations.md says what each state means and what to do.
"""
import argparse
import json
import os
import sys
import time

from relay import pricing
from relay.config import DEFAULTS, db_path
from relay.backends import redact
from relay.ledger import StorageError, ledger_exists, open_ledger

TIMES = ("created_at", "paid_at", "queued_at", "sent_at", "done_at")


def _when(ts):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _stuck_after():
    try:
        return float(os.environ.get("ARCADE_STUCK_AFTER", DEFAULTS["ARCADE_STUCK_AFTER"]))
    except ValueError:
        return DEFAULTS["ARCADE_STUCK_AFTER"]


def timeline(p):
    """[(state, unix time)] the payment went through, in order, from the ledger's timestamps."""
    out = []
    if p["paid_at"]:
        out.append(("paid", p["paid_at"]))
    elif p["state"] in ("pending", "invalid", "failed", "expired"):
        out.append(("pending" if p["state"] == "pending" else "recorded", p["created_at"]))
    if p["queued_at"]:
        out.append(("queued", p["queued_at"]))
    if p["sent_at"]:
        out.append(("sent", p["sent_at"]))
    if p["done_at"]:
        out.append((p["state"], p["done_at"]))
    return out


def _delta(seconds):
    if seconds < 0.05:
        return "+0s"
    if seconds < 60:
        return "+%.1fs" % seconds
    if seconds < 3600:
        return "+%dm%02ds" % divmod(int(seconds), 60)
    return "+%.1fh" % (seconds / 3600.0)


def timeline_text(p):
    """`paid 12:00:01 > sent +0.1s > applied +1.2s` (queued is left out when it is paid's own moment)."""
    steps = timeline(p)
    if not steps:
        return "-"
    first = steps[0][1]
    parts = [("%s %s" % (steps[0][0], time.strftime("%H:%M:%S", time.localtime(first))))]
    for state, ts in steps[1:]:
        if state == "queued" and steps[0][0] == "paid" and abs(ts - first) < 0.001:
            continue
        parts.append("%s %s" % (state, _delta(ts - first)))
    return " > ".join(parts)


def _waited(p, now):
    return now - (p["queued_at"] or p["created_at"])


def main(argv=None):
    p = argparse.ArgumentParser(prog="arcade payments", description="Recent payments with their delivery state: "
                                "pending, queued, sent, applied, duplicate, rejected, invalid, failed, expired.")
    p.add_argument("--db", default=None, help="ledger database (default: ARCADE_DB or ./arcade.db)")
    p.add_argument("--limit", type=int, default=50, help="how many, newest first (default %(default)s)")
    p.add_argument("--stuck", action="store_true", help="only credits unacknowledged for longer than "
                   "--stuck-after seconds")
    p.add_argument("--stuck-after", type=float, default=None,
                   help="seconds (default ARCADE_STUCK_AFTER or %s)" % DEFAULTS["ARCADE_STUCK_AFTER"])
    p.add_argument("--session", default=None, help="only this Checkout Session (cs_...), with its whole timeline")
    p.add_argument("--json", action="store_true", help="a JSON array with every field and the timeline; timestamps "
                   "in Unix seconds")
    args = p.parse_args(argv)
    if args.limit < 1:
        p.error("--limit %d: give at least 1" % args.limit)
    db = args.db or db_path()
    if not ledger_exists(db):
        print("arcade payments: no database at %s: set ARCADE_DB (or --db) to the relay's database" % redact(db),
              file=sys.stderr)
        return 2
    stuck_after = args.stuck_after if args.stuck_after is not None else _stuck_after()
    now = time.time()
    try:
        with open_ledger(db) as ledger:
            if args.session:
                one = ledger.get_payment(args.session)
                payments = [one] if one else []
            else:
                payments = ledger.list_payments(limit=args.limit, stuck=args.stuck, stuck_after=stuck_after)
            cabinets = {c["id"]: c for c in ledger.list_cabinets()}
    except StorageError as e:
        print("arcade payments: database %s: %s" % (redact(db), e), file=sys.stderr)
        return 2
    if args.session and not payments:
        print("arcade payments: no payment for session %r in %s (see `arcade payments`; a paid session the webhook "
              "never delivered is found by `arcade reconcile`)" % (args.session, redact(db)), file=sys.stderr)
        return 1
    for x in payments:
        x["timeline"] = [[state, ts] for state, ts in timeline(x)]
        if args.stuck:
            cab = cabinets.get(x["cabinet_id"]) or {}
            x["waiting_s"] = round(_waited(x, now), 3)
            x["cabinet_online"] = bool(cab.get("online"))
            x["cabinet_last_seen"] = cab.get("last_seen")
    if args.json:
        print(json.dumps(payments, indent=2))
        return 0
    if not payments:
        print("no stuck credits" if args.stuck else "no payments yet")
        return 0
    if args.stuck:
        rows = [("WAITING", "CABINET", "ONLINE", "LAST SEEN", "STATE", "SEQ", "TRIES", "PULSES", "TIMELINE",
                 "SESSION")]
        for x in payments:
            cab = cabinets.get(x["cabinet_id"]) or {}
            rows.append((_delta(_waited(x, now))[1:], x["cabinet_id"] or "-", "yes" if cab.get("online") else "no",
                         _when(cab.get("last_seen")), x["state"], str(x["seq"]), str(x["attempts"]), str(x["pulses"]),
                         timeline_text(x), x["session_id"]))
    else:
        rows = [("CREATED", "CABINET", "STATE", "CREDITS", "PULSES", "AMOUNT", "SEQ", "TRIES", "UPDATED", "REASON",
                 "TIMELINE", "SESSION")]
        for x in payments:
            amount = pricing.format_price(x["amount"], x["currency"]) if x["amount"] is not None and x["currency"] \
                else "-"
            rows.append((_when(x["created_at"]), x["cabinet_id"] or "-", x["state"], str(x["credits"]),
                         str(x["pulses"]), amount, str(x["seq"]) if x["seq"] is not None else "-", str(x["attempts"]),
                         _when(x["updated_at"]), x["reason"] or "-", timeline_text(x), x["session_id"]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1])
    if args.stuck:
        print("%d credit(s) unacknowledged for more than %.0f s: see docs/operations.md, \"Stuck\"" %
              (len(payments), stuck_after))
    return 0
