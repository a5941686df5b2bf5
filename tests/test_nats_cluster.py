"""The relay and the firmware against a 3-node NATS Server cluster (JetStream, its MQTT listener; issue 12).

Real processes: three nats-server nodes on loopback (tools/lab/nats.py), `arcade relay` on SQLite with
MQTT_URL listing the three nodes and ARCADE_MQTT_VERSION=3.1.1, two `arcade simulate` cabinets each
with its own login and the nodes in another order. The node a cabinet is connected to is SIGKILLed
during a stream of payments: the cabinet moves to the next node of its list, and the books balance by
an oracle that trusts neither the relay's ledger nor the firmware's journal: what this test paid for,
against the pulses on each simulated coin pin. Then the relay's own node is killed too.

The node-loss cost (kill -> first pulse on that cabinet's pin after it) is printed, never asserted
(the machine is shared): docs/scale.md reports it.
"""
import secrets
import socket
import time

import paho.mqtt.client as mqtt
import pytest

from relay.ledger import open_ledger
from tools.lab import stack, stripe_events
from tools.lab.bench import Http
from tools.lab.nats import NatsCluster

WHSEC = "whsec_nats_" + secrets.token_hex(8)
ACK_WAIT = "2s"             # JetStream redelivers an unacknowledged QoS 1 message after this
ENV = {"ARCADE_MQTT_VERSION": "3.1.1", "ARCADE_ACK_TIMEOUT": "1", "ARCADE_ACK_TIMEOUT_MAX": "2",
       "ARCADE_RESCAN": "0.5", "ARCADE_MQTT_KEEPALIVE": "10", "ARCADE_RECONCILE_EVERY": "0"}
# A node killed by SIGKILL is noticed at once (its sockets close); the keepalive (and the firmware's socket
# timeout, min(keepalive, 10) s) must outlast a JetStream leader election, which blocks a publish for 4-8 s
KEEPALIVE = 10
CABS = ["cab-a", "cab-b"]
# each cabinet starts on another node; the relay on the third
ORDER = {"cab-a": ["n2", "n3", "n1"], "cab-b": ["n3", "n1", "n2"], "relay": ["n1", "n2", "n3"]}


class World:
    def __init__(self, tmp_path):
        self.db = str(tmp_path / "arcade.db")
        self.paid = {cab: set() for cab in CABS}        # the oracle's own record: sessions paid per cabinet
        with open_ledger(self.db) as led:
            self.secrets = {cab: led.add_cabinet(cab, price_cents=100) for cab in CABS}   # 1 coin a payment
            logins = led.broker_logins()
            self.relay_id = "arcade-relay-" + led.ledger_id[:8]      # the dispatcher's client id
        self.cluster = NatsCluster(tmp_path / "nats", logins=logins, ack_wait=ACK_WAIT).start()
        self.relay = self.sims = self.http = None
        self.relay = stack.Relay(tmp_path, self.db, self.cluster.url_list(*logins["relay"], order=ORDER["relay"]),
                                 WHSEC, extra_env=ENV).start()
        self.sims = {}
        for cab in CABS:
            urls = ",".join(self.cluster.cabinet_urls(cab, ORDER[cab]))
            self.sims[cab] = stack.Cabinet(tmp_path, cab, self.secrets[cab], urls, keepalive=KEEPALIVE,
                                           extra_args=["--pulse-ms", "20", "--gap-ms", "20"]).start()
        for sim in self.sims.values():
            sim.wait_connected(30)
        self.http = Http(self.relay.webhook_url)

    def pay(self, cab):
        """Pay $1 (1 credit, 1 coin) for `cab`, retrying like Stripe until a 2xx."""
        session = stripe_events.checkout_session(cab, 100, client_reference_id=cab)
        body = stripe_events.encode(stripe_events.event(session))
        self.paid[cab].add(session["id"])
        deadline = time.monotonic() + 30
        while self.http.post(body, stripe_events.signature_header(body, WHSEC)) != 200:
            assert time.monotonic() < deadline, "the relay did not take the payment for 30 s"
            time.sleep(0.2)
        return session["id"]

    def wait_paid(self, cabs=CABS, timeout=60):
        for cab in cabs:
            self.sims[cab].wait_for(lambda ls, cab=cab: len([x for x in ls if x.get("event") == "pulse"])
                                    >= len(self.paid[cab]), timeout, "%d pulses" % len(self.paid[cab]))

    def wait_node(self, client_id, nodes, timeout=30):
        return stack.wait_until(lambda: self.cluster.node_of(client_id) in nodes and self.cluster.node_of(client_id),
                                timeout, what="%s connected to one of %s" % (client_id, nodes))

    def books(self):
        """Per cabinet: pulses for sessions paid (once each), none doubled, none for a session not paid."""
        return {cab: stack.session_books(self.paid[cab], self.sims[cab].pulses()) for cab in CABS}

    def close(self):
        if self.http is not None:
            self.http.close()
        for sim in (self.sims or {}).values():
            sim.stop()
        if self.relay is not None:
            self.relay.stop()
        self.cluster.stop()


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    try:
        yield w
    finally:
        w.close()


