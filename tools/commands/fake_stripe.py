"""arcade fake-stripe: run the fake Stripe API (tools/lab/fake_stripe.py) on loopback, for demos and
trying the console and the pay page by hand: checkout sessions and their hosted page, refunds,
charges, disputes. Point the relay at it with STRIPE_API_BASE=http://127.0.0.1:PORT; webhooks it
sends are signed with STRIPE_WEBHOOK_SECRET."""
from tools.lab import fake_stripe


def main(argv=None):
    return fake_stripe.main(argv, prog="arcade fake-stripe")
