"""arcade refund SESSION: refund a payment through Stripe, only when its credit can never pulse.

A credit never published is withdrawn and refunded; a payment that bought nothing (invalid) or that
the cabinet refused is refunded; a played credit needs --force (the play was given); a credit
published and not yet acknowledged is refused (it may still pulse). One idempotency key per
payment: running it again never refunds twice. See docs/operations.md, Refunds.
"""
import argparse
import getpass
import sys

from relay import config, refunds
from relay.config import ConfigError
from relay.ledger import open_ledger
from relay.pricing import format_price


def main(argv=None):
    p = argparse.ArgumentParser(prog="arcade refund", description=__doc__.split("\n\n")[0] + " Settings: ARCADE_DB, "
                                "STRIPE_API_KEY (environment or .env).")
    p.add_argument("session", help="the Checkout Session id (cs_...) as `arcade payments` shows it")
    p.add_argument("--reason", default="", help="why (written to the audit log)")
    p.add_argument("--force", action="store_true", help="refund even though the cabinet pulsed the credit")
    args = p.parse_args(argv)
    if len(args.reason) > 200:
        p.error("--reason: at most 200 characters")
    try:
        cfg = config.load(require_webhook_secret=False)
    except ConfigError as e:
        print("arcade refund: %s" % e, file=sys.stderr)
        return 2
    who = "cli:%s" % getpass.getuser()
    with open_ledger(cfg["ARCADE_DB"], cfg["ARCADE_DB_BUSY_TIMEOUT"]) as ledger:
        try:
            done = refunds.refund(ledger, cfg, args.session, who, "cli", reason=args.reason, force=args.force)
        except refunds.RefundError as e:
            print("arcade refund: %s" % e, file=sys.stderr)
            return 1
    print("refunded %s: %s (%s); %s" % (args.session, format_price(done["amount"] or 0, done["currency"] or "usd"),
                                        done["refund_id"], done["note"]))
    if done["after_play"]:
        print("note: the cabinet had pulsed this credit: the play was given and the money returned")
    return 0
