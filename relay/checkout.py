"""What the pay page sells and how a purchase becomes a Stripe Checkout Session.

The web layer (relay/pay.py) stays thin; this module holds the rules:

* `options(cabinet)` is the cabinet's price list: one play at the price per credit, then its bundles.
* `offers(...)` applies the promotion in force (relay/promotions.py) in the arcade's time zone.
* `readiness(cabinet)` says whether the cabinet may be sold to: enabled, online, not inhibited.
* `create_session(...)` reserves the attempt in the ledger (`reserve`: per-client and per-cabinet
  budgets, or the client's open session for the same bundle again), creates the Checkout Session
  through stripe-python with an idempotency key, then records the amount and credits it expects; the webhook credits what was recorded here and
  flags a payment whose amount or currency differs (`expected_credits`).
* `payment_view(...)` is the state the /paid page shows for one session.
"""
import hashlib
import hmac
import ipaddress
import time

from relay import promotions

SESSION_ID_PREFIXES = ("cs_test_", "cs_live_")
# Budgets, reserved in the ledger before Stripe is called and counted whatever Stripe answers:
DEFAULT_RATE = (5, 600)           # attempts per client (IPv4 address or IPv6 /64) per cabinet per window (s)
DEFAULT_CABINET_RATE = (60, 600)  # attempts per cabinet per window from clients who have already tried
DEFAULT_CABINET_CEILING = 600     # per cabinet per window, even clients' first attempts (bounds Stripe calls)
REUSE_FOR = 25 * 60               # an open session is offered again to the same client and bundle this long
EXPIRES_AFTER = 31 * 60           # Stripe expires the session then (its minimum is 30 minutes)


