"""Refunds that can never also pay out, and what Stripe tells us about refunds and disputes.

An operator's refund (`arcade refund`, the console's button) goes in three steps:

1. `Ledger.claim_refund` decides under the database lock: a credit never published is held
   (state `refunding`) so the dispatcher can no longer publish it; a payment that bought nothing
   (invalid) or that the cabinet refused is held too; a played credit needs force; a credit that
   may still pulse (published, unacknowledged) is refused.
2. Stripe is asked (stripe-python) with one idempotency key per payment, so however often the
   refund is retried, Stripe refunds at most once.
3. Stripe's answer settles it: refunded (final); a refusal (4xx) puts the payment back as it was;
   no answer (network, 5xx) keeps it held and says to retry: holding is the safe side, since
   the refund may have happened.

Webhooks (relay/webhook.py hands these over): charge.refunded records a refund made in Stripe's
Dashboard (withdrawing a credit still unpublished, else "refunded after play");
charge.dispute.created/updated/closed are recorded. Sessions are found by payment intent through
Stripe's API (checkout sessions list ?payment_intent=).
"""
import logging

import stripe

from relay.ledger import LedgerError

log = logging.getLogger("arcade.refunds")

DISPUTE_EVENTS = ("charge.dispute.created", "charge.dispute.updated", "charge.dispute.closed")
REFUND_EVENTS = ("charge.refunded",)
REFUND_UPDATES = ("refund.updated", "refund.failed")
EVENTS = REFUND_EVENTS + REFUND_UPDATES + DISPUTE_EVENTS


class RefundError(Exception):
    """The refund was not made; the message says why and what to do."""


def idempotency_key(session_id):
    return "arcade-refund-" + session_id


def _client(cfg):
    key = cfg.get("STRIPE_API_KEY")
    if not key:
        raise RefundError("STRIPE_API_KEY is not set: the relay cannot ask Stripe for a refund. Set it (environment "
                          "or .env), or refund in Stripe's Dashboard (the relay records it from the webhook)")
    kwargs = {"max_network_retries": 0}
    if cfg.get("STRIPE_API_BASE"):
        kwargs["base_addresses"] = {"api": cfg["STRIPE_API_BASE"].rstrip("/")}
    return stripe.StripeClient(key, **kwargs)


def refund(ledger, cfg, session_id, who, source, reason="", force=False, client=None, claimed=None):
    """Refund one payment; returns a dict(session_id, refund_id, amount, currency, after_play, note).
    Raises RefundError (nothing refunded; the message says why). `claimed`: the (refund row, note) of a
    hold already taken (an automatic refund's, relay/autorefund.py) instead of claim_refund's."""
    try:
        claim, note = claimed or ledger.claim_refund(session_id, who, source, reason=reason, force=force)
    except LedgerError as e:
        raise RefundError(str(e))
    ledger.audit(who, "refund.requested", session_id, "%s%s" % (note, "; reason: %s" % reason if reason else ""))
    try:
        client = client or _client(cfg)
        session = client.v1.checkout.sessions.retrieve(session_id).to_dict()
        pi = session.get("payment_intent")
        if not pi:
            raise RefundError("Stripe has no payment for session %s (payment_status %s): nothing to refund"
                              % (session_id, session.get("payment_status")))
        params = {"payment_intent": pi if isinstance(pi, str) else pi["id"], "reason": "requested_by_customer",
                  "metadata": {"session_id": session_id, "operator": who, "after_play": str(claim["after_play"])}}
        made = client.v1.refunds.create(params, options={"idempotency_key": idempotency_key(session_id)}).to_dict()
    except (RefundError, stripe.InvalidRequestError, stripe.AuthenticationError, stripe.PermissionError,
            stripe.CardError, stripe.IdempotencyError) as e:
        why = str(e) if isinstance(e, RefundError) else "Stripe refused: %s" % (e.user_message or e)
        ledger.fail_refund(session_id, why, definite=True)
        ledger.audit(who, "refund.failed", session_id, why)
        raise RefundError("%s; the payment is as it was" % why)
    except stripe.StripeError as e:
        why = "Stripe did not answer (%s)" % (e.user_message or type(e).__name__)
        ledger.fail_refund(session_id, why, definite=False)
        ledger.audit(who, "refund.unknown", session_id, why)
        raise RefundError("%s: the refund may or may not have been made. The credit stays held (it will not be "
                          "sent); run the refund again: the same idempotency key makes Stripe refund at most once"
                          % why)
    ledger.settle_refund(session_id, made["id"], amount=made.get("amount"))
    ledger.audit(who, "refund.succeeded", session_id, "%s %s %s" % (made["id"], made.get("amount"),
                                                                        made.get("currency")))
    log.info("refunded %s (%s) by %s: %s", session_id, made["id"], who, note)
    return {"session_id": session_id, "refund_id": made["id"], "amount": made.get("amount"),
            "currency": made.get("currency"), "after_play": bool(claim["after_play"]), "note": note}


