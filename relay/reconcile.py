"""Reconciliation with Stripe: catch what the webhook missed, and say where the books differ.

Stripe is asked (stripe-python, every page) for the Checkout Sessions created in a window that are
`complete`. For each one that is paid:

* the ledger lacks it, or only has it as `pending` (the webhook never came, or
  async_payment_succeeded never came): it is fulfilled through the webhook's own path
  (relay.webhook.fulfil: same validation, same idempotent record, one transaction) -- unless the
  session was created before this ledger was (docs/protocol.md, ledger rule): then it is only
  reported, for the operator to decide (`before_ledger`);
* the ledger has it: amounts and currencies are compared (`amount_differs`), and a credit that is
  unacknowledged past the stuck threshold, or that gave no credit (invalid, rejected, failed,
  expired), is reported (`not_delivered`).

Then every credit the ledger issued in the window whose session was not in that list is looked up
one by one; a session Stripe does not know, or does not call paid, is `unknown_to_stripe`.

`reconcile()` returns a report (a dict, JSON-ready); `arcade reconcile` prints it, and
`Periodic` runs it in the relay every ARCADE_RECONCILE_EVERY seconds when STRIPE_API_KEY is set.
"""
import logging
import re
import time

import stripe

from relay import webhook
from relay.config import ConfigError
from relay.ledger import StorageError, open_ledger
from relay.periodic import Job

log = logging.getLogger("arcade.reconcile")

PAGE = 100                       # sessions per list request (Stripe's maximum)
EVENT_PREFIX = "reconcile_"      # event id recorded for a fulfilment made here: reconcile_<session id>
ISSUED = ("queued", "sent", "applied", "duplicate")          # a credit went (or is going) to the cabinet
NO_CREDIT = ("invalid", "rejected", "failed", "expired")     # recorded, but no coin reached the cabinet
KINDS = ("fulfilled", "before_ledger", "not_delivered", "unknown_to_stripe", "amount_differs")
ATTENTION = KINDS[1:] + ("fulfil_failed",)                   # kinds an operator has to look at
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*\Z")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text):
    """'72h', '3d', '90m', '600s' or '600' (seconds) -> seconds (float). ValueError when not one."""
    m = _DURATION.match(str(text))
    if not m:
        raise ValueError("%r is not a duration: write e.g. 72h, 3d, 90m or 600s" % (text,))
    return float(m.group(1)) * _UNITS[m.group(2)]


def settings(cfg):
    """(every, window) in seconds from ARCADE_RECONCILE_EVERY / ARCADE_RECONCILE_WINDOW; every is 0
    when the periodic job is off (no STRIPE_API_KEY, or ARCADE_RECONCILE_EVERY=0). Raises ConfigError."""
    out = []
    for key, default in (("ARCADE_RECONCILE_EVERY", "15m"), ("ARCADE_RECONCILE_WINDOW", "72h")):
        value = cfg.get(key)
        try:
            seconds = parse_duration(default if value is None or str(value).strip() == "" else value)
        except ValueError as e:
            raise ConfigError("%s: %s (0 turns the periodic reconciliation off)" % (key, e)
                              if key.endswith("EVERY") else "%s: %s" % (key, e))
        out.append(seconds)
    every, window = out
    if window <= 0:
        raise ConfigError("ARCADE_RECONCILE_WINDOW=%r must be longer than 0, e.g. 72h"
                          % cfg.get("ARCADE_RECONCILE_WINDOW"))
    if not cfg.get("STRIPE_API_KEY"):
        every = 0.0
    return every, window


def _session_dict(obj):
    return obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)


def _finding(kind, session, payment, detail, action=""):
    session = session or {}
    payment = payment or {}
    return {
        "kind": kind,
        "session_id": session.get("id") or payment.get("session_id"),
        "cabinet_id": payment.get("cabinet_id") or (webhook.cabinet_ref(session) if session else None),
        "created": session.get("created"),
        "stripe_status": ("%s/%s" % (session.get("status"), session.get("payment_status"))) if session else "missing",
        "stripe_amount": session.get("amount_total"),
        "stripe_currency": session.get("currency"),
        "ledger_state": payment.get("state"),
        "ledger_amount": payment.get("amount"),
        "ledger_currency": payment.get("currency"),
        "seq": payment.get("seq"),
        "detail": detail,
        "action": action,
    }


def _differs(payment, session):
    currency = (payment.get("currency") or "").lower()
    return payment.get("amount") != session.get("amount_total") or currency != (session.get("currency") or "").lower()


