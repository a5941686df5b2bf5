"""Alerts: a webhook (Slack/Discord-compatible JSON) and/or email, once per incident, then "resolved".

Every ARCADE_ALERT_EVERY the leader (relay/leadership.py) looks at what needs a person:

  offline:<cab>     a cabinet offline longer than ARCADE_OFFLINE_ALERT, inside ARCADE_OPEN_HOURS
  stuck:<cab>       credits unacknowledged longer than ARCADE_STUCK_AFTER
  dispute:<id>      a dispute not yet closed
  refund:<session>  a refund whose answer from Stripe never came (the credit is held)
  refund_failed:<session>  a refund Stripe made that failed later (refund.updated)
  broker            the dispatcher is disconnected from the broker (for two checks in a row)
  webhook_refused   10 or more refused webhooks (bad signatures) in 5 minutes
  reconcile         reconciliation found something for a person to look at

An incident is opened in the ledger (alert_incidents) the first time a condition is seen — the alert
is sent then, once — and closed when the condition is gone, with a "resolved" message. Incidents live
in the database, so a restart neither repeats an alert nor forgets to resolve it. A message that no
channel could take is retried at the next check (the incident is not kept open without its alert).
"""
import json
import logging
import smtplib
import time
import urllib.error
import urllib.request
from datetime import datetime
from email.message import EmailMessage
from zoneinfo import ZoneInfo

from relay.config import ConfigError
from relay.ledger import open_ledger
from relay.periodic import Job

log = logging.getLogger("arcade.alerts")
REFUSED_LIMIT, REFUSED_WINDOW = 10, 300.0


def _duration(cfg, key):
    from relay.reconcile import parse_duration
    try:
        return parse_duration(cfg.get(key) or 0)
    except ValueError as e:
        raise ConfigError("%s: %s" % (key, e))


def parse_hours(text):
    """'10:00-23:00' -> (600, 1380) minutes; may wrap past midnight ('18:00-02:00'). None: always open."""
    if not text or not str(text).strip():
        return None
    try:
        a, b = str(text).split("-")
        out = []
        for part in (a, b):
            h, m = part.strip().split(":")
            if not (h.isdigit() and m.isdigit() and 0 <= int(h) <= 24 and 0 <= int(m) < 60):
                raise ValueError
            out.append(int(h) * 60 + int(m))
    except ValueError:
        raise ConfigError("ARCADE_OPEN_HOURS=%r is not a range like 10:00-23:00" % (text,))
    return tuple(out)


def is_open(hours, ts, tz):
    if hours is None:
        return True
    t = datetime.fromtimestamp(ts, tz)
    minute = t.hour * 60 + t.minute
    start, end = hours
    return start <= minute < end if start <= end else (minute >= start or minute < end)


class Channels:
    """Where alerts go: a webhook URL and/or SMTP. send() returns the number of channels that took it."""

    def __init__(self, cfg):
        self.webhook = cfg.get("ARCADE_ALERT_WEBHOOK")
        self.smtp_host = cfg.get("ARCADE_SMTP_HOST")
        self.to = [a.strip() for a in str(cfg.get("ARCADE_ALERT_TO") or "").split(",") if a.strip()]
        self.cfg = cfg
        if self.smtp_host and not self.to:
            raise ConfigError("ARCADE_SMTP_HOST is set but ARCADE_ALERT_TO is not: say who gets the alert emails")
        try:
            self.smtp_port = int(cfg.get("ARCADE_SMTP_PORT") or 25)
        except ValueError:
            raise ConfigError("ARCADE_SMTP_PORT=%r is not a port number" % cfg.get("ARCADE_SMTP_PORT"))

    def __bool__(self):
        return bool(self.webhook or self.smtp_host)

    def send(self, subject, text):
        took = 0
        if self.webhook:
            body = json.dumps({"text": text, "content": text[:2000]}).encode()
            req = urllib.request.Request(self.webhook, data=body, method="POST",
                                         headers={"Content-Type": "application/json", "User-Agent": "arcade-relay"})
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    took += 200 <= resp.status < 300
            except (urllib.error.URLError, OSError) as e:
                log.error("alert webhook failed: %s", getattr(e, "reason", e))
        if self.smtp_host:
            msg = EmailMessage()
            msg["Subject"] = subject
            msg["From"] = self.cfg.get("ARCADE_ALERT_FROM") or "arcade-relay@localhost"
            msg["To"] = ", ".join(self.to)
            msg.set_content(text)
            try:
                with smtplib.SMTP(self.smtp_host, self.smtp_port, timeout=10) as smtp:
                    if self.cfg.get("ARCADE_SMTP_STARTTLS"):
                        smtp.starttls()
                    if self.cfg.get("ARCADE_SMTP_USER"):
                        smtp.login(self.cfg["ARCADE_SMTP_USER"], self.cfg.get("ARCADE_SMTP_PASSWORD") or "")
                    smtp.send_message(msg)
                took += 1
            except (smtplib.SMTPException, OSError) as e:
                log.error("alert email via %s:%d failed: %s", self.smtp_host, self.smtp_port, e)
        return took


