"""POST /stripe/webhook: verify the raw body, validate, record the payment and its credit, answer.

Order of work: signature over the raw bytes first (stripe-python), then parse. Stripe is answered
2xx only after the payment (and, when it buys credits, its sequenced delivery) is committed; a
storage failure answers 503 so that Stripe retries. A payment that fails validation is recorded
with its reason and answered 2xx: a retry cannot fix it, the operator sees it in `arcade payments`.
"""
import json
import logging

import stripe
from flask import Blueprint, current_app, jsonify, request

from relay import checkout, pricing
from relay.config import key_mode
from relay.db import get_ledger
from relay.ledger import valid_cabinet_id

log = logging.getLogger("arcade.webhook")
bp = Blueprint("webhook", __name__)

FULFIL = ("checkout.session.completed", "checkout.session.async_payment_succeeded")
NO_CREDIT = {"checkout.session.async_payment_failed": "failed", "checkout.session.expired": "expired"}
MAX_PULSES = 255        # what one credit message carries and the firmware accepts
MAX_AMOUNT = 10 ** 12   # minor units; anything larger is no real Checkout amount (and overflows SQLite at 2^63)


def _refuse(status, why):
    log.warning("webhook refused (%d): %s", status, why)
    return jsonify(error=why), status


def cabinet_ref(session):
    """The cabinet a Checkout Session is for: metadata cabinet_id, else metadata machine_id (the
    seed's example), else client_reference_id. None when it names none."""
    metadata = session.get("metadata") or {}
    if isinstance(metadata, dict):
        for key in ("cabinet_id", "machine_id"):
            if metadata.get(key):
                return str(metadata[key])
    ref = session.get("client_reference_id")
    return str(ref) if ref else None


def assess(ledger, event_type, session):
    """Decide what a checkout event means: dict(outcome, cabinet_id, amount, currency, credits, pulses, reason)."""
    ref = cabinet_ref(session)
    if ref is None and isinstance(session.get("payment_link"), str):  # Payment Links mode (issue 5)
        ref = ledger.payment_link_cabinet(session["payment_link"])
    out = {"cabinet_id": ref[:64] if ref else None, "amount": session.get("amount_total"),
           "currency": session.get("currency"), "credits": 0, "pulses": 0, "reason": ""}
    if not isinstance(out["amount"], int) or isinstance(out["amount"], bool) or not 0 <= out["amount"] <= MAX_AMOUNT:
        out["amount"] = None
    if not isinstance(out["currency"], str) or len(out["currency"]) > 8:
        out["currency"] = None
    if event_type in NO_CREDIT:
        return dict(out, outcome=NO_CREDIT[event_type])
    if event_type == "checkout.session.completed" and session.get("payment_status") != "paid":
        status = session.get("payment_status")
        if status == "unpaid":  # an async payment method: async_payment_succeeded/failed follows
            return dict(out, outcome="pending", reason="awaiting_payment")
        return dict(out, outcome="invalid", reason="payment_status_%s" % str(status)[:32])
    if ref is None:
        return dict(out, outcome="invalid", reason="no_cabinet")
    cabinet = ledger.get_cabinet(ref) if valid_cabinet_id(ref) else None
    if cabinet is None:
        return dict(out, outcome="invalid", reason="unknown_cabinet")
    if not cabinet["enabled"]:
        return dict(out, outcome="invalid", reason="cabinet_disabled")
    # A session the pay page created is owed what was recorded then (promotions change amounts).
    expected = checkout.expected_credits(ledger, session.get("id"), out["amount"], out["currency"], cabinet["id"])
    credits, reason = expected or pricing.credits_for(cabinet, out["amount"], out["currency"])
    if reason:
        return dict(out, outcome="invalid", reason=reason)
    if out["amount"] is None or out["currency"] is None:
        return dict(out, outcome="invalid", reason="no_amount")
    pulses = credits * cabinet["coins_per_credit"]
    if not 0 < pulses <= MAX_PULSES:
        # e.g. a bonus recorded at checkout and a later coins-per-credit change: the firmware would
        # refuse the message; the operator sees it in `arcade payments` and refunds or credits by hand.
        return dict(out, outcome="invalid", reason="too_many_pulses")
    return dict(out, outcome="credit", credits=credits, pulses=pulses)


