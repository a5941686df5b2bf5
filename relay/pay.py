"""The player's pages: /pay/<cabinet> (choose and pay), /paid (live confirmation), /cancel.

Plain server-rendered HTML that works without JavaScript; /paid adds a few lines of vanilla JS that
poll /paid/status and fall back to <meta refresh> without it. The rules live in relay/checkout.py.
"""
import logging
import secrets

from flask import Blueprint, abort, current_app, jsonify, make_response, redirect, render_template, request
from flask_wtf.csrf import generate_csrf, validate_csrf
from wtforms.validators import ValidationError

from relay import checkout, promotions
from relay.db import get_ledger
from relay.ledger import valid_cabinet_id

log = logging.getLogger("arcade.pay")
bp = Blueprint("pay", __name__)

MAX_QUERY = 512          # bytes of query string accepted on these pages
MAX_FORM = 2048          # bytes of form body accepted by POST /pay/<cabinet>
REASONS = {
    "offline": ("This cabinet is offline right now",
                "It isn't connected, so we aren't selling plays for it. Nothing has been charged. "
                "Try again in a few minutes, or ask staff."),
    "inhibited": ("This cabinet is paused",
                  "It isn't accepting credits at the moment, so we aren't selling plays for it. "
                  "Nothing has been charged. Please ask staff."),
}


@bp.before_request
def bound_request():
    if len(request.query_string) > MAX_QUERY:
        abort(414)
    request.max_content_length = MAX_FORM   # refused from Content-Length, before anything is read
    request.max_form_memory_size = MAX_FORM


def _csrf_key(cabinet_id):
    # Flask-WTF keeps one raw token per key in the session cookie: a token is good only for the pay
    # page of the cabinet that issued it (and only with that browser's cookie, for an hour).
    return "csrf_pay_" + cabinet_id


def _csrf_ok(cabinet_id, token):
    try:
        validate_csrf(token, token_key=_csrf_key(cabinet_id))
        return True
    except ValidationError as e:   # missing, expired, signed for another page or another browser
        log.info("pay form for %s refused: %s", cabinet_id, e)
        return False


@bp.after_request
def headers(resp):
    resp.headers.setdefault("Cache-Control", "no-store")
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                               "script-src 'self'; frame-ancestors 'none'; base-uri 'none'")
    return resp


def _message(status, title, text, **extra):
    body = render_template("message.html", arcade=current_app.config["ARCADE_NAME"], title=title, text=text, **extra)
    resp = make_response(body, status)
    return resp


def _promos(ledger):
    return [promotions.Promotion(r["id"], r["cabinet_id"], r["kind"], r["value"], r["days"], r["start_min"],
                                 r["end_min"], r["label"]) for r in ledger.list_promotions()]


def _cabinet_or_error(cabinet_id):
    """(ledger, cabinet, None) or (None, None, error response) for unknown (404) / disabled (410)."""
    if not valid_cabinet_id(cabinet_id):
        return None, None, _message(404, "We don't know this cabinet",
                                    "Check the code on the cabinet's sticker, or ask staff.")
    ledger = get_ledger()
    cabinet = ledger.get_cabinet(cabinet_id)
    if cabinet is None:
        return None, None, _message(404, "We don't know this cabinet",
                                    "Check the code on the cabinet's sticker, or ask staff.")
    if not cabinet["enabled"]:
        return None, None, _message(410, "This cabinet no longer takes payments",
                                    "%s can't be paid for by phone any more. Nothing has been charged." % cabinet["name"])
    return ledger, cabinet, None


