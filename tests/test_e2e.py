"""End to end through real processes: Stripe-signed webhook -> relay -> mosquitto -> firmware -> coin line -> ack."""
import json
import secrets
import shutil
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


def test_signing_oracle_replay_cannot_mark_a_real_credit_rejected(world, tmp_path):
    """The attack of issue 9: a player who knows their Checkout Session id forges a credit with it
    before paying, keeps the cabinet's signed `rejected` ack and replays it when the real credit goes
    out. The cabinet signs no field it has not verified, and the relay takes as final only a
    verified ack naming the credit in flight: 0 rejected, the real credit ends applied."""
    relay, ledger = world["relay"], world["ledger"]
    cab = world["cabinets"]["cab-b"]
    acks = AckListener(world["broker"])
    attacker = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="attacker")
    attacker.connect("127.0.0.1", world["broker"].port)
    attacker.loop_start()
    try:
        session = "cs_test_oracle_" + secrets.token_hex(6)
        next_seq = ledger.get_cabinet("cab-b")["next_seq"]     # predictable: the next payment's seq
        forged = protocol.build_credit("cab-b", ledger.ledger_id, next_seq, 1, 1, session, "f" * 64)
        attacker.publish("arcade/cab-b/credit", forged, qos=1).wait_for_publish(10)
        captured = acks.wait(lambda xs: any(a["reason"] == "bad_signature" for _, a in xs))[0][1]
        assert protocol.verify_ack(captured, world["secrets"]["cab-b"]), "a signed ack, as the attacker keeps"
        assert (captured["ledger"], captured["seq"], captured["session"]) == ("", 0, ""), \
            "the cabinet signed fields it had not verified"
        # The real credit goes out while the cabinet is away, so the replay reaches the relay first.
        cab.stop()
        sid, _, statuses = trigger.send(relay.webhook_url, WEBHOOK_SECRET, "cab-b", 50, session_id=session)
        assert sid == session and statuses[0][0] == 200
        stack.wait_until(lambda: ledger.get_payment(session)["state"] == "sent", 20, what="credit sent")
        attacker.publish("arcade/cab-b/ack", json.dumps(captured), qos=1).wait_for_publish(10)
        stack.wait_until(lambda: "ignored ack from cab-b for seq 0" in (tmp_path / "relay.log").read_text(), 20,
                         what="the relay to see the replayed ack")
        assert ledger.get_payment(session)["state"] == "sent"
        back = stack.Cabinet(tmp_path, "cab-b", world["secrets"]["cab-b"], world["broker"].url,
                             state_dir=cab.state_dir).start()
        world["cabinets"]["cab-b"] = back
        payment = final_state(ledger, session)
        assert payment["state"] == "applied"
        back.wait_pulses(1)
        assert len(back.pulses()) == 1
        assert not [p for p in ledger.list_payments() if p["state"] == "rejected"]
    finally:
        attacker.loop_stop()
        attacker.disconnect()
        acks.close()


class Recorder:
    """A paho client recording every payload on one topic (what someone on the network captures)."""

    def __init__(self, broker, topic):
        self.payloads = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-rec-" + secrets.token_hex(4))
        self.client.on_message = lambda c, u, m: self.payloads.append(bytes(m.payload))
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        assert subscribed.wait(10), "recorder could not subscribe"

    def publish(self, topic, payload):
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def _corrupt(state):
    (state / "state.json").write_text('{"v": 1, "ledger": "')


def test_captured_credits_never_replay_after_flash_loss(world, tmp_path):
    """Issue 9, attack 4: every credit captured on the broker, replayed after (a) state.json deleted,
    (b) corrupted, (c) the flash erased and the board re-provisioned, (d) the board swapped for a new
    one: 0 pulses each time (a fresh journal draws a new epoch; provisioning makes a new secret)."""
    ledger, relay, broker = world["ledger"], world["relay"], world["broker"]
    rec = Recorder(broker, "arcade/cab-b/credit")
    cab = world["cabinets"]["cab-b"]
    try:
        for _ in range(3):
            sid, _, _ = trigger.send(relay.webhook_url, WEBHOOK_SECRET, "cab-b", 50)
            assert final_state(ledger, sid)["state"] == "applied"
        cab.wait_pulses(3)
        captured = list(dict.fromkeys(rec.payloads))
        assert len(captured) == 3 and all(json.loads(c)["epoch"] == cab.epoch() for c in captured)
        secret, state = world["secrets"]["cab-b"], cab.state_dir
        scenarios = [("state.json deleted", lambda d: (d / "state.json").unlink(), False, False),
                     ("state.json corrupted", _corrupt, False, False),
                     ("erased and re-provisioned", lambda d: shutil.rmtree(d), True, False),
                     ("board swapped for a new one", None, True, True)]
        for n, (what, damage, reprovision, new_board) in enumerate(scenarios):
            old_epoch = cab.epoch()
            cab.stop()
            if damage is not None:
                damage(state)
            if reprovision:
                secret = ledger.rekey_cabinet("cab-b")      # what `arcade provision` does
            if new_board:
                state = tmp_path / ("flash-b-new-%d" % n)
            cab = stack.Cabinet(tmp_path, "cab-b", secret, broker.url, state_dir=state).start()
            world["cabinets"]["cab-b"] = cab
            cab.wait_connected()
            assert cab.epoch() != old_epoch, what
            for c in captured:
                rec.publish("arcade/cab-b/credit", c)
            acks = cab.wait_for(lambda ls: len([x for x in ls if x.get("event") == "ack"]) >= len(captured) and
                                [x for x in ls if x.get("event") == "ack"], 20, "an answer to every replay")
            assert cab.pulses() == [], "%s: a replayed credit pulsed" % what
            assert {a["result"] for a in acks} == {"rejected"}, (what, acks)
            assert {a["reason"] for a in acks} == ({"bad_signature"} if reprovision else {"wrong_epoch"}), what
        # and the last board still takes a real payment, exactly once: the relay learnt its epoch
        sid, _, _ = trigger.send(relay.webhook_url, WEBHOOK_SECRET, "cab-b", 50)
        assert final_state(ledger, sid)["state"] == "applied"
        assert len(cab.wait_pulses(1)) == 1
    finally:
        rec.close()
