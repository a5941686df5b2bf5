"""End to end through real processes: Stripe-signed webhook -> relay -> mosquitto -> firmware -> coin line -> ack."""
import json
import secrets
import threading

import paho.mqtt.client as mqtt
import pytest

from relay import protocol
from relay.ledger import open_ledger
from tools.lab import stack
from tools.lab import trigger

WEBHOOK_SECRET = "whsec_test_" + "e2e"


@pytest.fixture
def world(request, tmp_path, broker):
    # the first test also runs with the relay on PostgreSQL (a relay process on a postgresql:// ARCADE_DB)
    db = request.getfixturevalue("pg_url") if getattr(request, "param", "sqlite") == "postgresql" \
        else str(tmp_path / "arcade.db")
    ledger = open_ledger(db)
    cabs = {
        "cab-a": ledger.add_cabinet("cab-a", name="Galaga", currency="usd", price_cents=100,
                                    bundles=[(3, 250)], coins_per_credit=2),
        "cab-b": ledger.add_cabinet("cab-b", name="Pinball", currency="usd", price_cents=50,
                                    bundles=[], coins_per_credit=1),
    }
    relay = stack.Relay(tmp_path, db, broker.url, WEBHOOK_SECRET).start()
    cabinets = {cid: stack.Cabinet(tmp_path, cid, sec, broker.url).start() for cid, sec in cabs.items()}
    try:
        for c in cabinets.values():
            c.wait_connected()
        stack.wait_until(lambda: relay.health().get("broker") == "ok", 20, what="relay on the broker")
        yield {"db": db, "ledger": ledger, "relay": relay, "cabinets": cabinets, "secrets": cabs, "broker": broker}
    finally:
        for c in cabinets.values():
            c.stop()
        relay.stop()
        ledger.close()


class AckListener:
    """A paho client on the broker that collects every ack the cabinets publish."""

    def __init__(self, broker, prefix="arcade"):
        self.acks = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-ack-" + secrets.token_hex(4))
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(prefix + "/+/ack", qos=1)
        self.client.loop_start()
        assert subscribed.wait(10), "ack listener could not subscribe"

    def _on_message(self, client, userdata, msg):
        with self.cond:
            self.acks.append((msg.topic, json.loads(msg.payload)))
            self.cond.notify_all()

    def wait(self, predicate, timeout=20):
        with self.cond:
            assert self.cond.wait_for(lambda: predicate(self.acks), timeout), "acks seen: %r" % self.acks
            return [a for a in self.acks if predicate([a])]

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def final_state(ledger, session_id, timeout=30):
    return stack.wait_until(
        lambda: (ledger.get_payment(session_id) or {}).get("state") in ("applied", "duplicate", "rejected")
        and ledger.get_payment(session_id), timeout, what="final state of %s" % session_id)


@pytest.mark.parametrize("world", ["sqlite", "postgresql"], indirect=True)
def test_paid_checkout_pulses_the_coin_line_and_is_acked(world):
    acks = AckListener(world["broker"])
    try:
        relay, cab = world["relay"], world["cabinets"]["cab-a"]
        session_id, _, statuses = trigger.send(relay.webhook_url, WEBHOOK_SECRET, "cab-a", 250)
        assert statuses[0][0] == 200
        pulses = cab.wait_pulses(6)
        payment = final_state(world["ledger"], session_id)
        assert payment["state"] == "applied"
        assert (payment["credits"], payment["pulses"]) == (3, 6)
        # Exactly 6 pulses, none shorter than the board profile's 100 ms (exact widths are asserted
        # with a fake clock in tests/fw; here the clock is real, so only the lower bound is exact).
        assert len(cab.pulses()) == 6
        assert [p["n"] for p in pulses] == [1, 2, 3, 4, 5, 6]
        assert all(p["width_ms"] >= 100 for p in pulses)
        got = acks.wait(lambda xs: any(a["seq"] == payment["seq"] for _, a in xs))
        topic, ack = got[0]
        assert topic == "arcade/cab-a/ack"
        assert ack["result"] == "applied" and ack["pulses"] == 6
        assert protocol.verify_ack(ack, world["secrets"]["cab-a"])
        assert not protocol.verify_ack(ack, world["secrets"]["cab-b"])
        # The other cabinet saw nothing.
        assert world["cabinets"]["cab-b"].pulses() == []
    finally:
        acks.close()


def test_two_cabinets_at_once_get_only_their_own_credits(world):
    relay = world["relay"]
    sa, _, st_a = trigger.send(relay.webhook_url, WEBHOOK_SECRET, "cab-a", 100)
    sb, _, st_b = trigger.send(relay.webhook_url, WEBHOOK_SECRET, "cab-b", 50)
    sb2, _, st_b2 = trigger.send(relay.webhook_url, WEBHOOK_SECRET, "cab-b", 50)
    assert [s[0][0] for s in (st_a, st_b, st_b2)] == [200, 200, 200]
    for sid in (sa, sb, sb2):
        assert final_state(world["ledger"], sid)["state"] == "applied"
    a, b = world["cabinets"]["cab-a"], world["cabinets"]["cab-b"]
    a.wait_pulses(2)
    b.wait_pulses(2)
    assert len(a.pulses()) == 2 and len(b.pulses()) == 2
    assert {p["seq"] for p in b.pulses()} == {world["ledger"].get_payment(sb)["seq"],
                                              world["ledger"].get_payment(sb2)["seq"]}


def test_same_event_resent_pulses_once(world):
    relay, cab = world["relay"], world["cabinets"]["cab-b"]
    session_id, _, statuses = trigger.send(relay.webhook_url, WEBHOOK_SECRET, "cab-b", 50, repeat=3)
    assert [s for s, _ in statuses] == [200, 200, 200]
    assert final_state(world["ledger"], session_id)["state"] == "applied"
    # A second, later payment proves the cabinet is past the first one: it shows exactly 2 pulses in all.
    s2, _, _ = trigger.send(relay.webhook_url, WEBHOOK_SECRET, "cab-b", 50)
    assert final_state(world["ledger"], s2)["state"] == "applied"
    cab.wait_pulses(2)
    assert len(cab.pulses()) == 2


def test_forged_credit_on_the_broker_is_refused_and_nothing_pulses(world):
    acks = AckListener(world["broker"])
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="forger")
    pub.connect("127.0.0.1", world["broker"].port)
    pub.loop_start()
    try:
        ledger_id = world["ledger"].ledger_id
        forged = protocol.build_credit("cab-b", ledger_id, 99, 5, 5, "cs_test_forged", "not-the-secret")
        pub.publish("arcade/cab-b/credit", forged, qos=1).wait_for_publish(10)
        got = acks.wait(lambda xs: any(a["result"] == "rejected" for _, a in xs))
        assert got[0][1]["reason"] == "bad_signature"
        assert world["cabinets"]["cab-b"].pulses() == []
        # A genuine payment afterwards still goes through: the forgery did not consume seq 99.
        sid, _, _ = trigger.send(world["relay"].webhook_url, WEBHOOK_SECRET, "cab-b", 50)
        assert final_state(world["ledger"], sid)["state"] == "applied"
        world["cabinets"]["cab-b"].wait_pulses(1)
        assert len(world["cabinets"]["cab-b"].pulses()) == 1
    finally:
        pub.loop_stop()
        pub.disconnect()
        acks.close()
