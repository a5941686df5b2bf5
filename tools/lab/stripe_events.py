"""Build Stripe events in the shape Stripe sends them, signed the way Stripe signs them.

Used by `arcade trigger`, the tests and the benchmarks: what `stripe trigger` would send.
Stripe's scheme: header `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
"""
import hashlib
import hmac
import json
import secrets
import time

API_VERSION = "2025-09-30.clover"


def new_id(prefix, n=24):
    return prefix + "_" + secrets.token_hex(n // 2)


def checkout_session(cabinet_id, amount, currency="usd", session_id=None, payment_status="paid",
                     status="complete", metadata_key="cabinet_id", client_reference_id=None, extra_metadata=None):
    """A Checkout Session object. `metadata_key=None` leaves the metadata empty (cabinet only in
    client_reference_id); 'machine_id' gives the seed's own example shape."""
    metadata = dict(extra_metadata or {})
    if metadata_key:
        metadata[metadata_key] = cabinet_id
    return {
        "id": session_id or new_id("cs_test", 58),
        "object": "checkout.session",
        "amount_subtotal": amount,
        "amount_total": amount,
        "client_reference_id": client_reference_id,
        "created": int(time.time()),
        "currency": currency,
        "customer_details": None,
        "livemode": False,
        "metadata": metadata,
        "mode": "payment",
        "payment_intent": new_id("pi", 24),
        "payment_status": payment_status,
        "status": status,
        "url": None,
    }


def event(obj, type_="checkout.session.completed", event_id=None, created=None):
    return {
        "id": event_id or new_id("evt", 24),
        "object": "event",
        "api_version": API_VERSION,
        "created": int(created if created is not None else time.time()),
        "data": {"object": obj},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": type_,
    }


def signature_header(payload, secret, timestamp=None):
    """The Stripe-Signature header for `payload` (bytes or str)."""
    if isinstance(payload, str):
        payload = payload.encode()
    t = int(timestamp if timestamp is not None else time.time())
    mac = hmac.new(secret.encode(), b"%d." % t + payload, hashlib.sha256).hexdigest()
    return "t=%d,v1=%s" % (t, mac)


def encode(evt):
    """Serialize an event the way Stripe does (pretty JSON); returns bytes."""
    return json.dumps(evt, indent=2).encode()
