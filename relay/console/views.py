"""The console's pages: sign-in, Now, Payments (+ one payment's timeline, refund), Takings, Cabinets, Audit."""
import csv
import hashlib
import io
import time
from datetime import datetime, timedelta
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from flask import (Blueprint, Response, abort, current_app, flash, g, redirect, render_template, request, session,
                   url_for)
from flask_wtf.csrf import CSRFError

from relay import pricing, promotions, refunds, screenlines
from relay.console import SESSION_HOURS, auth, csrf
from relay.db import get_ledger
from relay.ledger import STATES, LedgerError, valid_cabinet_id

bp = Blueprint("console", __name__, url_prefix="/admin", template_folder="templates", static_folder="static")

PUBLIC = ("console.login", "console.static")
MAX_PRICE_CENTS = 100000       # 1,000.00: a price above this is a typo
MAX_BUNDLES = 6
FILTERS = {"stuck": "Stuck", "invalid": "Invalid", "refunded": "Refunded", "disputed": "Disputed"}


# -- the guard: every page and action needs a signed-in operator ------------------------------

def _fingerprint(pw_hash):
    return hashlib.sha256(pw_hash.encode()).hexdigest()[:16]


def _operator():
    name = session.get("op")
    if not isinstance(name, str) or time.time() - session.get("at", 0) > SESSION_HOURS * 3600:
        return None
    op = get_ledger().get_operator(name)
    if op is None or session.get("fp") != _fingerprint(op["pw_hash"]):
        return None
    return op


@bp.before_request
def guard():
    if request.endpoint in PUBLIC:
        if request.method == "POST":
            csrf.protect()
        return None
    g.operator = _operator()
    if g.operator is None:
        session.clear()
        if request.method == "GET":
            return redirect(url_for("console.login", next=request.full_path.rstrip("?")))
        return redirect(url_for("console.login"))
    if request.method == "POST":
        csrf.protect()
    return None


