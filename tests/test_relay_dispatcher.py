"""The dispatcher against a real mosquitto, with a small paho client playing the cabinet.

The fake cabinet verifies each credit's signature and applies the cabinet rule of docs/protocol.md
(duplicate by session, stale_seq by ledger and seq, else apply and adopt), then publishes signed
acks, or holds them when a test wants to decide.
"""
import json
import secrets
import threading

import paho.mqtt.client as mqtt
import pytest

from relay import config, protocol
from relay.dispatcher import Dispatcher
from relay.ledger import open_ledger
from tools.lab.stack import wait_until


class FakeCabinet:
    def __init__(self, broker, cab, secret, auto=True, ledger="", last=0, prefix="arcade"):
        self.cab, self.secret, self.auto, self.prefix = cab, secret, auto, prefix
        self.ledger, self.last, self.recent, self.pulses = ledger, last, [], 0
        self.received = []          # (raw payload, parsed) for every credit delivery, copies included
        self.outstanding = set()    # seqs received and not yet acked
        self.max_outstanding = 0
        self.cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cab)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe("%s/%s/credit" % (prefix, cab), qos=1)
        self.client.loop_start()
        assert subscribed.wait(10), "fake cabinet could not subscribe"

    def _on_message(self, client, userdata, msg):
        credit = json.loads(msg.payload)
        with self.cond:
            self.received.append((msg.payload, credit))
            self.outstanding.add(credit["seq"])
            self.max_outstanding = max(self.max_outstanding, len(self.outstanding))
            self.cond.notify_all()
        if self.auto:
            self.answer(credit)

    def decide(self, credit):
        if not protocol.verify_credit(credit, self.secret) or credit["cab"] != self.cab:
            return "rejected", "bad_signature", 0
        if credit["session"] in self.recent:
            return "duplicate", "", 0
        if credit["ledger"] == self.ledger and credit["seq"] <= self.last:
            return "rejected", "stale_seq", 0
        self.ledger, self.last = credit["ledger"], credit["seq"]
        self.recent.append(credit["session"])
        self.pulses += credit["pulses"]
        return "applied", "", credit["pulses"]

    def answer(self, credit):
        with self.cond:
            result, reason, pulses = self.decide(credit)
            self.outstanding.discard(credit["seq"])
        self.ack(credit["ledger"], credit["seq"], credit["session"], result, reason, pulses, self.last)

    def ack(self, ledger, seq, session, result, reason, pulses, last, secret=None, cab=None):
        body = protocol.build_ack(cab or self.cab, ledger, seq, session, result, reason, pulses, last,
                                  secret or self.secret)
        self.client.publish("%s/%s/ack" % (self.prefix, self.cab), body, qos=1)

    def status(self, online=True, n=None, epoch="0123456789abcdef", secret=None, **extra):
        """A signed status, numbered above the last one unless `n` says otherwise; returns its bytes."""
        self.n = n if n is not None else getattr(self, "n", 0) + 1
        fields = dict(fw="test", ledger=self.ledger, last=self.last) if online else {}
        fields.update(extra)
        body = protocol.build_status(secret or self.secret, self.cab, online, epoch, 1, self.n, **fields)
        self.client.publish("%s/%s/status" % (self.prefix, self.cab), body, qos=1, retain=True)
        return body

    def wait(self, predicate, timeout=15, what="credits"):
        with self.cond:
            assert self.cond.wait_for(lambda: predicate(self.received), timeout), \
                "%s: no %s; got %r" % (self.cab, what, [c for _, c in self.received])
            return list(self.received)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def world(tmp_path, broker):
    db = str(tmp_path / "arcade.db")
    ledger = open_ledger(db)
    secret = ledger.add_cabinet("cab1", price_cents=100, coins_per_credit=2)
    started = []

    def start(**overrides):
        settings = config.check(dict({"ARCADE_DB": db, "MQTT_URL": broker.url, "STRIPE_WEBHOOK_SECRET": "x",
                                      "ARCADE_ACK_TIMEOUT": 30, "ARCADE_RESCAN": 30}, **overrides))
        d = Dispatcher(settings)
        assert d.start()
        started.append(d)
        wait_until(lambda: d.connected, 10, what="dispatcher connected")
        return d

    cabinets = []

    def cabinet(**kw):
        c = FakeCabinet(broker, "cab1", secret, **kw)
        cabinets.append(c)
        return c

    yield {"ledger": ledger, "secret": secret, "start": start, "cabinet": cabinet, "db": db, "broker": broker}
    for d in started:
        d.stop()
    for c in cabinets:
        c.close()
    ledger.close()


