"""Post correctly signed Stripe events to a relay, as Stripe (or `stripe trigger`) would: used by
`arcade trigger`, the demo, the fault tests and the soak."""
import urllib.error
import urllib.request

from tools.lab import stripe_events


def post(url, body, header, timeout=10.0):
    """POST one signed event; returns (http status, response body)."""
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json; charset=utf-8",
        "Stripe-Signature": header,
        "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
    })
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def send(url, secret, cabinet, amount, currency="usd", type_="checkout.session.completed",
         session_id=None, repeat=1, metadata_key="cabinet_id"):
    """Build one event and post it `repeat` times; returns (session id, event id, [statuses])."""
    session = stripe_events.checkout_session(cabinet, amount, currency=currency, session_id=session_id,
                                             metadata_key=metadata_key, client_reference_id=cabinet)
    evt = stripe_events.event(session, type_=type_)
    body = stripe_events.encode(evt)
    statuses = []
    for _ in range(repeat):
        # Stripe signs each delivery attempt afresh with the current time.
        statuses.append(post(url, body, stripe_events.signature_header(body, secret)))
    return session["id"], evt["id"], statuses