def fulfil(ledger, event_id, event_type, session, refuse=None, dispatcher=None):
    """Validate a Checkout Session and record it, in one transaction: the one fulfilment path, used
    by the webhook and by reconciliation (relay/reconcile.py). Returns (result, verdict): result
    from Ledger.record_checkout ("queued", "invalid", "duplicate_session", ...). `refuse`: a reason
    found before (e.g. livemode_mismatch) that makes the payment invalid whatever it says.
    `dispatcher`: this process's, when it runs one: a credit it can publish at once is marked published
    in the same transaction and handed to it once committed (Dispatcher.publish_first); otherwise
    its worker sends it from the ledger."""
    verdict = assess(ledger, event_type, session)
    if refuse and verdict["outcome"] in ("credit", "pending"):
        verdict = dict(verdict, outcome="invalid", credits=0, pulses=0, reason=refuse)
    first = dispatcher.first_publish(verdict["cabinet_id"]) if (
        dispatcher is not None and verdict["outcome"] == "credit") else None
    result = ledger.record_checkout(event_id, event_type, session["id"], verdict["outcome"],
                                    cabinet_id=verdict["cabinet_id"], amount=verdict["amount"],
                                    currency=verdict["currency"], credits=verdict["credits"],
                                    pulses=verdict["pulses"], reason=verdict["reason"], publish_first=first)
    if result == "queued" and first is not None and first.get("row") is not None:
        dispatcher.publish_first(first["row"])
        verdict = dict(verdict, published=True)
    return result, verdict


def _mode_mismatch(event):
    """"livemode_mismatch" when the event's livemode differs from STRIPE_API_KEY's mode: a test-mode
    signing secret on a live relay must not credit test cards. No key, no check (stated in docs)."""
    mode = key_mode(current_app.config.get("STRIPE_API_KEY"))
    if mode is None:
        return None
    return None if event.get("livemode") is (mode == "live") else "livemode_mismatch"


@bp.post("/stripe/webhook")
def stripe_webhook():
    payload = request.get_data(cache=False)
    header = request.headers.get("Stripe-Signature")
    if not header:
        return _refuse(400, "missing Stripe-Signature header")
    try:
        # the signature only: stripe's construct_event would also build an Event, which fails with a
        # 500 on verified JSON that is not an object (found by tests/test_fuzz.py); we parse below
        stripe.WebhookSignature.verify_header(payload, header, current_app.config["STRIPE_WEBHOOK_SECRET"],
                                              stripe.Webhook.DEFAULT_TOLERANCE)
    except stripe.SignatureVerificationError as e:
        return _refuse(400, "signature: %s" % (getattr(e, "user_message", None) or "does not verify"))
    except (ValueError, RecursionError):
        return _refuse(400, "body is not a JSON Stripe event")
    try:
        event = json.loads(payload)
    except (ValueError, RecursionError):   # verified bytes that Python's json refuses (e.g. nesting)
        return _refuse(400, "body is not a JSON Stripe event")
    event_type = event.get("type") if isinstance(event, dict) else None
    if not isinstance(event_type, str):     # e.g. a list: unhashable, and no event type (found by the fuzzing)
        event_type = None
    # Other verified events go to the handler create_app registered for their type (issue 13:
    # refunds and disputes, relay/refunds.py); this module knows none of them.
    handler = current_app.extensions["arcade"].get("event_handlers", {}).get(event_type)
    if handler is not None:
        return jsonify(received=True, result=handler(get_ledger(), current_app.config, event)), 200
    if event_type not in FULFIL and event_type not in NO_CREDIT:
        return jsonify(received=True, ignored=str(event_type)[:100]), 200
    event_id = event.get("id")
    session = (event.get("data") or {}).get("object") if isinstance(event.get("data"), dict) else None
    session_id = session.get("id") if isinstance(session, dict) else None
    if not (isinstance(event_id, str) and event_id and isinstance(session_id, str) and session_id
            and "\n" not in session_id and len(session_id) <= 255):
        return _refuse(400, "%s without an event id or a checkout session id" % event_type)

    if len(event_id) > 255 or "\n" in event_id:
        return _refuse(400, "%s with an unusable event id" % event_type)
    ledger = get_ledger()  # a storage failure from here on answers 503 (see create_app)
    arcade = current_app.extensions["arcade"]
    dispatcher = arcade.get("dispatcher")
    result, verdict = fulfil(ledger, event_id, event_type, session, refuse=_mode_mismatch(event),
                             dispatcher=dispatcher)
    if result == "queued" and not verdict.get("published"):
        # the dispatcher publishes it now, unless the cabinet has a credit in flight here: then the
        # ack's step sends this one (asked after the commit, so that step reads it); a wake-up per
        # webhook for a busy cabinet is a ledger scan for nothing
        if dispatcher is None or not dispatcher.in_flight(verdict["cabinet_id"]):
            arcade["wake"].set()
    log.info("webhook %s %s session %s cabinet %s: %s%s", event_id, event_type, session_id,
             verdict["cabinet_id"], result, " (%s)" % verdict["reason"] if verdict["reason"] else "")
    return jsonify(received=True, result=result, session=session_id), 200