@bp.after_request
def headers(resp):
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "same-origin"
    resp.headers["Content-Security-Policy"] = ("default-src 'none'; style-src 'self'; img-src 'self' data:; "
                                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    return resp


@bp.errorhandler(CSRFError)
def csrf_failed(e):
    return render_template("console/message.html", title="Form expired", text="This form's security token is "
                           "missing or out of date (%s). Nothing was changed: go back, reload the page and try again."
                           % e.description), 400


def _audit(action, subject="", detail=""):
    get_ledger().audit(g.operator["name"], action, subject, detail)


# -- helpers for templates ---------------------------------------------------------------------

def _tz():
    return ZoneInfo(current_app.config.get("ARCADE_TZ") or "UTC")


@bp.app_template_filter("when")
def when(ts):
    if not ts:
        return "—"
    return datetime.fromtimestamp(ts, _tz()).strftime("%Y-%m-%d %H:%M:%S")


@bp.app_template_filter("ago")
def ago(ts, now=None):
    if not ts:
        return "never"
    return span((now or time.time()) - ts)


@bp.app_template_filter("span")
def span(seconds):
    seconds = max(0, int(seconds or 0))
    if seconds < 60:
        return "%d s" % seconds
    if seconds < 3600:
        return "%d min" % (seconds // 60)
    if seconds < 86400:
        return "%d h %02d min" % (seconds // 3600, seconds % 3600 // 60)
    return "%d d %d h" % (seconds // 86400, seconds % 86400 // 3600)


@bp.app_template_filter("money")
def money(cents, currency="usd"):
    if cents is None:
        return "—"
    return pricing.format_price(int(cents), currency or "usd")


@bp.context_processor
def common():
    return {"arcade": current_app.config.get("ARCADE_NAME", "Arcade"), "operator": g.get("operator"),
            "states": STATES, "filters": FILTERS}


def _today_start():
    now = datetime.now(_tz())
    return now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


# -- sign-in ----------------------------------------------------------------------------------

def _client_key():
    return "ip:" + (request.remote_addr or "?")


def _safe_next(target):
    if not target or not isinstance(target, str):
        return url_for("console.now")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/admin") or "\\" in target:
        return url_for("console.now")
    return target


@bp.route("/login", methods=["GET", "POST"])
def login():
    throttle = current_app.extensions["arcade_console"]["throttle"]
    error, status = None, 200
    name = ""
    if request.method == "POST":
        name = (request.form.get("name") or "").strip().lower()[:64]
        password = request.form.get("password") or ""
        keys = (_client_key(), "name:" + name)
        wait = throttle.retry_after(*keys)
        if wait:
            resp = Response(render_template("console/login.html", error="Too many failed sign-ins. Try again in %s."
                                            % span(wait + 59), name=name), 429)
            resp.headers["Retry-After"] = str(int(wait) + 1)
            return resp
        op = get_ledger().get_operator(name) if name else None
        if auth.check_password(op["pw_hash"] if op else None, password):
            throttle.clear("name:" + name)
            ledger = get_ledger()
            if auth.needs_rehash(op["pw_hash"]):
                ledger.set_operator_hash(name, auth.hash_password(password))
                op = ledger.get_operator(name)
            session.clear()
            session.permanent = True
            session.update(op=name, fp=_fingerprint(op["pw_hash"]), at=time.time())
            ledger.note_login(name)
            ledger.audit(name, "login", "", "from %s" % request.remote_addr)
            return redirect(_safe_next(request.args.get("next")), 303)
        throttle.fail(*keys)
        get_ledger().audit(name or "?", "login.failed", "", "from %s" % request.remote_addr)
        error, status = "That name and password don't match an operator.", 401
    return render_template("console/login.html", error=error, name=name), status


@bp.post("/logout")
def logout():
    _audit("logout")
    session.clear()
    return redirect(url_for("console.login"), 303)


# -- Now ----------------------------------------------------------------------------------------

def _tiles(ledger, now):
    cfg = current_app.config
    stuck_after = float(cfg.get("ARCADE_STUCK_AFTER", 60))
    today = {r["cabinet_id"]: r for r in ledger.takings(_today_start())}
    last_paid = ledger.last_payment_at()
    stuck = {}
    for p in ledger.search_payments(stuck_after=stuck_after, limit=1000):
        stuck[p["cabinet_id"]] = stuck.get(p["cabinet_id"], 0) + 1
    tiles = []
    for cab in ledger.list_cabinets():
        status = cab["status"] or {}
        t = {"id": cab["id"], "name": cab["name"], "online": cab["online"], "enabled": cab["enabled"],
             "in_flight": cab["pending"], "stuck": stuck.get(cab["id"], 0), "fw": status.get("fw"),
             "rssi": status.get("rssi"), "heap": status.get("heap"), "inhibited": bool(status.get("inhibited")),
             "last_paid": last_paid.get(cab["id"]), "today": today.get(cab["id"]), "currency": cab["currency"],
             "cfg_error": status.get("cfg_error") or ""}
        if cab["online"]:
            t["since"] = status.get("uptime")
        else:
            t["since"] = (now - cab["last_seen"]) if cab["last_seen"] else None
        problems = []
        if t["stuck"]:
            problems.append("%d stuck credit%s" % (t["stuck"], "" if t["stuck"] == 1 else "s"))
        if not cab["online"]:
            problems.append("offline" + (" for %s" % span(t["since"]) if t["since"] is not None else ", never seen"))
        if t["inhibited"]:
            problems.append("coin line inhibited")
        if not cab["enabled"]:
            problems.append("disabled")
        if t["cfg_error"]:
            problems.append("config refused: %s" % t["cfg_error"])
        t["problems"] = problems           # sorts the tile first; the state line already says offline
        t["notes"] = [n for n in problems if not n.startswith("offline")]
        tiles.append(t)
    tiles.sort(key=lambda t: (not t["problems"], t["id"]))
    return tiles


@bp.get("/")
def now():
    ledger = get_ledger()
    t = time.time()
    tiles = _tiles(ledger, t)
    day = _today_start()
    invalid = ledger.search_payments(states=("invalid",), since=day, limit=50)
    disputes = ledger.list_disputes(open_only=True, limit=20)
    held = ledger.search_payments(states=("refunding",), limit=20)
    failed = [r for r in ledger.list_refunds(limit=200) if r["state"] == "failed"
              and r["error"].startswith("Stripe: the refund failed later")]
    totals = {}
    for row in ledger.takings(day):
        cur = row["currency"] or "usd"
        totals[cur] = totals.get(cur, 0) + (row["amount"] or 0) - (row["refunded"] or 0)
    return render_template("console/now.html", tiles=tiles, invalid=invalid, disputes=disputes, held=held, failed=failed,
                           totals=totals, now=t, incidents=ledger.open_incidents())


# -- Payments ---------------------------------------------------------------------------------

def _day_bounds(text):
    try:
        day = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=_tz())
    except ValueError:
        return None
    return day.timestamp(), (day + timedelta(days=1)).timestamp()


def _search():
    a = request.args
    q = {"session": (a.get("session") or "").strip()[:255], "cabinet": (a.get("cabinet") or "").strip()[:32],
         "state": a.get("state") or "", "date": (a.get("date") or "").strip()[:10], "filter": a.get("filter") or ""}
    kwargs, errors = {"limit": 500}, []
    if q["session"]:
        kwargs["session"] = q["session"]
    if q["cabinet"]:
        if not valid_cabinet_id(q["cabinet"]):
            errors.append("cabinet %r is not a cabinet id" % q["cabinet"])
        else:
            kwargs["cabinet"] = q["cabinet"]
    if q["state"]:
        if q["state"] not in STATES:
            errors.append("state %r is not one of %s" % (q["state"], ", ".join(STATES)))
        else:
            kwargs["states"] = (q["state"],)
    if q["date"]:
        bounds = _day_bounds(q["date"])
        if bounds is None:
            errors.append("date %r is not a day like 2026-11-29" % q["date"])
        else:
            kwargs["since"], kwargs["until"] = bounds
    f = q["filter"]
    if f == "stuck":
        kwargs["stuck_after"] = float(current_app.config.get("ARCADE_STUCK_AFTER", 60))
    elif f == "invalid":
        kwargs["states"] = ("invalid",)
    elif f == "refunded":
        kwargs["refunded"] = True
    elif f == "disputed":
        kwargs["disputed"] = True
    elif f:
        errors.append("filter %r is not one of %s" % (f, ", ".join(FILTERS)))
    return q, kwargs, errors


@bp.get("/payments")
def payments():
    q, kwargs, errors = _search()
    rows = [] if errors else get_ledger().search_payments(**kwargs)
    if request.args.get("format") == "csv" and not errors:
        _audit("payments.export", "", "%d rows" % len(rows))
        out = io.StringIO()
        cols = ["session_id", "cabinet_id", "state", "reason", "credits", "pulses", "amount", "currency", "seq",
                "created_at", "done_at", "refund_state", "dispute_status"]
        w = csv.writer(out)
        w.writerow(cols)
        for r in rows:
            w.writerow([when(r[c]) if c.endswith("_at") and r[c] else r[c] for c in cols])
        return Response(out.getvalue(), 200, {"Content-Type": "text/csv; charset=utf-8",
                                              "Content-Disposition": "attachment; filename=payments.csv"})
    return render_template("console/payments.html", rows=rows, q=q, errors=errors,
                           cabinets=[c["id"] for c in get_ledger().list_cabinets()]), 400 if errors else 200


def _timeline(p, events, refund, disputes):
    steps = [(p["created_at"], "recorded", "from Stripe's %s" % (p["event_type"] or "event"))]
    for e in events:
        steps.append((e["received_at"], "stripe", "%s (%s) %s" % (e["type"], e["outcome"], e["event_id"])))
    if p["paid_at"]:
        steps.append((p["paid_at"], "paid", "money received"))
    if p["queued_at"]:
        steps.append((p["queued_at"], "queued", "credit seq %s: %s credit(s), %s pulse(s)" % (p["seq"], p["credits"],
                                                                                         p["pulses"])))
    if p["published_at"]:
        steps.append((p["published_at"], "published", "first publish to the broker"))
    if p["sent_at"]:
        steps.append((p["sent_at"], "sent", "broker acknowledged (attempts %d)" % p["attempts"]))
    if p["done_at"] and p["state"] == "refunded":
        steps.append((p["done_at"], "withdrawn", "the credit was never sent and never will be"))
    elif p["done_at"]:
        steps.append((p["done_at"], p["state"], ("%s pulses, cabinet's last seq %s" % (p["ack_pulses"], p["ack_last"]))
                      if p["state"] in ("applied", "duplicate", "rejected") else p["reason"] or ""))
    if refund:
        steps.append((refund["updated_at"], "refund " + refund["state"], "%s by %s via %s%s%s" % (
            refund["refund_id"] or "", refund["who"], refund["source"], " — after play" if refund["after_play"] else "",
            ": " + refund["error"] if refund["error"] else "")))
    for d in disputes:
        steps.append((d["updated_at"], "dispute " + d["status"], "%s %s" % (d["dispute_id"], d["reason"])))
    steps.sort(key=lambda s: s[0] or 0)
    return steps


@bp.get("/payments/<session_id>")
def payment(session_id):
    ledger = get_ledger()
    p = ledger.get_payment(session_id[:255])
    if p is None:
        abort(404)
    refund = ledger.get_refund(session_id)
    disputes = [d for d in ledger.list_disputes(limit=1000) if d["session_id"] == session_id]
    refundable = (p["state"] == "queued" and p["published_at"] is None and p["sent_at"] is None) or \
        p["state"] in ("invalid", "rejected", "refunding")
    after_play = p["state"] in ("applied", "duplicate")
    if refund and refund["state"] == "succeeded":
        refundable = after_play = False
    return render_template("console/payment.html", p=p, refund=refund, disputes=disputes,
                           timeline=_timeline(p, ledger.payment_events(session_id), refund, disputes),
                           refundable=refundable, after_play=after_play)


@bp.post("/payments/<session_id>/refund")
def refund(session_id):
    session_id = session_id[:255]
    reason = (request.form.get("reason") or "").strip()[:200]
    force = request.form.get("confirm_after_play") == "yes"
    try:
        done = refunds.refund(get_ledger(), current_app.config, session_id, g.operator["name"], "console",
                              reason=reason, force=force)
    except refunds.RefundError as e:
        flash(str(e), "bad")
    else:
        flash("Refunded %s (%s): %s" % (money(done["amount"], done["currency"]), done["refund_id"], done["note"]), "ok")
    return redirect(url_for("console.payment", session_id=session_id), 303)


# -- Takings ------------------------------------------------------------------------------------

@bp.get("/takings")
def takings():
    ledger = get_ledger()
    try:
        days = max(1, min(int(request.args.get("days", 14)), 92))
    except ValueError:
        days = 14
    start = datetime.fromtimestamp(_today_start(), _tz())
    series = []
    for i in range(days - 1, -1, -1):
        d0 = start - timedelta(days=i)
        d1 = d0 + timedelta(days=1)
        rows = ledger.takings(d0.timestamp(), d1.timestamp())
        series.append({"day": d0.strftime("%a %d %b"), "amount": sum((r["amount"] or 0) - (r["refunded"] or 0)
                                                                    for r in rows),
                       "plays": sum(r["credits"] or 0 for r in rows)})
    since = (start - timedelta(days=days - 1)).timestamp()
    per_cab = ledger.takings(since)
    top = max([s["amount"] for s in series] + [1])
    return render_template("console/takings.html", series=series, per_cab=per_cab, top=top, days=days,
                           effects=_promo_effects(ledger, since, time.time()))


def _promo_effects(ledger, since, until, step=900):
    """Per promotion: plays per hour while it was on vs while it was off, over [since, until), counting
    the plays (credits) of payments that bought credits on the cabinets it covers."""
    promos = _promos(ledger)
    if not promos:
        return []
    tz = _tz()
    plays = [(p["created_at"], p["cabinet_id"], p["credits"]) for p in ledger.search_payments(since=since, until=until,
                                                                                              limit=100000)
             if p["seq"] is not None and p["state"] not in ("refunded", "refunding")]
    slots = [datetime.fromtimestamp(t, tz) for t in range(int(since), int(until), step)]
    out = []
    for promo in promos:
        on_slots = sum(1 for t in slots if promo.active_at(t))
        covered = [(at, n) for at, cab, n in plays if promo.cabinet_id in (None, cab)]
        on = sum(n for at, n in covered if promo.active_at(datetime.fromtimestamp(at, tz)))
        off = sum(n for _, n in covered) - on
        on_h, off_h = on_slots * step / 3600.0, (len(slots) - on_slots) * step / 3600.0
        out.append({"promo": promo, "on": on, "off": off, "on_hours": on_h, "off_hours": off_h,
                    "on_rate": on / on_h if on_h else None, "off_rate": off / off_h if off_h else None})
    return out


# -- Cabinets -----------------------------------------------------------------------------------

@bp.get("/cabinets")
def cabinets():
    return render_template("console/cabinets.html", cabinets=get_ledger().list_cabinets())


def _cabinet_or_404(cabinet_id):
    cab = get_ledger().get_cabinet(cabinet_id) if valid_cabinet_id(cabinet_id) else None
    if cab is None:
        abort(404)
    return cab


def _render_cabinet(cab, errors=(), form=None, status=200):
    ledger = get_ledger()
    cfg = ledger.cabinet_config(cab["id"])
    if form is None:
        form = {"name": cab["name"], "price": pricing.format_price(cab["price_cents"], cab["currency"]).split()[0],
                "bundles": " ".join("%d:%s" % (c, pricing.format_price(p, cab["currency"]).split()[0])
                                    for c, p in cab["bundles"]),
                "coins_per_credit": str(cfg["coins_per_credit"]), "pulse_ms": str(cfg["pulse_ms"]),
                "gap_ms": str(cfg["gap_ms"]), "enabled": cab["enabled"]}
    recent = ledger.search_payments(cabinet=cab["id"], limit=10)
    history = [a for a in ledger.list_audit(limit=500) if a["subject"] == cab["id"]][:20]
    return render_template("console/cabinet.html", cab=cab, cfg=cfg, form=form, errors=errors, recent=recent,
                           history=history, promos=_promos(ledger, cab["id"]),
                           tz=current_app.config.get("ARCADE_TZ") or "UTC"), status


@bp.get("/cabinets/<cabinet_id>")
def cabinet(cabinet_id):
    return _render_cabinet(_cabinet_or_404(cabinet_id))


def _whole(text, what, lo, hi):
    text = (text or "").strip()
    if not text.isdigit() or not lo <= int(text) <= hi:
        raise ValueError("%s %r must be a whole number from %d to %d" % (what, text, lo, hi))
    return int(text)


@bp.post("/cabinets/<cabinet_id>")
def cabinet_save(cabinet_id):
    cab = _cabinet_or_404(cabinet_id)
    f = request.form
    form = {k: (f.get(k) or "")[:200] for k in ("name", "price", "bundles", "coins_per_credit", "pulse_ms", "gap_ms")}
    form["enabled"] = f.get("enabled") == "yes"
    errors, cur = [], cab["currency"]
    name = form["name"].strip()
    if not name or len(name) > 64:
        errors.append("Name must be 1 to 64 characters.")
    try:
        price = pricing.parse_price(form["price"], cur)
        if price > MAX_PRICE_CENTS:
            raise ValueError("price %s is above %s: is it a typo?" % (form["price"], money(MAX_PRICE_CENTS, cur)))
    except ValueError as e:
        errors.append("Price: %s." % e)
        price = None
    bundles = []
    words = form["bundles"].replace(",", " ").split()
    if len(words) > MAX_BUNDLES:
        errors.append("Bundles: at most %d." % MAX_BUNDLES)
    for word in words[:MAX_BUNDLES]:
        try:
            credits, cents = pricing.parse_bundle(word, cur)
            if credits > 50 or cents > MAX_PRICE_CENTS:
                raise ValueError("bundle %r is larger than 50 plays or %s" % (word, money(MAX_PRICE_CENTS, cur)))
            bundles.append((credits, cents))
        except ValueError as e:
            errors.append("Bundles: %s." % e)
    numbers = {}
    for key, what, lo, hi in (("coins_per_credit", "Coins per credit", 1, 255), ("pulse_ms", "Pulse width (ms)", 0,
                                                                                  10000),
                              ("gap_ms", "Gap between pulses (ms)", 0, 10000)):
        try:
            numbers[key] = _whole(form[key], what, lo, hi)
        except ValueError as e:
            errors.append("%s." % str(e).capitalize())
    ledger = get_ledger()
    if not errors:
        try:
            # validate everything (the bundle/coin limit too) before changing anything
            ledger.check_prices(cur, price, bundles, numbers["coins_per_credit"])
        except LedgerError as e:
            errors.append("%s." % str(e).capitalize())
    if errors:
        return _render_cabinet(cab, errors, form, 400)
    cfg = ledger.cabinet_config(cab["id"])
    changes = []
    if (name, price, [tuple(b) for b in bundles]) != (cab["name"], cab["price_cents"], cab["bundles"]):
        ledger.set_prices(cab["id"], name=name, price_cents=price, bundles=bundles)
        changes.append("name %s, price %s, bundles %s" % (name, money(price, cur), form["bundles"] or "none"))
    changes += _screens(ledger)          # before a timing change: its config version then carries the lines
    if (numbers["pulse_ms"], numbers["gap_ms"], numbers["coins_per_credit"]) != (cfg["pulse_ms"], cfg["gap_ms"],
                                                                               cfg["coins_per_credit"]):
        new = ledger.set_cabinet_config(cab["id"], numbers["pulse_ms"], numbers["gap_ms"], numbers["coins_per_credit"])
        current_app.extensions["arcade"].get("wake") and current_app.extensions["arcade"]["wake"].set()
        changes.append("pulse %s ms, gap %s ms, %d coin(s) per credit: config ver %d" % (
            numbers["pulse_ms"] or "default", numbers["gap_ms"] or "default", numbers["coins_per_credit"], new["ver"]))
    if form["enabled"] != cab["enabled"]:
        ledger.set_enabled(cab["id"], form["enabled"])
        changes.append("enabled" if form["enabled"] else "disabled")
    if changes:
        _audit("cabinet.set", cab["id"], "; ".join(changes))
        flash("Saved: %s." % "; ".join(changes), "ok")
    else:
        flash("Nothing changed.", "neutral")
    return redirect(url_for("console.cabinet", cabinet_id=cab["id"]), 303)


def _screens(ledger):
    """Cabinet screens whose price or promotion line changed get a new config version, published now."""
    changed = screenlines.refresh(ledger, current_app.config.get("ARCADE_TZ") or "UTC")
    if changed:
        current_app.extensions["arcade"].get("wake") and current_app.extensions["arcade"]["wake"].set()
    return ["screen of %s: %s (config ver %d)" % (cab, " / ".join(x for x in (price, promo) if x), ver)
            for cab, (ver, price, promo) in sorted(changed.items())]


def _promos(ledger, cabinet_id=None):
    rows = ledger.list_promotions()
    return [promotions.Promotion(r["id"], r["cabinet_id"], r["kind"], r["value"], r["days"], r["start_min"],
                                 r["end_min"], r["label"]) for r in rows
            if cabinet_id is None or r["cabinet_id"] in (None, cabinet_id)]


@bp.post("/cabinets/<cabinet_id>/promotions")
def promotion_add(cabinet_id):
    cab = _cabinet_or_404(cabinet_id)
    f = request.form
    kind, label = f.get("kind") or "", (f.get("label") or "").strip()
    try:
        value = _whole(f.get("value"), "value", 1, 100)
        promotions.validate(kind, value)
        days = promotions.parse_days((f.get("days") or "")[:40])
        start, end = promotions.parse_window((f.get("window") or "")[:20])
        if len(label) > 60 or "\n" in label or "\r" in label:
            raise promotions.PromotionError("label is too long: at most 60 characters on one line")
        scope = None if f.get("scope") == "all" else cab["id"]
        promo_id = get_ledger().add_promotion(scope, kind, value, days, start, end, label)
    except (ValueError, LedgerError) as e:
        flash("Promotion not added: %s. Nothing was changed." % e, "bad")
    else:
        promo = promotions.Promotion(promo_id, scope, kind, value, days, start, end, label)
        _audit("promotion.add", cab["id"], "%d: %s" % (promo_id, promo.describe()))
        _screens(get_ledger())
        flash("Promotion %d added: %s." % (promo_id, promo.describe()), "ok")
    return redirect(url_for("console.cabinet", cabinet_id=cab["id"]), 303)


@bp.post("/cabinets/<cabinet_id>/promotions/<int:promo_id>/remove")
def promotion_remove(cabinet_id, promo_id):
    cab = _cabinet_or_404(cabinet_id)
    found = [p for p in _promos(get_ledger(), cab["id"]) if p.id == promo_id]
    if not found:
        flash("No promotion %d on this cabinet: nothing removed." % promo_id, "bad")
    else:
        get_ledger().remove_promotion(promo_id)
        _audit("promotion.remove", cab["id"], "%d: %s" % (promo_id, found[0].describe()))
        _screens(get_ledger())
        flash("Promotion %d removed." % promo_id, "ok")
    return redirect(url_for("console.cabinet", cabinet_id=cab["id"]), 303)


STICKER_TYPES = {"png": "image/png", "svg": "image/svg+xml", "pdf": "application/pdf"}


@bp.get("/cabinets/<cabinet_id>/sticker.<fmt>")
def sticker(cabinet_id, fmt):
    """The cabinet's QR sticker (relay/stickers.py, as `arcade qr` prints it), to download."""
    from relay import stickers
    cab = _cabinet_or_404(cabinet_id)
    if fmt not in STICKER_TYPES:
        abort(404)
    try:
        [st] = stickers.from_ledger(current_app.config, [cab["id"]])
    except (LookupError, ValueError) as e:
        return render_template("console/message.html", title="No sticker yet", text=str(e.args[0] if e.args else e)), 409
    return Response(stickers.render([st], fmt), 200, {
        "Content-Type": STICKER_TYPES[fmt],
        "Content-Disposition": "attachment; filename=%s-sticker.%s" % (cab["id"], fmt)})


@bp.post("/cabinets/<cabinet_id>/test-pulse")
def test_pulse(cabinet_id):
    from relay import testpulse
    cab = _cabinet_or_404(cabinet_id)
    try:
        pulses = _whole(request.form.get("pulses"), "pulses", 1, 10)
    except ValueError as e:
        flash("%s; nothing sent." % str(e).capitalize(), "bad")
        return redirect(url_for("console.cabinet", cabinet_id=cab["id"]), 303)
    ok, text = testpulse.send(get_ledger(), current_app.config, cab, pulses)
    _audit("cabinet.test_pulse", cab["id"], "%d pulse(s): %s" % (pulses, text))
    flash(text, "ok" if ok else "bad")
    return redirect(url_for("console.cabinet", cabinet_id=cab["id"]), 303)


# -- Audit ------------------------------------------------------------------------------------

@bp.get("/audit")
def audit():
    who = (request.args.get("who") or "").strip()[:64]
    return render_template("console/audit.html", rows=get_ledger().list_audit(limit=300, who=who or None), who=who,
                           operators=get_ledger().list_operators())
