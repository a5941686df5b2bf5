"""Property-based test (hypothesis) of exactly-once delivery over a simulated, hostile channel.

The relay side is the real code: Stripe-signed events through the Flask app's webhook, the ledger in
a temporary SQLite, and the real `Dispatcher` driven with `step(ledger)` and a fake clock (its paho
client replaced by one that hands each publish to the simulated broker). The cabinet side is the real
firmware apply logic (firmware/cabinet.py, journal.py, coin.py) with the host's fake `machine.Pin`,
a FakeClock and its flash in a temporary directory.

Between them, `Broker` holds the QoS 1 messages in transit both ways. Hypothesis chooses what happens
next: payments (paid, async settled later or out of order, wrong amount), Stripe retrying any event,
deliveries in any order, duplicated, dropped; PUBACKs lost; relay restarts (ledger re-opened,
dispatcher rebuilt from it) with or without its broker session; broker restarts without
persistence; the relay database restored from an earlier backup (the events it lost reach it again
later, in any order, as Stripe's retries and reconciliation bring them); cabinet power cuts at any edge of a pulse train
(and during the recovery at boot); redelivery timeouts (the fake clock jumps).

Invariants, at all times: no payment is applied twice, and no payment pulses more than its coins.
Once the channel drains (faults stop, everything is delivered, timeouts fire): every paid payment is
applied (or acknowledged as a duplicate of its one application) and, for every cabinet, the pulses
on its pin = sum of credits x coins per credit over its paid payments; nothing else pulsed.

Settings: 100 examples of 30 to 150 steps (about a third of them faults), derandomized (the same examples on every run, so CI is
reproducible). ARCADE_PROPERTY_EXPLORE=1 explores new ones (with --hypothesis-seed=N to pick them);
ARCADE_PROPERTY_EXAMPLES=N changes the count.
"""
import collections
import json
import os
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from relay import config, create_app
from relay.dispatcher import Dispatcher
from relay.ledger import open_ledger
from tools.lab import stripe_events as se

ROOT = Path(__file__).resolve().parents[1]
for _sub in ("tools/hostsim", "firmware"):
    if str(ROOT / _sub) not in sys.path:
        sys.path.insert(0, str(ROOT / _sub))

import hosttime  # noqa: E402,F401  (MicroPython's ticks API on CPython's time)
import machine  # noqa: E402
import protocol as fwprotocol  # noqa: E402  (the firmware's protocol module)
from cabinet import Cabinet as Firmware  # noqa: E402
from coin import Coin  # noqa: E402
from fakeclock import FakeClock  # noqa: E402
from journal import Journal  # noqa: E402

SECRET = "whsec_property"
PREFIX = "arcade"
PRICES = {1: 100, 3: 250}             # credits -> cents, the same table for every cabinet
ACK_TIMEOUT, ACK_TIMEOUT_MAX = 10, 40
# Fast scratch space: every journal write and every ledger commit is fsynced.
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class Cut(Exception):
    """The power is gone, here."""


class _Info:
    def __init__(self, mid):
        self.mid = mid


class FakePaho:
    """Stands in for the dispatcher's paho client: each publish reaches the simulated broker."""

    def __init__(self, world):
        self.world, self.mid = world, 0

    def publish(self, topic, payload, qos=1, retain=False):
        assert qos == 1
        self.mid += 1
        _, cab, kind = topic.split("/")
        if kind == "credit":
            self.world.to_cab.append((cab, payload))
        self.world.to_relay.append(("puback", self.world.conn, self.mid))
        return _Info(self.mid)


class Box:
    """One cabinet: the firmware's apply logic on its own flash and coin pin."""

    def __init__(self, cab, secret, coins, root, pin):
        self.cab, self.secret, self.coins, self.root, self.pin = cab, secret, coins, root, pin
        self.fw = None
        self.up = False
        self.outbox = []      # duplicate/rejected acks in RAM (applied acks live in flash)
        self.cut_in = None    # edges left before the power goes, or None


