"""Send a correctly signed checkout.session.completed to a relay, as `stripe trigger` would.

The webhook secret comes from STRIPE_WEBHOOK_SECRET (environment or .env). `--repeat N` sends the
same event (same event id) N times, as Stripe does when it retries.
"""
import argparse
import json
import os
import sys

from tools.lab.trigger import send

DEFAULT_URL = "http://127.0.0.1:8000/stripe/webhook"


def main(argv=None):
    p = argparse.ArgumentParser(prog="arcade trigger", description=__doc__.strip().splitlines()[0])
    p.add_argument("--cabinet", required=True, help="cabinet id (sent as metadata cabinet_id)")
    p.add_argument("--amount", required=True, type=int, help="amount_total in the smallest unit, e.g. 100 = 1.00")
    p.add_argument("--currency", default="usd")
    p.add_argument("--url", default=DEFAULT_URL, help="the relay's webhook URL (default %(default)s)")
    p.add_argument("--repeat", type=int, default=1, help="send the same event N times (default 1)")
    p.add_argument("--type", default="checkout.session.completed", dest="type_",
                   help="event type (default %(default)s)")
    p.add_argument("--session", default=None, help="Checkout Session id to use (default: a new one)")
    args = p.parse_args(argv)
    try:
        from dotenv import load_dotenv
        load_dotenv()
    except ImportError:
        pass
    secret = os.environ.get("STRIPE_WEBHOOK_SECRET")
    if not secret:
        print("arcade trigger: STRIPE_WEBHOOK_SECRET is not set: export the relay's webhook signing "
              "secret (whsec_...) or put it in .env", file=sys.stderr)
        return 2
    if args.amount <= 0 or args.repeat < 1:
        print("arcade trigger: --amount and --repeat must be positive (got %d, %d)" % (args.amount, args.repeat),
              file=sys.stderr)
        return 2
    try:
        session_id, event_id, statuses = send(args.url, secret, args.cabinet, args.amount, args.currency,
                                              args.type_, args.session, args.repeat)
    except OSError as e:
        print("arcade trigger: cannot reach %s: %s (is `arcade relay` running?)" % (args.url, e), file=sys.stderr)
        return 1
    for i, (status, body) in enumerate(statuses, 1):
        print(json.dumps({"attempt": i, "status": status, "event": event_id, "session": session_id,
                          "response": body[:200]}))
    return 0 if all(200 <= s < 300 for s, _ in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