def pay(ledger, cab="cab1", credits=1, coins=2):
    session = "cs_test_" + secrets.token_hex(8)
    assert ledger.record_checkout("evt_" + secrets.token_hex(8), "checkout.session.completed", session, "credit",
                                  cabinet_id=cab, amount=100 * credits, currency="usd", credits=credits,
                                  pulses=credits * coins) == "queued"
    return session


def state(ledger, session):
    return ledger.get_payment(session)["state"]


def test_credit_is_published_at_once_on_wake_and_acked(world):
    cab = world["cabinet"]()
    d = world["start"](ARCADE_RESCAN=300)   # no rescan during the test: only the wake can publish
    ledger = world["ledger"]
    session = pay(ledger, credits=3)
    d.wake()
    raw, credit = cab.wait(lambda r: r)[0]
    assert protocol.verify_credit(credit, world["secret"])
    assert (credit["cab"], credit["ledger"], credit["seq"], credit["credits"], credit["pulses"], credit["session"]) \
        == ("cab1", ledger.ledger_id, 1, 3, 6, session)
    wait_until(lambda: state(ledger, session) == "applied", 10, what="applied")
    p = ledger.get_payment(session)
    assert (p["ack_pulses"], p["ack_last"], p["attempts"]) == (6, 1, 1)
    assert p["sent_at"] and p["done_at"] and p["sent_at"] <= p["done_at"]
    assert cab.pulses == 6


def test_several_brokers_over_mqtt_3_1_1_the_next_one_after_a_failed_connect(world):
    """MQTT_URL with a dead broker first: the dispatcher moves on to the next and delivers over MQTT
    3.1.1 (ARCADE_MQTT_VERSION, for brokers without MQTT 5 such as NATS) with a persistent session."""
    from tools.lab.broker import free_port
    cab = world["cabinet"]()
    dead = "mqtt://127.0.0.1:%d" % free_port()
    d = world["start"](MQTT_URL="%s,%s" % (dead, world["broker"].url), ARCADE_MQTT_VERSION="3.1.1",
                       ARCADE_RESCAN=300)
    assert d._client.protocol == mqtt.MQTTv311 and d.broker == "127.0.0.1:%d" % world["broker"].port
    ledger = world["ledger"]
    session = pay(ledger, credits=1)
    d.wake()
    raw, credit = cab.wait(lambda r: r)[0]
    assert protocol.verify_credit(credit, world["secret"]) and credit["session"] == session
    wait_until(lambda: state(ledger, session) == "applied", 10, what="applied")


def test_one_credit_in_flight_per_cabinet(world):
    ledger = world["ledger"]
    cab = world["cabinet"](auto=False)
    sessions = [pay(ledger) for _ in range(3)]
    world["start"]()
    for n, session in enumerate(sessions, 1):
        received = cab.wait(lambda r: len(r) >= n)
        # The broker acknowledged this one; anything else the relay had published is on its way too.
        wait_until(lambda: state(ledger, session) == "sent", 10, what="sent")
        assert [c["seq"] for _, c in received] == list(range(1, n + 1))
        assert [state(ledger, s) for s in sessions[n:]] == ["queued"] * (3 - n)
        cab.answer(received[-1][1])
        wait_until(lambda: state(ledger, session) == "applied", 10, what="applied")
    assert cab.max_outstanding == 1
    assert cab.pulses == 6


def test_unacknowledged_credit_is_resent_with_the_same_bytes_after_the_timeout(world):
    ledger = world["ledger"]
    cab = world["cabinet"](auto=False)
    session = pay(ledger)
    world["start"](ARCADE_ACK_TIMEOUT=0.2)
    received = cab.wait(lambda r: len(r) >= 3, what="three copies")
    assert len({raw for raw, _ in received}) == 1, "a redelivery changed the message"
    cab.answer(received[0][1])
    wait_until(lambda: state(ledger, session) == "applied", 10, what="applied")
    assert ledger.get_payment(session)["attempts"] >= 3