class Alerter(Job):
    thread_name = "arcade-alerts"
    first_now = False

    def __init__(self, cfg, app_state=None, clock=time.time):
        self.cfg = cfg
        self.state = app_state if app_state is not None else {}
        self.clock = clock
        self.channels = Channels(cfg)
        self.every = _duration(cfg, "ARCADE_ALERT_EVERY")
        self.offline_after = _duration(cfg, "ARCADE_OFFLINE_ALERT")
        self.hours = parse_hours(cfg.get("ARCADE_OPEN_HOURS"))
        self.tz = ZoneInfo(cfg.get("ARCADE_TZ") or "UTC")
        self.stuck_after = float(cfg.get("ARCADE_STUCK_AFTER") or 60)
        self.name = cfg.get("ARCADE_NAME") or "Arcade"
        self._broker_down = 0
        super().__init__(self.every)

    # -- what needs a person now ---------------------------------------------------------------

    def conditions(self, ledger, now):
        """{key: (kind, subject, message)} of everything that needs a person at `now`."""
        out = {}
        for cab in ledger.list_cabinets():
            if not cab["online"] and cab["last_seen"] and now - cab["last_seen"] >= self.offline_after \
                    and is_open(self.hours, now, self.tz):
                out["offline:" + cab["id"]] = ("offline", cab["id"], "cabinet %s (%s) is offline" % (cab["id"],
                                                                                                 cab["name"]))
        stuck = {}
        for p in ledger.search_payments(stuck_after=self.stuck_after, limit=1000, now=now):
            stuck[p["cabinet_id"]] = stuck.get(p["cabinet_id"], 0) + 1
        for cab, n in stuck.items():
            out["stuck:" + cab] = ("stuck", cab, "%d credit%s stuck on cabinet %s (unacknowledged over %d s)"
                                   % (n, "" if n == 1 else "s", cab, self.stuck_after))
        for d in ledger.list_disputes(open_only=True):
            out["dispute:" + d["dispute_id"]] = ("dispute", d["session_id"] or "", "dispute %s on payment %s: %s "
                                                 "(%s)" % (d["dispute_id"], d["session_id"] or "?", d["reason"],
                                                           d["status"]))
        for r in ledger.list_refunds():
            if r["state"] == "failed" and r["error"].startswith("Stripe: the refund failed later"):
                out["refund_failed:" + r["session_id"]] = ("refund", r["session_id"], "refund of %s failed after "
                                                           "Stripe accepted it: the player has neither the play "
                                                           "nor the money" % r["session_id"])
            if r["state"] in ("unknown", "requested") and now - r["updated_at"] > 60:
                out["refund:" + r["session_id"]] = ("refund", r["session_id"], "refund of %s not confirmed by "
                                                    "Stripe: the credit is held; run `arcade refund %s` again"
                                                    % (r["session_id"], r["session_id"]))
        dispatcher = self.state.get("dispatcher")
        if dispatcher is not None:
            self._broker_down = 0 if dispatcher.connected else self._broker_down + 1
            if self._broker_down >= 2:
                out["broker"] = ("broker", "", "the relay is disconnected from the MQTT broker: no credit can be "
                                 "delivered")
        refused = self.state.get("webhook_refused") or ()
        recent = sum(1 for t in list(refused) if now - t <= REFUSED_WINDOW)
        if recent >= REFUSED_LIMIT:
            out["webhook_refused"] = ("webhook", "", "%d webhooks refused in %d min (bad signatures? a wrong "
                                      "STRIPE_WEBHOOK_SECRET, or someone probing)" % (recent, REFUSED_WINDOW // 60))
        job = self.state.get("reconcile")
        report = getattr(job, "last_report", None)
        if report and report.get("attention"):
            out["reconcile"] = ("reconcile", "", "reconciliation with Stripe: %s finding(s) need a look "
                                "(`arcade reconcile`)" % report["attention"])
        return out

    def check(self, ledger, now=None):
        """Open and alert new incidents, resolve gone ones. Returns [(opened|resolved, key, message)]."""
        now = self.clock() if now is None else now
        current = self.conditions(ledger, now)
        said = []
        for key, (kind, subject, message) in sorted(current.items()):
            if ledger.open_incident(key, kind, subject, message, now=now):
                if self.channels.send("[%s] %s" % (self.name, message), "🔴 %s: %s" % (self.name, message)):
                    said.append(("opened", key, message))
                else:
                    ledger.drop_incident(key)       # no channel took it: try again next time
        for inc in ledger.open_incidents():
            # "resolved" is said by the one check whose update closed it (another relay's may race it)
            if inc["key"] not in current and ledger.close_incident(inc["key"], now=now) is not None:
                lasted = int(now - inc["opened_at"])
                text = "resolved after %d min: %s" % (max(1, lasted // 60), inc["message"])
                self.channels.send("[%s] RESOLVED %s" % (self.name, inc["message"]), "✅ %s: %s" % (self.name, text))
                said.append(("resolved", inc["key"], inc["message"]))
        for what, key, message in said:
            log.warning("alert %s: %s", what, message)
        return said

    # -- the thread ----------------------------------------------------------------------------

    def run_once(self):
        with open_ledger(self.cfg["ARCADE_DB"], self.cfg.get("ARCADE_DB_BUSY_TIMEOUT", 5000)) as ledger:
            return self.check(ledger)


def start_for_app(app):
    """Start the alert checks in this (dispatcher) process when a channel is set; returns it or None.
    Raises ConfigError on bad settings."""
    alerter = Alerter(app.config, app.extensions["arcade"])
    if not alerter.channels or not alerter.every:
        log.info("alerts are off (set ARCADE_ALERT_WEBHOOK and/or ARCADE_SMTP_HOST with ARCADE_ALERT_TO)")
        return None
    app.extensions["arcade"]["alerts"] = alerter
    return alerter.start(gate=app.extensions["arcade"].get("gate"))     # the leader lease (relay/leadership.py)
