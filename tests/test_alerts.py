"""Alerts once per incident, then resolved (issue 13), through real channels on loopback: an HTTP
receiver standing in for a Slack/Discord incoming webhook, and aiosmtpd, a real SMTP server. The
oracle is what those servers received. Time is passed in (`now`), never slept on."""
import json
import threading
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from relay import alerts
from relay.config import ConfigError
from relay.ledger import open_ledger
from tools.lab.broker import free_port

T0 = datetime(2027, 1, 13, 13, 20, tzinfo=timezone.utc).timestamp()     # a Wednesday, 13:20 UTC


class Receiver:
    """A webhook receiver: records every JSON body; `status` is what it answers."""

    def __init__(self):
        self.bodies, self.status = [], 200
        self.cond = threading.Condition()
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with outer.cond:
                    if outer.status == 200:
                        outer.bodies.append(json.loads(body))
                    outer.cond.notify_all()
                self.send_response(outer.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = "http://127.0.0.1:%d/hook" % self.server.server_address[1]

    def texts(self):
        with self.cond:
            return [b["text"] for b in self.bodies]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def smtp():
    from aiosmtpd.controller import Controller

    class Inbox:
        def __init__(self):
            self.mails = []

        async def handle_DATA(self, server, session, envelope):
            self.mails.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content.decode()))
            return "250 OK"

    inbox = Inbox()
    port = free_port()
    ctl = Controller(inbox, hostname="127.0.0.1", port=port)
    ctl.start()
    inbox.port = port
    try:
        yield inbox
    finally:
        ctl.stop()


@pytest.fixture
def led(tmp_path):
    with open_ledger(tmp_path / "a.db") as led:
        led.add_cabinet("cab1", name="Galaga", price_cents=100)
        led.add_cabinet("cab2", name="Pinball", price_cents=100)
        led.record_status("cab1", True, {"online": True}, seen_at=T0 - 3600)
        led.record_status("cab2", True, {"online": True}, seen_at=T0 - 3600)
        yield led


def settings(led, receiver=None, smtp=None, **extra):
    cfg = {"ARCADE_DB": led.path, "ARCADE_NAME": "Pixel Palace", "ARCADE_OFFLINE_ALERT": "10m",
           "ARCADE_ALERT_EVERY": "30s", "ARCADE_TZ": "UTC", "ARCADE_STUCK_AFTER": 60}
    if receiver:
        cfg["ARCADE_ALERT_WEBHOOK"] = receiver.url
    if smtp:
        cfg.update(ARCADE_SMTP_HOST="127.0.0.1", ARCADE_SMTP_PORT=str(smtp.port), ARCADE_ALERT_TO="ops@example.com",
                   ARCADE_ALERT_FROM="relay@example.com")
    cfg.update(extra)
    return cfg


def test_offline_cabinet_alerts_once_then_resolves_on_both_channels(led, receiver, smtp):
    a = alerts.Alerter(settings(led, receiver, smtp))
    led.record_status("cab1", False, {"online": False}, seen_at=T0)
    assert a.check(led, now=T0 + 5 * 60) == []                       # offline 5 min: not yet
    assert [w for w, _, _ in a.check(led, now=T0 + 11 * 60)] == ["opened"]
    assert a.check(led, now=T0 + 12 * 60) == [] and a.check(led, now=T0 + 40 * 60) == []   # once per incident
    assert len(receiver.texts()) == 1 and "cab1 (Galaga) is offline" in receiver.texts()[0]
    assert receiver.bodies[0]["content"] == receiver.bodies[0]["text"]   # Slack reads text, Discord content
    assert len(smtp.mails) == 1
    frm, to, mail = smtp.mails[0]
    assert (frm, to) == ("relay@example.com", ["ops@example.com"]) and "Subject: [Pixel Palace] cabinet cab1" in mail
    led.record_status("cab1", True, {"online": True}, seen_at=T0 + 41 * 60)
    assert [w for w, _, _ in a.check(led, now=T0 + 41 * 60)] == ["resolved"]
    assert "resolved after 30 min" in receiver.texts()[1] and "RESOLVED" in smtp.mails[1][2]
    assert a.check(led, now=T0 + 42 * 60) == [] and len(receiver.texts()) == 2
    # a new outage is a new incident
    led.record_status("cab1", False, {"online": False}, seen_at=T0 + 50 * 60)
    assert [w for w, _, _ in a.check(led, now=T0 + 61 * 60)] == ["opened"]