def test_credit_is_resent_at_once_when_the_cabinet_comes_online(world):
    ledger = world["ledger"]
    cab = world["cabinet"](auto=False)
    d = world["start"]()                 # ack timeout 30 s: only the status can trigger the resend
    cab.status(online=True)
    wait_until(lambda: ledger.cabinet_epoch("cab1") == "0123456789abcdef", 10, what="the epoch announced")
    session = pay(ledger)
    d.wake()
    first = cab.wait(lambda r: len(r) == 1)[0][1]
    assert first["epoch"] == "0123456789abcdef", "signed for the epoch the status announced"
    cab.status(online=True)
    received = cab.wait(lambda r: len(r) >= 2, what="a resend after the online status")
    assert received[0][0] == received[1][0]
    cab.answer(received[0][1])
    wait_until(lambda: state(ledger, session) == "applied", 10, what="applied")
    c = ledger.get_cabinet("cab1")
    assert c["online"] and c["last_seen"] and c["status"]["fw"] == "test"
    cab.status(online=False)
    wait_until(lambda: not ledger.get_cabinet("cab1")["online"], 10, what="offline recorded")


@pytest.mark.parametrize("forgery", [
    lambda cab, c, lid: cab.ack(lid, c["seq"], c["session"], "duplicate", "", 0, c["seq"], secret="0" * 64),
    lambda cab, c, lid: cab.ack(lid, c["seq"] + 1, c["session"], "duplicate", "", 0, c["seq"] + 1),
    lambda cab, c, lid: cab.ack("f" * 32, c["seq"], c["session"], "duplicate", "", 0, c["seq"]),
    lambda cab, c, lid: cab.ack(lid, c["seq"], c["session"], "duplicate", "", 0, c["seq"], cab="cab2"),
    lambda cab, c, lid: cab.ack(lid, c["seq"], c["session"], "applied", "", 1, c["seq"]),
    # an old ack for the same seq of this ledger (a database restored from a backup reuses seqs)
    lambda cab, c, lid: cab.ack(lid, c["seq"], "cs_test_paid_before_the_restore", "applied", "", c["pulses"],
                                c["seq"]),
    lambda cab, c, lid: cab.client.publish("arcade/cab1/ack", b"{not json", qos=1),
    # an old firmware's signing oracle: a forged credit with this seq and session, acked and replayed
    lambda cab, c, lid: cab.ack(lid, c["seq"], c["session"], "rejected", "bad_signature", 0, 0),
    lambda cab, c, lid: cab.ack(lid, c["seq"], c["session"], "rejected", "malformed", 0, 0),
], ids=["wrong secret", "wrong seq", "other ledger", "cab differs from topic", "pulses differ", "other session",
        "garbage", "oracle bad_signature", "oracle malformed"])
def test_acks_that_are_not_for_the_credit_in_flight_are_ignored(world, forgery):
    ledger = world["ledger"]
    cab = world["cabinet"](auto=False)
    session = pay(ledger)
    world["start"]()
    credit = cab.wait(lambda r: r)[0][1]
    forgery(cab, credit, ledger.ledger_id)
    # Same client, same QoS: the broker delivers the genuine ack after the forgery.
    cab.answer(credit)
    wait_until(lambda: state(ledger, session) not in ("sent", "queued"), 10, what="final")   # one read: no race
    assert state(ledger, session) == "applied"


def test_stale_seq_is_resequenced_past_the_cabinets_last(world):
    ledger = world["ledger"]
    # A cabinet that applied up to seq 50 of this very ledger: the database came from an old backup.
    cab = world["cabinet"](ledger=ledger.ledger_id, last=50)
    first, second = pay(ledger), pay(ledger)
    world["start"]()
    wait_until(lambda: state(ledger, second) == "applied", 15, what="second applied")
    assert (ledger.get_payment(first)["seq"], ledger.get_payment(second)["seq"]) == (51, 52)
    assert state(ledger, first) == "applied"
    assert ledger.get_cabinet("cab1")["next_seq"] == 53
    applied = [c["session"] for _, c in cab.received if c["seq"] > 50]
    assert applied == [first, second], "order changed or a credit was sent twice"
    assert cab.pulses == 4