class World:
    """The relay, the broker's channel and N cabinets; `do(action)` is one step hypothesis chose."""

    def __init__(self, n, coins):
        self.dir = tempfile.mkdtemp(prefix="arcade-prop-", dir=SCRATCH)
        self.db = os.path.join(self.dir, "arcade.db")
        self.ledger = self.dispatcher = None
        self.app = create_app({"TESTING": True, "ARCADE_DB": self.db, "STRIPE_WEBHOOK_SECRET": SECRET,
                               "MQTT_URL": "mqtt://127.0.0.1:1"})
        self.web = self.app.test_client()
        self.boxes = {}
        with open_ledger(self.db) as led:
            for i in range(n):
                cab = "cab%d" % i
                secret = led.add_cabinet(cab, price_cents=PRICES[1], bundles=[(3, PRICES[3])],
                                         coins_per_credit=coins[i])
                root = os.path.join(self.dir, cab) + "/"
                os.mkdir(root)
                self.boxes[cab] = Box(cab, secret, coins[i], root, 20 + i)
        self.cabs = sorted(self.boxes)
        self.settings = config.check({"ARCADE_DB": self.db, "STRIPE_WEBHOOK_SECRET": SECRET,
                                      "ARCADE_ACK_TIMEOUT": ACK_TIMEOUT, "ARCADE_ACK_TIMEOUT_MAX": ACK_TIMEOUT_MAX,
                                      "ARCADE_RESCAN": 5, "ARCADE_STUCK_AFTER": 1e9})
        # the channel
        self.to_cab = []          # (cabinet, credit payload) the broker holds for cabinets
        self.to_relay = []        # ("puback", connection, mid) | ("message", topic, payload) for the relay
        self.conn = 0             # the relay's connection number (a PUBACK belongs to one connection)
        self.backup = None        # a copy of the relay's database, for the restore fault
        self.known = set()        # event bodies the relay's database has recorded
        self.backup_known = set() # ... and those its backup has
        # what should happen, from the model's own arithmetic (never from the relay)
        self.owed = {}            # session -> (cabinet, pulses) for every paid payment
        self.sessions = []        # every session sent to the webhook
        self.events = []          # every event body sent, for Stripe's retries
        self.async_open = []      # sessions whose async payment has not settled yet
        # what did happen, seen on the pins
        self.pulses = collections.Counter()       # session -> rising edges while it was `cur`
        self.pin_edges = collections.Counter()    # cabinet -> rising edges on its pin
        self.applied = collections.Counter()      # session -> times the firmware completed it
        self.seen = collections.Counter()         # what happened (for the statistics)
        self.now = 1000.0
        machine.clear()
        self.clock = FakeClock(1000)
        machine.set_clock(self.clock.ticks_ms)
        machine.watchers.append(self._edge)
        self.owner = {}
        self._relay_start(session_present=False)
        for box in self.boxes.values():
            self._boot(box)

    def close(self):
        if self.ledger is not None:
            self.ledger.close()
        machine.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- the pins -----------------------------------------------------------------------------

    def _edge(self, pin, t, v):
        box = self.owner.get(pin.id)
        if box is None or box.fw is None:
            return
        if v == 1:
            cur = box.fw.state["cur"]
            assert cur is not None, "a coin pulse with no credit being applied"
            self.pulses[cur["session"]] += 1
            self.pin_edges[box.cab] += 1
        if box.cut_in is not None:
            box.cut_in -= 1
            if box.cut_in <= 0:
                box.cut_in = None
                raise Cut()

    # -- the relay ----------------------------------------------------------------------------

    def _relay_start(self, session_present):
        self.ledger = open_ledger(self.db)
        d = Dispatcher(self.settings, clock=lambda: self.now)
        d._client, d.ledger_id = FakePaho(self), self.ledger.ledger_id
        self.conn += 1
        d._inbox.append(("connected", session_present))
        self.dispatcher = d
        self._step()

    def _step(self):
        self.dispatcher.step(self.ledger)

    def _post(self, body):
        r = self.web.post("/stripe/webhook", data=body,
                          headers={"Stripe-Signature": se.signature_header(body, SECRET)})
        assert r.status_code == 200, r.get_data()
        self.known.add(body)
        return r.json["result"]

    def _send(self, session, type_):
        body = se.encode(se.event(session, type_))
        self.events.append(body)
        return self._post(body)

    # -- the cabinets -------------------------------------------------------------------------

    def _boot(self, box, cut_in=None):
        coin = Coin(box.pin, True, 100, 150, self.clock.ticks_ms, self.clock.sleep_ms)
        box.fw = Firmware(box.cab, box.secret, Journal(box.root), coin)
        box.outbox = []
        box.up = False
        self.owner[box.pin] = box
        cur = box.fw.state["cur"]
        if cur is not None:
            self.seen["recovery"] += 1
        box.cut_in = cut_in
        try:
            left = box.fw.recover()
        except Cut:
            return                          # power lost again during the recovery
        finally:
            box.cut_in = None
        if left is not None:
            self.applied[cur["session"]] += 1
        box.up = True
        # connect: a live (not retained) online status, as the firmware publishes on every connect
        self.to_relay.append(("message", "%s/%s/status" % (PREFIX, box.cab), self._status(box)))

    def _status(self, box):
        """The signed online status the firmware publishes on connecting, numbered like it (a rising n)."""
        s = box.fw.state
        box.sn = getattr(box, "sn", 0) + 1
        return fwprotocol.status(box.fw.key, box.cab, True, (s["epoch"], s["boots"], box.sn), s["ledger"], s["last"])

    def _deliver_credit(self, i, duplicate=False, cut_in=None):
        cab, payload = self.to_cab[i]
        box = self.boxes[cab]
        if not box.up:
            return                          # the broker keeps it for the cabinet's session
        if not duplicate:
            del self.to_cab[i]
        box.cut_in = cut_in
        try:
            result, ack = box.fw.handle(payload)
        except Cut:
            box.up = False                  # no PUBACK went out: the broker delivers it again
            if not duplicate:
                self.to_cab.append((cab, payload))
            return
        finally:
            box.cut_in = None
        if result == "applied":
            self.applied[json.loads(payload)["session"]] += 1
        elif ack is not None:
            box.outbox.append(ack)

    def _flush(self, box, puback_lost=False):
        topic = "%s/%s/ack" % (PREFIX, box.cab)
        a = box.fw.pending_ack()
        if a is not None:
            self.to_relay.append(("message", topic, a))
            if not puback_lost:             # lost PUBACK: the ack stays in flash and is sent again
                box.fw.ack_sent(a)
        for a in box.outbox:
            self.to_relay.append(("message", topic, a))
        box.outbox = []

    def _deliver_to_relay(self, i, duplicate=False):
        item = self.to_relay[i]
        if not duplicate:
            del self.to_relay[i]
        if item[0] == "puback":
            if item[1] != self.conn:
                return                      # a PUBACK never outlives its connection
            self.dispatcher._inbox.append(("puback", item[2]))
        else:
            self.dispatcher._inbox.append(("message", item[1], item[2], False))
        self._step()

    # -- the steps hypothesis chooses ----------------------------------------------------------

    def _pick(self, items, i):
        return i % len(items) if items else None

    def do(self, action):
        getattr(self, "a_" + action[0])(*action[1:])
        self.seen[action[0]] += 1

    def a_pay(self, cab, credits, kind):
        cab = self.cabs[cab % len(self.cabs)]
        amount = PRICES[credits] + (1 if kind == "wrong_amount" else 0)
        session = se.checkout_session(cab, amount, payment_status="unpaid" if kind == "async" else "paid")
        self.sessions.append(session["id"])
        if kind == "async":
            assert self._send(session, "checkout.session.completed") == "pending"
            self.async_open.append(session)
            return
        if kind == "async_out_of_order":   # async_payment_succeeded arrives before completed
            assert self._send(session, "checkout.session.async_payment_succeeded") == "queued"
            late = dict(session, payment_status="unpaid")
            assert self._send(late, "checkout.session.completed") == "duplicate_session"
        else:
            expected = "invalid" if kind == "wrong_amount" else "queued"
            assert self._send(session, "checkout.session.completed") == expected
        if kind != "wrong_amount":
            self.owed[session["id"]] = (cab, credits * self.boxes[cab].coins)
        self._step()                        # the webhook wakes the dispatcher

    def a_settle(self, i, succeed):
        if not self.async_open:
            return
        session = self.async_open.pop(self._pick(self.async_open, i))
        done = dict(session, payment_status="paid" if succeed else "unpaid")
        kind = "checkout.session.async_payment_%s" % ("succeeded" if succeed else "failed")
        assert self._send(done, kind) == ("queued" if succeed else "failed")
        if succeed:
            cab = session["metadata"]["cabinet_id"]
            credits = [c for c, cents in PRICES.items() if cents == session["amount_total"]][0]
            self.owed[session["id"]] = (cab, credits * self.boxes[cab].coins)
        self._step()

    def a_stripe_retry(self, i):
        if self.events:
            body = self.events[self._pick(self.events, i)]
            if body not in self.known:      # the restored database hears of it now
                self._post(body)
                self._step()
            else:
                assert self._post(body) == "duplicate_event"

    def a_deliver(self, i, duplicate, cut_in, then_ack=False):
        if self.to_cab:
            cab = self.to_cab[self._pick(self.to_cab, i)][0]
            self._deliver_credit(self._pick(self.to_cab, i), duplicate, cut_in)
            box = self.boxes[cab]
            if then_ack and box.up:         # the firmware's loop publishes the ack right after the callback
                self._flush(box)

    def a_drop(self, i):
        if self.to_cab:
            del self.to_cab[self._pick(self.to_cab, i)]

    def a_to_relay(self, i, duplicate):
        if self.to_relay:
            self._deliver_to_relay(self._pick(self.to_relay, i), duplicate)

    def a_drop_to_relay(self, i):
        if self.to_relay:
            del self.to_relay[self._pick(self.to_relay, i)]

    def a_acks(self, cab, puback_lost):
        box = self.boxes[self.cabs[cab % len(self.cabs)]]
        if box.up:
            self._flush(box, puback_lost)

    def a_power(self, cab, cut_in):
        self._boot(self.boxes[self.cabs[cab % len(self.cabs)]], cut_in)

    def a_relay_restart(self, keeps_session):
        self.ledger.close()
        self.ledger = None
        if not keeps_session:               # what the broker queued for the relay is gone
            self.to_relay = [x for x in self.to_relay if x[0] != "message"]
        self._relay_start(session_present=keeps_session)

    def a_backup(self):
        """The operator's nightly copy of the relay database (SQLite's online backup)."""
        self.backup = os.path.join(self.dir, "backup.db")
        src, dst = sqlite3.connect(self.db), sqlite3.connect(self.backup)
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()
        self.backup_known = set(self.known)

    def a_restore(self, keeps_session):
        """The relay's disk dies; its database comes back from the last backup (same ledger id, so
        the same MQTT client id; counters behind). The events it lost reach it again later, in any
        order, as Stripe's retries and `arcade reconcile` (the same fulfilment path) bring them."""
        if self.backup is None:
            return
        self.ledger.close()
        self.ledger = None
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.db + suffix):
                os.remove(self.db + suffix)
        src, dst = sqlite3.connect(self.backup), sqlite3.connect(self.db)
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()
        if not keeps_session:
            self.to_relay = [x for x in self.to_relay if x[0] != "message"]
        self._relay_start(session_present=keeps_session)
        self.known = set(self.backup_known)

    def _lost(self):
        """Events the (restored) database never saw, until Stripe or reconciliation bring them."""
        return [b for b in self.events if b not in self.known]

    def a_lost_event_arrives(self, i):
        lost = self._lost()
        if lost:
            self._post(lost[self._pick(lost, i)])
            self._step()

    def a_relay_reconnect(self):
        self.dispatcher._inbox.append(("disconnected", "keepalive timeout"))
        self.conn += 1
        self.dispatcher._inbox.append(("connected", True))
        self._step()

    def a_broker_restart(self):
        """Restarted without persistence: every queued message is gone; everyone reconnects."""
        self.to_cab, self.to_relay = [], []
        self.conn += 1
        self.dispatcher._inbox.append(("disconnected", "broker restarted"))
        self.dispatcher._inbox.append(("connected", False))
        self._step()
        for box in self.boxes.values():    # cabinets reconnect; their RAM and flash are intact
            if box.up:
                self.to_relay.append(("message", "%s/%s/status" % (PREFIX, box.cab), self._status(box)))

    def a_time(self, seconds):
        self.now += seconds
        self._step()

    # -- invariants ---------------------------------------------------------------------------

    def check_at_all_times(self):
        twice = {s: n for s, n in self.applied.items() if n > 1}
        assert not twice, "applied more than once: %r" % twice
        for session, n in self.pulses.items():
            owed = self.owed.get(session, (None, 0))[1]
            assert n <= owed, "session %s pulsed %d coins, it paid for %d" % (session, n, owed)

    # -- the end: stop the faults, drain the channel, count ---------------------------------------

    def drain_and_check(self):
        while self._lost():                 # Stripe (or reconciliation) brings every event in the end
            self.a_lost_event_arrives(0)
        for _ in range(60):
            for box in self.boxes.values():
                if not box.up:
                    self._boot(box)
            self._step()
            for _ in range(50):
                if not (self.to_cab or self.to_relay or any(b.outbox or b.fw.pending_ack() for b in
                                                            self.boxes.values())):
                    break
                while self.to_cab:
                    self._deliver_credit(0)
                for box in self.boxes.values():
                    self._flush(box)
                while self.to_relay:
                    self._deliver_to_relay(0)
            if all(self.ledger.get_payment(s)["state"] in ("applied", "duplicate") for s in self.owed):
                break
            self.seen["drain_timeouts"] += 1
            self.now += ACK_TIMEOUT_MAX + 1   # the redelivery timeout fires
        self.check_at_all_times()
        states = {s: self.ledger.get_payment(s)["state"] for s in self.sessions}
        assert all(states[s] in ("applied", "duplicate") for s in self.owed), \
            "not delivered after the channel drained: %r" % {s: states[s] for s in self.owed}
        for session, (cab, owed) in self.owed.items():
            assert self.pulses[session] == owed, "session %s: %d pulses, owed %d" % (session, self.pulses[session],
                                                                                   owed)
            assert self.applied[session] == 1
        for session in self.sessions:
            if session not in self.owed:
                assert self.pulses[session] == 0 and states[session] in ("invalid", "pending", "failed"), \
                    (session, states[session])
        for cab, box in self.boxes.items():
            owed = sum(p for c, p in self.owed.values() if c == cab)
            assert self.pin_edges[cab] == owed, "%s: %d pulses on the pin, owed %d" % (cab, self.pin_edges[cab], owed)
            assert box.fw.state["total"] == owed
        assert self.ledger.count_pending() == 0