def _first_pulse_after(sim, t0, timeout=60):
    """Seconds from t0 (time.monotonic) to the first pulse on the pin after it (the pin's lines carry
    wall-clock times: the offset between the two clocks is taken once, here)."""
    offset = time.time() - time.monotonic()
    pulse = sim.wait_for(lambda ls: [x for x in ls if x.get("event") == "pulse" and x["t"] > t0 + offset],
                         timeout, "a pulse after the kill")[0]
    return pulse["t"] - (t0 + offset)


def test_a_cabinets_node_killed_mid_stream_loses_and_doubles_nothing(world, capsys):
    cluster = world.cluster
    assert world.wait_node("cab-a", ["n2"]) == "n2" and world.wait_node("cab-b", ["n3"]) == "n3"
    assert world.wait_node(world.relay_id, ["n1"]) == "n1"
    started = time.monotonic()
    for i in range(6):
        world.pay(CABS[i % 2])
    world.wait_paid()

    # 1. SIGKILL cab-a's node with payments going on: the cabinet rotates to n3, its session and any
    # queued credit live in JetStream (R3) on the survivors
    for i in range(4):
        world.pay(CABS[i % 2])
    cluster.kill("n2")
    killed_at = time.monotonic()
    for i in range(6):
        world.pay(CABS[i % 2])
    cost = _first_pulse_after(world.sims["cab-a"], killed_at)
    world.wait_paid()
    moved_to = world.wait_node("cab-a", ["n3", "n1"])

    # 2. bring n2 back, then SIGKILL the relay's node (n1): the dispatcher moves to n2
    cluster.restart("n2")
    cluster.wait_current()      # every stream and consumer has its replica on n2 again
    for i in range(4):
        world.pay(CABS[i % 2])
    cluster.kill("n1")
    relay_killed_at = time.monotonic()
    for i in range(6):
        world.pay(CABS[i % 2])
    relay_cost = max(_first_pulse_after(world.sims[cab], relay_killed_at) for cab in CABS)
    world.wait_paid()
    assert world.wait_node(world.relay_id, ["n2", "n3"])

    # quiet window past a redelivery (JetStream's ack_wait, the relay's longest resend interval): no late pulse
    time.sleep(max(float(ENV["ARCADE_ACK_TIMEOUT_MAX"]), float(ACK_WAIT[:-1])) + 2)
    books = world.books()
    with capsys.disabled():
        print("\nnats cluster: node loss cost (SIGKILL of the cabinet's node -> its first pulse after it): %.2f s "
              "(cab-a moved n2 -> %s); relay's node killed -> first pulse on every cabinet: %.2f s; books %s; "
              "%.0f s from the first payment" % (cost, moved_to, relay_cost, {c: (b["paid"], b["pulses"])
                                                                              for c, b in books.items()},
                                                 time.monotonic() - started))
    for cab, b in books.items():
        assert b["lost"] == [] and b["doubled"] == [] and b["pulses"] == b["paid"], (cab, b)


# -- the logins' permissions: a cabinet reaches only its own topics -------------------------------