def test_other_rejections_are_final_and_the_next_credit_follows(world):
    ledger = world["ledger"]
    cab = world["cabinet"](auto=False)
    bad, good = pay(ledger), pay(ledger)
    world["start"]()
    credit = cab.wait(lambda r: r)[0][1]
    cab.ack(credit["ledger"], credit["seq"], credit["session"], "rejected", "bad_pulses", 0, 0)
    second = cab.wait(lambda r: len(r) >= 2)[1][1]
    assert second["session"] == good
    p = ledger.get_payment(bad)
    assert (p["state"], p["reason"]) == ("rejected", "bad_pulses")


def test_restart_resumes_from_the_database(world):
    """Killed between commit and publish (queued) and between publish and ack (sent): both delivered once."""
    ledger = world["ledger"]
    cab = world["cabinet"](auto=False)
    first = pay(ledger)
    d = world["start"]()
    credit = cab.wait(lambda r: r)[0][1]
    wait_until(lambda: state(ledger, first) == "sent", 10, what="sent")
    cab.answer(credit)                    # the cabinet applies and acks...
    d.stop()                              # ...but the relay is gone before it reads the ack
    second = pay(ledger)                  # committed, never published by the old process
    cab.auto = True
    world["start"]()
    wait_until(lambda: state(ledger, second) == "applied", 15, what="second applied after restart")
    assert state(ledger, first) in ("applied", "duplicate")
    assert cab.pulses == 4, "a credit was pulsed twice or not at all"


def test_one_dispatcher_per_database(world):
    world["start"]()
    other = Dispatcher(config.check({"ARCADE_DB": world["db"], "MQTT_URL": world["broker"].url,
                                     "STRIPE_WEBHOOK_SECRET": "x"}))
    assert other.start() is False
    other.stop()


def test_stuck_delivery_is_logged(world, caplog):
    ledger = world["ledger"]
    world["cabinet"](auto=False)
    session = pay(ledger)
    with caplog.at_level("WARNING", logger="arcade.dispatcher"):
        world["start"](ARCADE_STUCK_AFTER=0.1, ARCADE_RESCAN=0.05)
        wait_until(lambda: any("stuck" in r.getMessage() for r in caplog.records), 10, what="stuck warning")
    assert any(session in r.getMessage() for r in caplog.records if "stuck" in r.getMessage())
    assert [p["session_id"] for p in ledger.list_payments(stuck=True, stuck_after=0)] == [session]


class RecordingClient:
    """Stands in for paho's client when the delivery logic is driven step by step with a fake clock."""

    class Info:
        def __init__(self, mid):
            self.mid = mid

    def __init__(self):
        self.published = []

    def publish(self, topic, payload, qos):
        self.published.append((topic, payload, qos))
        return self.Info(len(self.published))


def test_redelivery_backoff_doubles_up_to_the_cap(world):
    ledger = world["ledger"]
    now = [1000.0]
    d = Dispatcher(config.check({"ARCADE_DB": world["db"], "STRIPE_WEBHOOK_SECRET": "x", "ARCADE_ACK_TIMEOUT": 10,
                                 "ARCADE_ACK_TIMEOUT_MAX": 40, "ARCADE_RESCAN": 5}), clock=lambda: now[0])
    d._client, d.ledger_id = RecordingClient(), ledger.ledger_id
    d._inbox.append(("connected", False))
    session = pay(ledger)
    sends = []
    for _ in range(200):                     # 200 s of fake time in 1 s steps
        d.step(ledger)
        if len(d._client.published) > len(sends):
            sends.append(now[0])
        now[0] += 1.0
    assert [b - a for a, b in zip(sends, sends[1:])][:5] == [10, 20, 40, 40, 40], sends
    assert {p for _, p, _ in d._client.published} == {d._flights["cab1"].payload}
    assert d._client.published[0][0] == "arcade/cab1/credit" and d._client.published[0][2] == 1
    d._inbox.append(("puback", 1))
    d.step(ledger)
    assert state(ledger, session) == "sent"