def test_a_restarted_relay_neither_repeats_nor_forgets(led, receiver):
    led.record_status("cab2", False, {"online": False}, seen_at=T0)
    alerts.Alerter(settings(led, receiver)).check(led, now=T0 + 3600)
    again = alerts.Alerter(settings(led, receiver))                  # a new process on the same database
    assert again.check(led, now=T0 + 3700) == []
    led.record_status("cab2", True, {"online": True}, seen_at=T0 + 3800)
    assert [w for w, _, _ in again.check(led, now=T0 + 3800)] == ["resolved"]
    assert len(receiver.texts()) == 2


def test_outside_opening_hours_an_offline_cabinet_is_no_alert(led, receiver):
    a = alerts.Alerter(settings(led, receiver, ARCADE_OPEN_HOURS="18:00-02:00"))   # T0 is 13:20 UTC
    led.record_status("cab1", False, {"online": False}, seen_at=T0 - 3600)
    assert a.check(led, now=T0) == [] and receiver.texts() == []
    assert [w for w, _, _ in a.check(led, now=T0 + 5 * 3600)] == ["opened"]        # 18:20: open


def test_stuck_credit_and_dispute(led, receiver):
    a = alerts.Alerter(settings(led, receiver))
    led.record_checkout("e1", "checkout.session.completed", "cs_test_1", "credit", cabinet_id="cab1", amount=100,
                        currency="usd", credits=1, pulses=1)
    led.record_dispute("dp_1", "needs_response", session_id="cs_test_1", amount=100, currency="usd",
                       reason="fraudulent")
    import time
    opened = a.check(led, now=time.time() + 120)         # stuck is measured from the real queued_at
    assert sorted(k for _, k, _ in opened) == ["dispute:dp_1", "stuck:cab1"]
    led.record_ack("cs_test_1", 1, "applied", ack_pulses=1, ack_last=1)
    led.record_dispute("dp_1", "won")
    assert sorted(k for w, k, _ in a.check(led, now=time.time() + 130) if w == "resolved") == ["dispute:dp_1",
                                                                                                "stuck:cab1"]


def test_an_alert_no_channel_took_is_sent_at_the_next_check(led, receiver):
    a = alerts.Alerter(settings(led, receiver))
    led.record_status("cab1", False, {"online": False}, seen_at=T0)
    receiver.status = 500
    assert a.check(led, now=T0 + 3600) == [] and led.open_incidents() == []
    receiver.status = 200
    assert [w for w, _, _ in a.check(led, now=T0 + 3630)] == ["opened"] and len(receiver.texts()) == 1


def test_broker_down_and_refused_webhooks(led, receiver):
    class D:
        connected = False
    state = {"dispatcher": D(), "webhook_refused": [T0 - i for i in range(12)]}
    a = alerts.Alerter(settings(led, receiver), state)
    first = a.check(led, now=T0)
    assert [k for _, k, _ in first] == ["webhook_refused"]           # one disconnected check is not an outage
    assert [k for _, k, _ in a.check(led, now=T0 + 30)] == ["broker"]
    D.connected = True
    assert sorted(k for _, k, _ in a.check(led, now=T0 + 400)) == ["broker", "webhook_refused"]   # both resolved


@pytest.mark.parametrize("extra, message", [
    ({"ARCADE_OPEN_HOURS": "25:00-26:00"}, "ARCADE_OPEN_HOURS"),
    ({"ARCADE_OPEN_HOURS": "nine to five"}, "ARCADE_OPEN_HOURS"),
    ({"ARCADE_SMTP_HOST": "127.0.0.1"}, "ARCADE_ALERT_TO"),
    ({"ARCADE_SMTP_HOST": "127.0.0.1", "ARCADE_ALERT_TO": "a@b", "ARCADE_SMTP_PORT": "smtp"}, "ARCADE_SMTP_PORT"),
    ({"ARCADE_OFFLINE_ALERT": "soon"}, "ARCADE_OFFLINE_ALERT"),
])
def test_bad_alert_settings_stop_the_relay_with_a_reason(led, extra, message):
    with pytest.raises(ConfigError, match=message):
        alerts.Alerter(settings(led, **extra))