def _session_for(ledger, cfg, payment_intent):
    """The Checkout Session of a payment intent: the ledger's disputes first, then Stripe's API."""
    if not isinstance(payment_intent, str) or not payment_intent:
        return None
    known = ledger.session_for_payment_intent(payment_intent)
    if known:
        return known
    try:
        listing = _client(cfg).v1.checkout.sessions.list(params={"payment_intent": payment_intent, "limit": 1})
    except (RefundError, stripe.StripeError) as e:
        log.warning("cannot find the session of payment intent %s: %s", payment_intent, e)
        return None
    return listing.data[0]["id"] if listing.data else None


def handle_event(ledger, cfg, event):
    """A verified charge.refunded / charge.dispute.* event. Returns a short result for the answer."""
    obj = (event.get("data") or {}).get("object") or {}
    if not isinstance(obj, dict):
        return "ignored"
    etype = event.get("type")
    if etype in REFUND_EVENTS:
        session_id = _session_for(ledger, cfg, obj.get("payment_intent"))
        if session_id is None:
            log.warning("charge %s refunded in Stripe, but no payment of this relay matches it", obj.get("id"))
            return "unmatched"
        refunds = (obj.get("refunds") or {}).get("data") or []
        refund_id = refunds[0].get("id") if refunds and isinstance(refunds[0], dict) else None
        existing = ledger.get_refund(session_id)
        if existing and existing["state"] == "succeeded":
            return "known"
        before = ledger.record_outside_refund(session_id, refund_id, obj.get("amount_refunded"), obj.get("currency"))
        ledger.audit("stripe", "refund.dashboard", session_id, "charge %s, payment was %s" % (obj.get("id"), before))
        log.warning("payment %s refunded in Stripe's Dashboard (it was %s)", session_id, before)
        return "refund_recorded"
    if etype in REFUND_UPDATES:
        # A refund Stripe accepted can still fail later (e.g. the card was closed): the player has
        # neither the play nor the money. Recorded as failed (Now and the alerts show it).
        if obj.get("status") not in ("failed", "canceled"):
            return "ignored"
        session_id = (obj.get("metadata") or {}).get("session_id") if isinstance(obj.get("metadata"), dict) else None
        session_id = session_id or _session_for(ledger, cfg, obj.get("payment_intent"))
        if not session_id or not ledger.refund_failed_later(session_id, obj.get("id"), obj.get("failure_reason")):
            log.warning("refund %s %s in Stripe, but no refund of this relay matches it", obj.get("id"),
                        obj.get("status"))
            return "unmatched"
        ledger.audit("stripe", "refund.failed_later", session_id, "refund %s: %s (%s)"
                     % (obj.get("id"), obj.get("status"), obj.get("failure_reason")))
        log.error("refund %s of payment %s %s: %s: the player has neither the play nor the money", obj.get("id"),
                  session_id, obj.get("status"), obj.get("failure_reason"))
        return "refund_failed"
    if etype in DISPUTE_EVENTS:
        session_id = _session_for(ledger, cfg, obj.get("payment_intent"))
        ledger.record_dispute(str(obj.get("id"))[:255], obj.get("status") or "unknown", session_id=session_id,
                              charge_id=obj.get("charge"), payment_intent=obj.get("payment_intent"),
                              amount=obj.get("amount"), currency=obj.get("currency"), reason=obj.get("reason") or "")
        ledger.audit("stripe", etype.replace("charge.", ""), session_id or "", "dispute %s: %s, %s"
                     % (obj.get("id"), obj.get("status"), obj.get("reason")))
        log.warning("dispute %s on payment %s: %s (%s)", obj.get("id"), session_id, obj.get("status"),
                    obj.get("reason"))
        return "dispute_recorded"
    return "ignored"