class Attacker:
    """Any broker user (this broker has no ACL: the signatures are what is tested here)."""

    def __init__(self, broker):
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="attacker-" + secrets.token_hex(4))
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def publish(self, topic, payload, retain=True):
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def _selling(ledger):
    from relay.checkout import readiness
    return readiness(ledger.get_cabinet("cab1"))[0]


def test_forged_stale_and_oversized_statuses_change_nothing_and_cause_no_resends(world, monkeypatch):
    from relay.ledger import Ledger
    stored = []                     # every status the relay stores, in order (its view of the cabinet)
    real = Ledger._update_status    # what record_status and a status's set_cabinet_epoch write
    monkeypatch.setattr(Ledger, "_update_status", staticmethod(
        lambda cur, id, online, status=None, seen_at=None, clock_set=None: (
            stored.append((online, dict(status or {}))), real(cur, id, online, status, seen_at, clock_set))[1]))
    ledger = world["ledger"]
    cab = world["cabinet"](auto=False)
    d = world["start"]()
    online = cab.status(online=True, total=1)
    wait_until(lambda: _selling(ledger), 10, what="selling on the cabinet's own status")
    cab.status(online=False)
    wait_until(lambda: not ledger.get_cabinet("cab1")["online"], 10, what="offline recorded")
    session = pay(ledger)
    d.wake()
    cab.wait(lambda r: len(r) == 1)
    evil = Attacker(world["broker"])
    try:
        topic = "arcade/cab1/status"
        forged = [
            json.dumps({"t": "status", "cab": "cab1", "online": True, "fw": "x"}).encode(),        # unsigned
            protocol.build_status("f" * 64, "cab1", True, "0123456789abcdef", 9, 9, total=2),  # wrong secret
            protocol.build_status(world["secret"], "cab2", True, "0123456789abcdef", 9, 9),    # another cabinet's
            b'{"t":"status","pad":"' + b"x" * 100_000 + b'"}',                                   # oversized
        ] + [online] * 30                               # the cabinet's own "online", replayed: stale
        before = len(stored)
        for body in forged:
            evil.publish(topic, body)
        # the cabinet's next genuine status: once the relay has it, it has handled everything before it
        cab.status(online=False, n=5, inhibited=False)
        wait_until(lambda: ledger.get_cabinet("cab1")["status"]["n"] == 5, 10, what="the genuine status")
        assert [(on, st["n"]) for on, st in stored[before:]] == [(False, 5)], "a forged or stale status was stored"
        c = ledger.get_cabinet("cab1")
        assert not _selling(ledger) and not c["online"]
        assert set(c["status"]) <= set(protocol.STATUS_FIELDS) and c["status"].get("total") is None
        assert len(cab.received) == 1, "a replayed online status made the relay publish the credit again"
        # the cabinet's own fresh "online" statuses in a burst: one resend at most (per ack timeout)
        for _ in range(10):
            cab.status(online=True)
        wait_until(lambda: ledger.get_cabinet("cab1")["status"]["n"] == 15, 10, what="the burst handled")
        assert _selling(ledger)
        assert len(cab.received) == 2, [c["seq"] for _, c in cab.received]
        cab.answer(cab.received[-1][1])
        wait_until(lambda: state(ledger, session) == "applied", 10, what="applied")
    finally:
        evil.close()


def test_a_stale_status_can_not_keep_a_silent_cabinet_on_sale(world):
    from relay.checkout import STATUS_FRESH_SECONDS, readiness
    ledger = world["ledger"]
    ledger.record_status("cab1", True, {"online": True}, seen_at=1000.0)
    assert readiness(ledger.get_cabinet("cab1"), now=1000.0 + STATUS_FRESH_SECONDS)[0]
    assert readiness(ledger.get_cabinet("cab1"), now=1001.0 + STATUS_FRESH_SECONDS) == (False, "offline")