_INDEX = st.integers(0, 255)
_CAB = st.integers(0, 2)
_PAY = st.tuples(st.just("pay"), _CAB, st.sampled_from(sorted(PRICES)),
                 st.sampled_from(["paid", "paid", "paid", "async", "async_out_of_order", "wrong_amount"]))
_DELIVER = st.tuples(st.just("deliver"), _INDEX, st.just(False), st.none(), st.booleans())   # maybe acks at once
_TO_RELAY = st.tuples(st.just("to_relay"), _INDEX, st.just(False))
_ACKS = st.tuples(st.just("acks"), _CAB, st.just(False))
_TIME = st.tuples(st.just("time"), st.sampled_from([1, 5, ACK_TIMEOUT, ACK_TIMEOUT_MAX + 1]))
_FAULTS = [
    st.tuples(st.just("deliver"), _INDEX, st.booleans(), st.integers(1, 6)),     # power cut at the n-th edge
    st.tuples(st.just("deliver"), _INDEX, st.just(True), st.none()),             # duplicated
    st.tuples(st.just("drop"), _INDEX),
    st.tuples(st.just("to_relay"), _INDEX, st.just(True)),                       # duplicated
    st.tuples(st.just("drop_to_relay"), _INDEX),
    st.tuples(st.just("acks"), _CAB, st.just(True)),                             # PUBACK lost
    st.tuples(st.just("power"), _CAB, st.one_of(st.none(), st.integers(1, 3))),  # reboot, maybe cut again
    st.tuples(st.just("relay_restart"), st.booleans()),
    st.tuples(st.just("relay_reconnect")),
    st.tuples(st.just("broker_restart")),
    st.tuples(st.just("stripe_retry"), _INDEX),
    st.tuples(st.just("settle"), _INDEX, st.booleans()),
    st.tuples(st.just("backup")),
    st.tuples(st.just("restore"), st.booleans()),
    st.tuples(st.just("lost_event_arrives"), _INDEX),
]
# (strategy, weight): the normal flow is drawn more often than any one fault, so that payments get
# somewhere between faults; about a third of the steps are faults
_WEIGHTS = [(_PAY, 3), (_DELIVER, 6), (_TO_RELAY, 6), (_ACKS, 4), (_TIME, 2)] + [(f, 1) for f in _FAULTS]
ACTIONS = st.sampled_from([strategy for strategy, weight in _WEIGHTS for _ in range(weight)]).flatmap(lambda s: s)


@settings(max_examples=int(os.environ.get("ARCADE_PROPERTY_EXAMPLES", "100")), deadline=None,
          derandomize=not os.environ.get("ARCADE_PROPERTY_EXPLORE"),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(n=st.integers(1, 3), coins=st.lists(st.integers(1, 3), min_size=3, max_size=3),
       actions=st.lists(ACTIONS, min_size=30, max_size=150))
# Drawn cases nearly always hold another trigger for a resend (a status, a reconnect): this one
# leaves only the ack timeout to recover a dropped credit after the cabinet's status was heard.
@example(n=1, coins=[2, 1, 1], actions=[("to_relay", 0, False), ("pay", 0, 3, "paid"), ("drop", 0)])
def test_exactly_once_over_a_hostile_channel(n, coins, actions):
    world = World(n, coins)
    try:
        for action in actions:
            world.do(action)
            world.check_at_all_times()
        world.drain_and_check()
    finally:
        world.close()