def reconcile(ledger, client, since, now=None, stuck_after=60.0, fulfil=True, on_queued=None, page_size=PAGE):
    """Compare Stripe's paid Checkout Sessions created at or after `since` (Unix seconds) with the
    ledger, fulfil what the webhook missed (unless fulfil=False: a dry run), and return the report.

    Raises stripe.StripeError when Stripe can't be listed, StorageError when the ledger can't be used.
    `on_queued()` is called after a credit was queued (the relay wakes its dispatcher)."""
    now = time.time() if now is None else now
    ledger_created = ledger.created_at
    report = {"since": int(since), "until": int(now), "ledger_id": ledger.ledger_id,
              "ledger_created_at": ledger_created, "stuck_after": stuck_after, "dry_run": not fulfil,
              "stripe_sessions": 0, "stripe_paid": 0, "checked_in_ledger": 0, "fulfilled": 0, "findings": []}
    findings = report["findings"]
    listing = client.v1.checkout.sessions.list(params={"created": {"gte": int(since)}, "status": "complete",
                                                       "limit": page_size})
    sessions = {}
    for obj in listing.auto_paging_iter():
        s = _session_dict(obj)
        if isinstance(s.get("id"), str):
            sessions[s["id"]] = s
    report["stripe_sessions"] = len(sessions)

    for sid, s in sorted(sessions.items(), key=lambda kv: (kv[1].get("created") or 0, kv[0])):
        if s.get("payment_status") != "paid":
            continue   # still processing (async method): async_payment_succeeded or the next run settles it
        report["stripe_paid"] += 1
        payment = ledger.get_payment(sid)
        if payment is None or payment["state"] == "pending":
            # Stripe's `created` is whole seconds: the ledger's own second counts as after it
            if (s.get("created") or 0) < int(ledger_created):
                findings.append(_finding("before_ledger", s, payment,
                                         "paid at Stripe, not in this ledger, and created before the ledger was "
                                         "(%s): not fulfilled automatically" % _iso(ledger_created)))
                continue
            if not fulfil:
                findings.append(_finding("fulfilled", s, payment, "paid at Stripe, missing from the ledger: the "
                                         "webhook never came", action="would fulfil (dry run)"))
                continue
            try:
                result, verdict = webhook.fulfil(ledger, EVENT_PREFIX + sid, "checkout.session.completed", s)
            except StorageError:
                raise
            except Exception as e:   # one bad session must not stop the rest of the run
                log.exception("reconcile: fulfilling %s failed", sid)
                findings.append(_finding("fulfil_failed", s, payment, "%s: %s" % (type(e).__name__, e)))
                continue
            if result in ("duplicate_event", "duplicate_session"):
                continue   # the webhook (or another run) recorded it meanwhile
            report["fulfilled"] += 1
            payment = ledger.get_payment(sid)
            if result == "queued":
                if on_queued is not None:
                    on_queued()
                findings.append(_finding("fulfilled", s, payment, "paid at Stripe, missing from the ledger: the "
                                         "webhook never came", action="credit queued (seq %s)" % payment["seq"]))
            else:
                findings.append(_finding("not_delivered", s, payment, "paid at Stripe; fulfilled now but it gives "
                                         "no credit: %s" % (verdict["reason"] or result),
                                         action="recorded as %s" % result))
            continue
        report["checked_in_ledger"] += 1
        if _differs(payment, s):
            findings.append(_finding("amount_differs", s, payment, "Stripe charged %s %s, the ledger has %s %s"
                                     % (s.get("amount_total"), (s.get("currency") or "").upper(), payment["amount"],
                                        (payment["currency"] or "").upper())))
        if payment["state"] in ("queued", "sent"):
            age = now - (payment["queued_at"] or payment["created_at"])
            if age > stuck_after:
                findings.append(_finding("not_delivered", s, payment, "stuck: %s for %s with no ack from the cabinet"
                                         % (payment["state"], _age(age))))
        elif payment["state"] in NO_CREDIT:
            findings.append(_finding("not_delivered", s, payment, "paid at Stripe, no credit: %s%s"
                                     % (payment["state"], " (%s)" % payment["reason"] if payment["reason"] else "")))

    for payment in ledger.list_payments_since(since, states=ISSUED):
        sid = payment["session_id"]
        if sid in sessions:
            continue
        report["checked_in_ledger"] += 1
        try:
            s = _session_dict(client.v1.checkout.sessions.retrieve(sid))
        except stripe.InvalidRequestError as e:
            if e.http_status != 404:
                raise
            findings.append(_finding("unknown_to_stripe", None, payment, "credit %s; Stripe has no such session "
                                     "(another account or mode, or a test event)" % payment["state"]))
            continue
        if s.get("status") != "complete" or s.get("payment_status") != "paid":
            findings.append(_finding("unknown_to_stripe", s, payment, "credit %s, but Stripe says the session is %s, "
                                     "payment %s" % (payment["state"], s.get("status"), s.get("payment_status"))))
        elif _differs(payment, s):
            findings.append(_finding("amount_differs", s, payment, "Stripe charged %s %s, the ledger has %s %s"
                                     % (s.get("amount_total"), (s.get("currency") or "").upper(), payment["amount"],
                                        (payment["currency"] or "").upper())))
    report["attention"] = sum(1 for f in findings if f["kind"] in ATTENTION)
    return report