class Retained:
    """What the broker holds retained on one topic, read by subscribing afresh."""

    @staticmethod
    def get(broker, topic, timeout=3.0):
        got = []
        done = threading.Event()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="peek-" + secrets.token_hex(4))
        c.on_message = lambda cl, u, m: (got.append(bytes(m.payload)), done.set())
        c.connect("127.0.0.1", broker.port)
        c.subscribe(topic, 1)
        c.loop_start()
        done.wait(timeout)          # bounded: no retained message means no callback at all
        c.loop_stop()
        c.disconnect()
        return got[0] if got else None


def test_the_relay_publishes_again_a_retained_config_the_broker_lost(world):
    ledger = world["ledger"]
    ledger.set_cabinet_config("cab1", pulse_ms=120)
    ver = ledger.cabinet_config("cab1")["ver"]
    d = world["start"]()
    wait_until(lambda: ledger.cabinet_config("cab1")["published_ver"] == ver, 10, what="config published")
    topic = "arcade/cab1/config"
    assert json.loads(Retained.get(world["broker"], topic))["ver"] == ver
    # deleted by a broker user (an empty retained message): published again at once
    evil = Attacker(world["broker"])
    try:
        evil.publish(topic, b"")
        wait_until(lambda: (Retained.get(world["broker"], topic) or b"{}").find(b'"ver":%d' % ver) > 0, 15,
                   what="the config back on the broker")
    finally:
        evil.close()
    # the broker loses everything (no persistence): the relay compares on reconnecting and publishes again
    d.stop()
    world["broker"].restart(persistence=False, wipe=True)
    assert Retained.get(world["broker"], topic, timeout=1.0) is None
    world["start"]()
    wait_until(lambda: Retained.get(world["broker"], topic, timeout=1.0), 20, what="config republished")
    msg = json.loads(Retained.get(world["broker"], topic))
    assert msg["ver"] == ver and protocol.verify_config(msg, world["secret"])


# -- a webhook's credit published from its own thread (record_checkout's publish_first) -----------------

def _session_up(d):
    return d.first_publish("cab1") is not None


def test_a_webhook_credit_for_an_idle_cabinet_is_marked_in_its_transaction_and_published_from_its_thread(world):
    from relay import webhook
    ledger = world["ledger"]
    cab = world["cabinet"](auto=False)
    d = world["start"]()
    wait_until(lambda: _session_up(d), 10, what="the dispatcher's session up")
    session = {"id": "cs_test_" + secrets.token_hex(8), "payment_status": "paid", "amount_total": 100,
               "currency": "usd", "metadata": {"cabinet_id": "cab1"}}
    result, verdict = webhook.fulfil(ledger, "evt_" + secrets.token_hex(8), "checkout.session.completed", session,
                                     dispatcher=d)
    assert result == "queued" and verdict.get("published") is True
    assert d.in_flight("cab1"), "in flight when fulfil returns: no wake-up of the worker was needed"
    row = ledger.get_payment(session["id"])
    assert row["published_at"] is not None, "marked published in the webhook's own transaction"
    got = cab.wait(lambda r: len(r) == 1)
    assert got[0][1]["session"] == session["id"] and protocol.verify_credit(got[0][1], world["secret"])
    # a second payment while the first is in flight: not marked, not published; the worker sends it after the ack
    second = dict(session, id="cs_test_" + secrets.token_hex(8))
    result, verdict = webhook.fulfil(ledger, "evt_" + secrets.token_hex(8), "checkout.session.completed", second,
                                     dispatcher=d)
    assert result == "queued" and not verdict.get("published")
    assert ledger.get_payment(second["id"])["published_at"] is None
    assert len(cab.received) == 1
    cab.answer(got[0][1])
    wait_until(lambda: state(ledger, session["id"]) == "applied", 10, what="the first acked")
    got = cab.wait(lambda r: len(r) == 2)
    assert got[1][1]["session"] == second["id"] and got[1][1]["seq"] == got[0][1]["seq"] + 1
    cab.answer(got[1][1])
    wait_until(lambda: state(ledger, second["id"]) == "applied", 10, what="the second acked")
    assert cab.pulses == 4 and cab.max_outstanding == 1