def _render_pay(ledger, cabinet, status=200, notice=None):
    cfg = current_app.config
    ready, reason = checkout.readiness(cabinet)
    offers = checkout.offers(cabinet, _promos(ledger), cfg["ARCADE_TZ"])
    promos = []
    unit = offers[0].regular_amount if offers else 0
    for o in offers:
        saved = 100 - (100 * o.amount) // (o.credits * unit) if unit else 0
        o.save = saved if saved >= 1 else 0
        if o.promo is not None and o.promo not in promos:
            promos.append(o.promo)
    links = [] if cfg.get("STRIPE_API_KEY") else [
        link for link in ledger.list_payment_links(cabinet["id"]) if link["url"]]
    body = render_template(
        "pay.html", arcade=cfg["ARCADE_NAME"], cabinet=cabinet, offers=offers, promos=promos,
        ready=ready, reason=REASONS.get(reason), nonce=secrets.token_urlsafe(16), notice=notice, links=links,
        csrf_token=generate_csrf(token_key=_csrf_key(cabinet["id"])),
        can_sell=ready and (bool(cfg.get("STRIPE_API_KEY") and cfg.get("ARCADE_PUBLIC_URL")) or bool(links)),
        money=checkout.money, single=offers[0] if offers else None)
    return make_response(body, status)


@bp.get("/pay/<cabinet_id>")
def pay_page(cabinet_id):
    ledger, cabinet, error = _cabinet_or_error(cabinet_id)
    if error is not None:
        return error
    return _render_pay(ledger, cabinet)


@bp.post("/pay/<cabinet_id>")
def pay(cabinet_id):
    ledger, cabinet, error = _cabinet_or_error(cabinet_id)
    if error is not None:
        return error
    ready, _reason = checkout.readiness(cabinet)
    if not ready:
        return _render_pay(ledger, cabinet, 409)
    form = request.form
    key, nonce = form.get("option", ""), form.get("nonce", "")
    offers = {o.key: o for o in checkout.offers(cabinet, _promos(ledger), current_app.config["ARCADE_TZ"])}
    offer = offers.get(key)
    if offer is None or not (8 <= len(nonce) <= 64):
        return _render_pay(ledger, cabinet, 400, notice="Please choose one of the options below.")
    if not _csrf_ok(cabinet["id"], form.get("csrf_token", "")):
        return _render_pay(ledger, cabinet, 400, notice="This page was open too long or came from elsewhere. "
                                                       "Please choose again - nothing has been charged.")
    if form.get("amount") != str(offer.amount) or form.get("credits") != str(offer.credits):
        # The page was shown under other prices (a promotion started or ended): charge nothing unseen.
        return _render_pay(ledger, cabinet, 409, notice="Prices have just changed. Please check them and choose "
                                                       "again - nothing has been charged.")
    cfg = current_app.config
    who = checkout.client_key(cfg["STRIPE_WEBHOOK_SECRET"], request.remote_addr)
    try:
        url = checkout.create_session(cfg, ledger, checkout.stripe_client(cfg), cabinet, offer, who, nonce)
    except checkout.CheckoutError as e:
        log.warning("checkout for cabinet %s not started: %s", cabinet["id"], e)
        resp = _message(e.status, "We couldn't start the payment", str(e), retry=cabinet["id"])
        if e.retry_after:
            resp.headers["Retry-After"] = str(int(e.retry_after))
        return resp
    return redirect(url, 303)


def _session_arg():
    sid = request.args.get("session_id", "")
    return sid if checkout.valid_session_id(sid) else None


@bp.get("/paid")
def paid():
    sid = _session_arg()
    view = checkout.payment_view(get_ledger(), sid) if sid else None
    if view is None:
        return _message(404, "Nothing to show", "There is no payment to show for this link. If you have just paid, "
                        "ask staff and show them your receipt.")
    return render_template("paid.html", arcade=current_app.config["ARCADE_NAME"], view=view, session_id=sid)


@bp.get("/paid/status")
def paid_status():
    sid = _session_arg()
    view = checkout.payment_view(get_ledger(), sid) if sid else None
    if view is None:
        return jsonify(state="unknown"), 404
    return jsonify(view)


@bp.get("/cancel")
def cancel():
    cabinet_id = request.args.get("cabinet", "")
    retry = cabinet_id if valid_cabinet_id(cabinet_id) and get_ledger().get_cabinet(cabinet_id) else None
    return _message(200, "Payment cancelled", "Nothing was charged.", retry=retry, tone="neutral")