class CheckoutError(Exception):
    """Why a purchase could not start; `status` is the HTTP answer, the message is for the player."""

    def __init__(self, status, message, retry_after=None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


SYMBOLS = {"usd": "$", "eur": "\u20ac", "gbp": "\u00a3", "jpy": "\u00a5", "cad": "CA$", "aud": "A$"}


def money(amount, currency):
    """Minor units -> '$2.50', '\u20ac1.00', 'CHF 2.00' (zero-decimal currencies as whole units)."""
    from relay.pricing import ZERO_DECIMAL
    cur = currency.lower()
    text = ("%d" % amount) if cur in ZERO_DECIMAL else "%d.%02d" % divmod(amount, 100)
    sym = SYMBOLS.get(cur)
    return sym + text if sym else "%s %s" % (cur.upper(), text)


def from_price(options, currency):
    """'from $0.84 a play': the lowest price per play over the bundles (rounded up to the minor unit);
    the sticker's line (relay/stickers.py) and the cabinet screen's (relay/screenlines.py)."""
    if not options:
        return ""
    per = min(-(-amount // credits) for _key, credits, amount in options)
    return "from %s a play" % money(per, currency)


def options(cabinet):
    """[(key, credits, amount)]: one play at the price per credit, then the bundles by size."""
    opts = [("1", 1, cabinet["price_cents"])]
    for credits, cents in sorted(cabinet["bundles"]):
        if credits == 1:
            opts[0] = ("1", 1, cents)
        else:
            opts.append((str(credits), credits, cents))
    return opts


def offers(cabinet, promos, tz_name, now=None):
    local = promotions.local_time(tz_name, now)
    return promotions.offers(options(cabinet), cabinet["currency"], promos, cabinet["id"], local,
                             cabinet.get("coins_per_credit", 1))


# The relay stores only verified, fresh statuses (relay/dispatcher.py), so last_seen is when the cabinet
# itself last said how it is; it says so at least every minute (firmware/app.py _HEARTBEAT). A cabinet
# silent for longer than this is not sold to, whatever its last status said.
STATUS_FRESH_SECONDS = 150


def readiness(cabinet, now=None):
    """(ready, reason): reason is "" when ready, else "disabled", "offline" or "inhibited"."""
    if not cabinet["enabled"]:
        return False, "disabled"
    now = time.time() if now is None else now
    if not cabinet.get("online") or now - (cabinet.get("last_seen") or 0) > STATUS_FRESH_SECONDS:
        return False, "offline"
    status = cabinet.get("status") or {}
    if isinstance(status, dict) and (status.get("inhibited") or status.get("inhibit")):
        return False, "inhibited"
    return True, ""


def client_network(remote_addr):
    """What one client is, for rate limits: an IPv4 address, or an IPv6 /64 (one subscriber gets a
    whole /64 and picks addresses in it freely). IPv4-mapped IPv6 counts as the IPv4 address."""
    try:
        addr = ipaddress.ip_address((remote_addr or "").split("%")[0])
    except ValueError:
        return "?"
    if addr.version == 6 and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.version == 6:
        return str(ipaddress.ip_network("%s/64" % addr, strict=False))
    return str(addr)


def client_key(secret, remote_addr):
    """A stable, non-reversible handle for a client (addresses themselves are not stored)."""
    return hmac.new(secret.encode(), client_network(remote_addr).encode(), hashlib.sha256).hexdigest()[:32]


def idempotency_key(cabinet_id, offer, nonce):
    """Same form submitted twice (double tap, reload after POST) -> same key -> the same session."""
    raw = "%s|%s|%d|%d|%s" % (cabinet_id, offer.key, offer.credits, offer.amount, nonce)
    return "arcade-pay-" + hashlib.sha256(raw.encode()).hexdigest()[:40]


def stripe_client(cfg):
    import stripe
    key = cfg.get("STRIPE_API_KEY")
    if not key:
        raise CheckoutError(503, "Online payment is not set up on this arcade yet (no Stripe API key).")
    kwargs = {"max_network_retries": 1}
    if cfg.get("STRIPE_API_BASE"):
        kwargs["base_addresses"] = {"api": cfg["STRIPE_API_BASE"].rstrip("/")}
    return stripe.StripeClient(key, **kwargs)


def reserve(ledger, cabinet_id, offer, who, now=None, rate=DEFAULT_RATE, cabinet_rate=DEFAULT_CABINET_RATE,
            ceiling=DEFAULT_CABINET_CEILING):
    """Reserve one attempt in the ledger (atomically) or raise CheckoutError 429. Returns
    ("reuse", url) when this client already has an open session for this bundle, else ("new", id)."""
    now = time.time() if now is None else now
    got = ledger.reserve_checkout(cabinet_id, who, offer.key, offer.credits, offer.amount, now, rate, cabinet_rate,
                                  ceiling)
    if got[0] == "client_limit":
        raise CheckoutError(429, "Too many payment attempts from this phone for this cabinet. "
                            "Please wait a few minutes and try again.", retry_after=rate[1])
    if got[0] == "cabinet_limit":
        raise CheckoutError(429, "This cabinet is very busy right now. Please try again in a few minutes.",
                            retry_after=60)
    return got


def line_item_name(arcade_name, cabinet, offer):
    plays = "%d play%s" % (offer.credits, "" if offer.credits == 1 else "s")
    if offer.bonus:
        plays += " (%d + %d bonus)" % (offer.base_credits, offer.bonus)
    return "%s - %s, %s" % (arcade_name, cabinet["name"], plays)


def create_session(cfg, ledger, client, cabinet, offer, who, nonce, now=None):
    """Create the Checkout Session and record what it must pay for. Returns the session URL.

    The return URLs come from ARCADE_PUBLIC_URL only, never from the request's Host or X-Forwarded-Host
    (anyone could otherwise mint genuine Checkout pages that send the player to their own site)."""
    base_url = cfg.get("ARCADE_PUBLIC_URL")
    if not base_url:
        raise CheckoutError(503, "Online payment is not set up on this arcade yet (no public address).")
    now = time.time() if now is None else now
    kind, got = reserve(ledger, cabinet["id"], offer, who, now)
    if kind == "reuse":
        return got
    sid = url = None
    try:
        sid, url = _create(cfg, ledger, client, cabinet, offer, who, nonce, base_url, now)
    finally:
        # open: offered again to this client for this bundle; failed: the attempt still counts
        ledger.finish_checkout_attempt(got, sid, url, reuse_until=now + REUSE_FOR)
    return url


def _create(cfg, ledger, client, cabinet, offer, who, nonce, base_url, now):
    import stripe
    arcade = cfg.get("ARCADE_NAME") or "Arcade"
    params = {
        "mode": "payment",
        "line_items": [{"quantity": 1, "price_data": {
            "currency": offer.currency, "unit_amount": offer.amount,
            "product_data": {"name": line_item_name(arcade, cabinet, offer)}}}],
        "metadata": {"cabinet_id": cabinet["id"], "credits": str(offer.credits), "option": offer.key,
                     "promotion": str(offer.promo.id) if offer.promo else ""},
        "client_reference_id": cabinet["id"],
        "success_url": base_url + "/paid?session_id={CHECKOUT_SESSION_ID}",
        "cancel_url": base_url + "/cancel?cabinet=" + cabinet["id"],
        "payment_intent_data": {"description": line_item_name(arcade, cabinet, offer)},
        "expires_at": int(now) + EXPIRES_AFTER,
    }
    key = idempotency_key(cabinet["id"], offer, nonce)
    try:
        session = client.v1.checkout.sessions.create(params, options={"idempotency_key": key})
    except stripe.StripeError as e:
        raise CheckoutError(502, "We could not reach the payment service. Nothing was charged; please try again "
                            "in a moment. (%s)" % type(e).__name__)
    sid, url = getattr(session, "id", None), getattr(session, "url", None)
    if not url or not valid_session_id(sid):
        raise CheckoutError(502, "The payment service gave an unexpected answer. Nothing was charged.")
    ledger.record_expected_checkout(sid, cabinet["id"], offer.key, offer.credits, offer.amount,
                                    offer.currency, offer.promo.id if offer.promo else None, who, key)
    return sid, url


def expected_credits(ledger, session_id, amount_total, currency, cabinet_id):
    """For the webhook: (credits, reason) when this relay made the session, else None.

    The credits recorded at creation are what is owed (promotions change amounts, so the price table
    alone can't say). An amount or currency that differs from what was recorded gives no credit and
    the reason "amount_mismatch" / "wrong_currency" / "cabinet_mismatch", for the operator to see in
    `arcade payments`."""
    row = ledger.get_expected_checkout(session_id) if isinstance(session_id, str) else None
    if row is None:
        return None
    if cabinet_id != row["cabinet_id"]:
        return 0, "cabinet_mismatch"
    if not isinstance(currency, str) or currency.lower() != row["currency"]:
        return 0, "wrong_currency"
    if amount_total != row["amount"]:
        return 0, "amount_mismatch"
    return row["credits"], ""


def valid_session_id(session_id):
    return (isinstance(session_id, str) and 9 <= len(session_id) <= 255 and session_id.startswith(SESSION_ID_PREFIXES)
            and session_id.replace("_", "").isalnum())


# States of one purchase as the player sees them: (step 0..3, tone, title, message).
#   step 1 paid, 2 on its way, 3 credits added. tone: wait, ok, warn, bad.
def payment_view(ledger, session_id, stuck_after=20.0, now=None):
    """A dict for /paid and its JSON twin; None when the session isn't ours (nothing is shown then)."""
    if not valid_session_id(session_id):
        return None
    expected = ledger.get_expected_checkout(session_id)
    payment = ledger.get_payment(session_id)
    if expected is None and payment is None:
        return None
    now = time.time() if now is None else now
    cabinet_id = (payment or {}).get("cabinet_id") or (expected or {}).get("cabinet_id")
    cabinet = ledger.get_cabinet(cabinet_id) if cabinet_id else None
    credits = (payment or {}).get("credits") or (expected or {}).get("credits") or 0
    view = {"session_id": session_id, "cabinet": cabinet["name"] if cabinet else (cabinet_id or ""),
            "credits": credits, "state": "waiting", "step": 0, "tone": "wait", "done": False}
    state = payment["state"] if payment else None
    plays = "%d credit%s" % (credits, "" if credits == 1 else "s")
    if state is None:
        view.update(title="Waiting for the payment confirmation...",
                    message="This takes a few seconds. Keep this page open.")
    elif state == "pending":
        view.update(state="processing", step=0, title="Your payment is processing",
                    message="Your bank is still confirming it. Credits are added as soon as it clears.")
    elif state in ("paid", "queued", "sent"):
        since = payment.get("queued_at") or payment.get("created_at") or now
        view.update(state="on_its_way" if state == "sent" else "paid", step=2 if state == "sent" else 1,
                    title="Paid \u2713 Sending %s to %s..." % (plays, view["cabinet"]),
                    message="Your credits are on their way to the cabinet.")
        if cabinet is not None and (not cabinet.get("online") or now - since > stuck_after):
            view.update(state="unreachable", tone="warn",
                        title="Paid \u2713 The cabinet is offline",
                        message="Your payment is safe: your %s will reach the cabinet automatically as soon as "
                                "it is back online. You don't need to do anything. If you can't wait, show this "
                                "page to staff." % plays)
    elif state in ("applied", "duplicate"):
        view.update(state="applied", step=3, tone="ok", done=True, title="Credits added \u2713",
                    message="%s added to %s. Press START!" % (plays[0].upper() + plays[1:], view["cabinet"]))
    elif state in ("failed", "expired"):
        view.update(state=state, step=0, tone="bad", done=True, title="The payment did not go through",
                    message="Nothing was charged. You can try again from the cabinet's QR code.")
    elif state in ("refunded", "refunding"):   # issue 13: an operator's refund; the credit will never be sent
        view.update(state=state, step=0, tone="neutral", done=True,
                    title="Refunded \u2014 the cabinet couldn't take your credit" if state == "refunded"
                    else "Being refunded",
                    message="The cabinet couldn't take your credit, so your payment %s to your card. No credit "
                            "will be added." % ("was refunded" if state == "refunded" else "is being refunded"))
    else:   # rejected, invalid: money taken, no credit
        view.update(state="problem", step=1, tone="bad", done=True, title="Paid, but we could not add the credits",
                    message="Please show this page to staff; they will add your plays or refund you.")
    view["reference"] = session_id[-8:]
    return view