def _iso(ts):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _age(seconds):
    seconds = int(seconds)
    if seconds < 120:
        return "%d s" % seconds
    if seconds < 7200:
        return "%d min" % (seconds // 60)
    return "%.1f h" % (seconds / 3600.0)


def summary(report):
    """One line for logs and the top of the table."""
    counts = {}
    for f in report["findings"]:
        counts[f["kind"]] = counts.get(f["kind"], 0) + 1
    kinds = ", ".join("%d %s" % (counts[k], k) for k in KINDS + ("fulfil_failed",) if counts.get(k))
    return ("%d complete session(s) at Stripe since %s (%d paid), %d checked in the ledger, %d fulfilled now%s: %s"
            % (report["stripe_sessions"], _iso(report["since"]), report["stripe_paid"], report["checked_in_ledger"],
               report["fulfilled"], " (dry run)" if report["dry_run"] else "",
               kinds or "the books balance"))


class Periodic(Job):
    """Runs reconcile() every `every` seconds in a thread of the relay (the one running the
    dispatcher), over the last `window` seconds, logging a summary and a warning per finding."""

    def __init__(self, cfg, every, window, wake=None, clock=time.time):
        from relay import checkout
        super().__init__(every)
        self.cfg = cfg
        self.window = float(window)
        self.wake = wake
        self.clock = clock
        self.client = checkout.stripe_client(cfg)
        self.stuck_after = float(cfg.get("ARCADE_STUCK_AFTER") or 60.0)
        self.runs = 0
        self.last_report = None
        self.last_error = None

    thread_name = "arcade-reconcile"

    def start(self, gate=None):
        super().start(gate)
        log.info("reconciliation with Stripe every %s over the last %s", _age(self.every), _age(self.window))
        return self

    def run_once(self):
        now = self.clock()
        try:
            with open_ledger(self.cfg["ARCADE_DB"], self.cfg.get("ARCADE_DB_BUSY_TIMEOUT", 5000)) as ledger:
                report = reconcile(ledger, self.client, now - self.window, now=now, stuck_after=self.stuck_after,
                                   on_queued=self.wake.set if self.wake is not None else None)
        except stripe.StripeError as e:
            self.last_error = "Stripe: %s" % (type(e).__name__,)
            log.error("reconciliation: cannot list sessions from Stripe (%s); next try in %s", type(e).__name__,
                      _age(self.every))
            return None
        except StorageError as e:
            self.last_error = "storage: %s" % e
            log.error("reconciliation: database: %s; next try in %s", e, _age(self.every))
            return None
        self.runs += 1
        self.last_report, self.last_error = report, None
        (log.warning if report["attention"] else log.info)("reconciliation: %s", summary(report))
        for f in report["findings"]:
            (log.info if f["kind"] == "fulfilled" else log.warning)(
                "reconciliation: %s %s cabinet %s: %s%s", f["kind"], f["session_id"], f["cabinet_id"] or "-",
                f["detail"], " -> %s" % f["action"] if f["action"] else "")
        return report


def start_for_app(app):
    """Start the periodic job for this relay when it is on; returns it or None. Raises ConfigError."""
    every, window = settings(app.config)
    if not every:
        log.info("reconciliation with Stripe is off (%s)", "no STRIPE_API_KEY" if not app.config.get("STRIPE_API_KEY")
                 else "ARCADE_RECONCILE_EVERY=0")
        return None
    job = Periodic(app.config, every, window, wake=app.extensions["arcade"]["wake"])
    job.start(gate=app.extensions["arcade"].get("gate"))     # the leader lease (relay/leadership.py)
    app.extensions["arcade"]["reconcile"] = job
    return job
