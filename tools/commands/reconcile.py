"""arcade reconcile: compare Stripe's paid Checkout Sessions with the ledger and fulfil what the webhook missed.

  arcade reconcile [--since 72h] [--json] [--dry-run] [--db PATH]

Needs STRIPE_API_KEY (environment or .env). Exit status: 0 the books balance (sessions fulfilled
now count as settled), 1 something needs the operator (see docs/operations.md), 2 an error.
"""
import argparse
import json
import sys
import time

import stripe

from relay import checkout, pricing, reconcile
from relay.config import ConfigError, load
from relay.backends import redact
from relay.ledger import StorageError, ledger_exists, open_ledger

COLUMNS = ("KIND", "SESSION", "CABINET", "STRIPE", "LEDGER", "STATE", "DETAIL")


def _money(amount, currency):
    if amount is None or not currency:
        return "-"
    return pricing.format_price(amount, currency)


def table(report):
    lines = [reconcile.summary(report)]
    if not report["findings"]:
        return "\n".join(lines)
    rows = [COLUMNS]
    for f in report["findings"]:
        detail = f["detail"] + (" -> " + f["action"] if f["action"] else "")
        rows.append((f["kind"], f["session_id"] or "-", f["cabinet_id"] or "-",
                     _money(f["stripe_amount"], f["stripe_currency"]) if f["stripe_status"] != "missing" else "missing",
                     _money(f["ledger_amount"], f["ledger_currency"]), f["ledger_state"] or "-", detail))
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS) - 1)]
    lines.append("")
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)) + "  " + r[-1])
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="arcade reconcile", description="List the Checkout Sessions Stripe has "
                                "completed in a window, fulfil each paid one the ledger lacks through the "
                                "webhook's own path, and report: paid but not delivered, delivered but unknown "
                                "to Stripe, amounts that differ. Needs STRIPE_API_KEY. Exit 0: the books balance; "
                                "1: something needs you (docs/operations.md); 2: error.")
    p.add_argument("--since", default="72h", help="how far back, by session creation time: 72h, 3d, 90m, "
                   "600s (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--dry-run", action="store_true", help="report what would be fulfilled, change nothing")
    p.add_argument("--db", default=None, help="ledger database (default: ARCADE_DB or ./arcade.db)")
    args = p.parse_args(argv)
    try:
        window = reconcile.parse_duration(args.since)
    except ValueError as e:
        p.error("--since: %s" % e)
    if window <= 0:
        p.error("--since %s: give a window longer than 0, e.g. 72h" % args.since)
    try:
        cfg = load(require_webhook_secret=False)
    except ConfigError as e:
        print("arcade reconcile: %s" % e, file=sys.stderr)
        return 2
    db = args.db or cfg["ARCADE_DB"]
    if not ledger_exists(db):
        print("arcade reconcile: no database at %s: set ARCADE_DB (or --db) to the relay's database" % redact(db),
              file=sys.stderr)
        return 2
    try:
        client = checkout.stripe_client(cfg)
    except checkout.CheckoutError:
        print("arcade reconcile: STRIPE_API_KEY is not set: set it (environment or .env) to the account's secret "
              "or restricted key (read access to Checkout Sessions is enough for --dry-run)", file=sys.stderr)
        return 2
    now = time.time()
    try:
        with open_ledger(db, cfg["ARCADE_DB_BUSY_TIMEOUT"]) as ledger:
            report = reconcile.reconcile(ledger, client, now - window, now=now,
                                         stuck_after=float(cfg["ARCADE_STUCK_AFTER"]), fulfil=not args.dry_run)
    except stripe.AuthenticationError:
        print("arcade reconcile: Stripe refused the API key in STRIPE_API_KEY: check it in the dashboard "
              "(Developers > API keys)", file=sys.stderr)
        return 2
    except stripe.StripeError as e:
        print("arcade reconcile: Stripe did not answer the session list (%s): nothing was changed; try again"
              % type(e).__name__, file=sys.stderr)
        return 2
    except StorageError as e:
        print("arcade reconcile: database %s: %s" % (redact(db), e), file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else table(report))
    return 1 if report["attention"] else 0