def test_a_credit_marked_by_a_webhook_that_died_before_publishing_is_published_by_the_next_dispatcher(world):
    """Killed between the commit (credit marked published, with its exp) and the publish: the mark is
    durable, the credit still queued; the dispatcher that starts next sends it with the exp recorded."""
    ledger = world["ledger"]
    ledger.record_status("cab1", True, clock_set=True)
    first = {"expiry": lambda queued_at, clock_set: int(queued_at) + 900 if clock_set else 0}
    session = "cs_test_" + secrets.token_hex(8)
    assert ledger.record_checkout("evt_" + secrets.token_hex(8), "checkout.session.completed", session, "credit",
                                  cabinet_id="cab1", amount=100, currency="usd", credits=1, pulses=2,
                                  publish_first=first) == "queued"
    row = ledger.get_payment(session)
    exp = ledger._rows("SELECT exp FROM payments WHERE session_id = ?", (session,))[0]["exp"]
    assert first["row"]["exp"] == exp == int(row["queued_at"]) + 900 and row["published_at"] is not None
    assert not ledger.auto_refund_due(row["queued_at"] + 901, 900, 300), \
        "a credit that may have been published is not refunded as never published"
    cab = world["cabinet"]()            # the process died here: nobody published it
    world["start"]()
    got = cab.wait(lambda r: len(r) == 1)
    assert got[0][1]["session"] == session and got[0][1]["exp"] == exp
    wait_until(lambda: state(ledger, session) == "applied", 10, what="applied")


def test_postgresql_a_credit_another_relay_committed_reaches_the_lease_holder_at_once(tmp_path, broker, pg_url):
    """Two relays' dispatchers on one PostgreSQL ledger, a rescan of 10 minutes, lease renewals 30 s
    apart and no screen refresh (the holder's worker has no timed step for 30 s): a payment recorded by
    the relay that does not hold the cabinet's lease (nginx sent the webhook there) is published by the
    holder when it commits (LISTEN/NOTIFY), not at the holder's next rescan."""
    led = open_ledger(pg_url)
    secret = led.add_cabinet("cab1", price_cents=100, coins_per_credit=2)
    cab = FakeCabinet(broker, "cab1", secret)
    started = []
    try:
        for name in ("a", "b"):
            d = Dispatcher(config.check({"ARCADE_DB": pg_url, "MQTT_URL": broker.url, "STRIPE_WEBHOOK_SECRET": "x",
                                         "ARCADE_ACK_TIMEOUT": 30, "ARCADE_RESCAN": 600, "ARCADE_RELAY_NAME": name,
                                         "ARCADE_LEASE_SECONDS": 90}))    # renewals (a step each) 30 s apart
            d.screen_check = 3600       # no timed step for the cabinets' screens either
            assert d.start()
            started.append(d)
            wait_until(lambda: d.connected, 10, what="dispatcher %s connected" % name)
        first = pay(led)
        started[0].wake()               # a's webhook: a takes the lease and publishes
        wait_until(lambda: state(led, first) == "applied", 10, what="the first credit applied")
        holder = [d for d in started if d.leases.held()]
        assert len(holder) == 1
        # past its one timed step after connecting (the retained configs' check): idle until a renewal
        wait_until(lambda: holder[0]._cfg_check_at is None, 10, what="the holder's config check done")
        second = pay(led)               # recorded by the other relay: nothing wakes the holder but the notice
        wait_until(lambda: state(led, second) == "applied", 10, what="the second credit, without a rescan")
        assert cab.pulses == 4 and [c["session"] for _, c in cab.received] == [first, second]
        # the server ends the listening sessions (a restart, a network cut): each listener reconnects
        # and, reconnected, looks at the ledger once, so a credit committed meanwhile is not left waiting
        killed = led._rows("SELECT COUNT(pg_terminate_backend(pid)) AS n FROM pg_stat_activity "
                           "WHERE query = 'LISTEN arcade_credits'")[0]["n"]
        assert killed == 2
        third = pay(led)
        wait_until(lambda: state(led, third) == "applied", 10, what="the third credit after the listeners' loss")
        wait_until(lambda: len(led._rows("SELECT pid FROM pg_stat_activity WHERE query = 'LISTEN arcade_credits'"))
                   == 2, 10, what="both listening again")
    finally:
        for d in started:
            d.stop()
        cab.close()
        led.close()