def _client(port, client_id, login, heard):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                    clean_session=False)
    c.username_pw_set(*login)
    c.on_message = lambda cl, u, m: heard.append((m.topic, m.payload))
    c.suback = {}
    c.on_subscribe = lambda cl, u, mid, codes, p: c.suback.__setitem__(mid, [x.is_failure for x in codes])
    c.connected = []
    c.on_connect = lambda cl, u, flags, rc, p: c.connected.append((rc.is_failure, flags.session_present))
    c.connect("127.0.0.1", port, keepalive=10)
    c.loop_start()
    stack.wait_until(lambda: c.connected, 10, what="%s's CONNACK" % client_id)
    return c


def _subscribe(c, topics):
    mid = c.subscribe([(t, 1) for t in topics])[1]
    return stack.wait_until(lambda: c.suback.get(mid), 10, what="a SUBACK")


def _done(*clients):
    for c in clients:
        c.disconnect()
        c.loop_stop()


def test_a_cabinet_login_reaches_only_its_own_topics(tmp_path):
    db = str(tmp_path / "arcade.db")
    with open_ledger(db) as led:
        for cab in CABS:
            led.add_cabinet(cab, price_cents=100)
        logins = led.broker_logins()
    pw = dict(logins["cabinets"])
    with NatsCluster(tmp_path / "nats", logins=logins, ack_wait="1s") as cluster:
        port = cluster.mqtt_port
        relay_heard, a_heard, b_heard = [], [], []
        relay = _client(port("n1"), "relay", logins["relay"], relay_heard)
        assert _subscribe(relay, ["arcade/+/ack", "arcade/+/status"]) == [False, False]
        b = _client(port("n2"), "cab-b", ("cab-b", pw["cab-b"]), b_heard)
        assert _subscribe(b, ["arcade/cab-b/credit"]) == [False]
        _done(b)                # offline: what the relay sends now waits in cab-b's session

        # A cannot subscribe to B's topics, to a wildcard over every cabinet, nor to JetStream's inboxes
        a = _client(port("n3"), "cab-a", ("cab-a", pw["cab-a"]), a_heard)
        assert _subscribe(a, ["arcade/cab-b/credit", "arcade/+/credit", "#", "$MQTT/#", "$MQTT/sub/#",
                              "arcade/cab-a/credit"]) == [True, True, True, True, True, False]
        # nor publish as B (a forged ack or status never reaches the relay); its own ack does, after them
        for topic in ("arcade/cab-b/ack", "arcade/cab-b/status", "arcade/cab-b/credit", "arcade/cab-a/ack"):
            a.publish(topic, topic.encode(), qos=1)
        stack.wait_until(lambda: relay_heard, 10, what="cab-a's own ack at the relay")
        time.sleep(0.5)
        assert relay_heard == [("arcade/cab-a/ack", b"arcade/cab-a/ack")], relay_heard

        # A logs in with its own login and B's client id: it takes over the session (NATS ties no client
        # id to a login; B is kicked off meanwhile) but reads none of it, and B's queued credit survives
        relay.publish("arcade/cab-b/credit", b"credit for b", qos=1).wait_for_publish(10)
        _done(a)
        hijack = _client(port("n3"), "cab-b", ("cab-a", pw["cab-a"]), a_heard)
        time.sleep(2.5)         # past ack_wait: a redelivery would have come
        _done(hijack)
        assert a_heard == [], a_heard
        b = _client(port("n1"), "cab-b", ("cab-b", pw["cab-b"]), b_heard)
        stack.wait_until(lambda: b_heard, 10, what="cab-b's queued credit")
        assert b_heard[0] == ("arcade/cab-b/credit", b"credit for b")
        _done(b, relay)

        # a cabinet's login is refused on the NATS protocol port (MQTT connections only)
        with socket.create_connection(("127.0.0.1", cluster.ports["n1"]["client"]), timeout=5) as s:
            s.recv(4096)
            s.sendall(b'CONNECT {"user":"cab-a","pass":"%s","verbose":true}\r\nPING\r\n' % pw["cab-a"].encode())
            reply = b""
            while b"\r\n" not in reply:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
        assert reply.startswith(b"-ERR 'Authorization Violation'"), reply
