"""Faults 1-3 of issue 3 against real processes: the relay SIGKILLed mid-burst, mosquitto restarted
mid-burst (kept, wiped, killed), a cabinet offline while the broker forgets its session.

Each test pays a small burst through Stripe-signed webhooks (posted like Stripe: each event retried
until it gets a 2xx), breaks one part on purpose at a point it waits for (a pulse line, a ledger
state), and then checks the books: every payment in a final state in the ledger, and on the
simulated coin line exactly its pulses (each pulse number 1..P once), credits in seq order.
"""
import queue
import signal
import threading
import time
from collections import Counter, defaultdict

import pytest

from relay.ledger import open_ledger
from tools.lab import stack
from tools.lab import stripe_events
from tools.lab import trigger
from tools.lab.broker import Mosquitto

WHSEC = "whsec_test_faults_delivery"
# Short timers so that a fault heals in seconds: resend an unacknowledged credit after 1 s (2 s at
# most), re-read the database twice a second, 2 s MQTT keepalives.
RELAY_ENV = {"ARCADE_ACK_TIMEOUT": "1", "ARCADE_ACK_TIMEOUT_MAX": "2", "ARCADE_RESCAN": "0.5",
             "ARCADE_MQTT_KEEPALIVE": "2"}
KEEPALIVE = 2
ONE, THREE = 100, 250          # 1 credit = 2 pulses, 3 credits = 6 pulses (2 coins per credit)
WAIT = 30.0


class Stripe:
    """Delivers events in order from a thread, like Stripe: each one is retried (re-signed) until the
    relay answers 2xx, so events posted while the relay is dead arrive after its restart."""

    def __init__(self, url):
        self.url = url                  # a callable: the relay may come back on another port
        self.todo = queue.Queue()
        self.sessions = []              # (session id, amount) in the order they were paid
        self.refused = 0                # attempts that did not get a 2xx (relay down, killed mid-request)
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def pay(self, cabinet, amount):
        session = stripe_events.checkout_session(cabinet, amount, client_reference_id=cabinet)
        body = stripe_events.encode(stripe_events.event(session))
        self.todo.put((session["id"], amount, body))

    def _run(self):
        while True:
            item = self.todo.get()
            if item is None:
                return
            sid, amount, body = item
            deadline = time.monotonic() + WAIT
            while True:
                try:
                    status, _ = trigger.post(self.url(), body, stripe_events.signature_header(body, WHSEC), timeout=5)
                except OSError:
                    status = None
                if status is not None and 200 <= status < 300:
                    break
                with self.cond:
                    self.refused += 1
                if time.monotonic() > deadline:
                    raise RuntimeError("the relay never took event for %s" % sid)
                time.sleep(0.1)         # Stripe's retry interval (not a synchronisation)
            with self.cond:
                self.sessions.append((sid, amount))
                self.cond.notify_all()

    def wait_delivered(self, n, timeout=WAIT):
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.sessions) >= n, timeout), \
                "only %d of %d events taken by the relay" % (len(self.sessions), n)
            return list(self.sessions)

    def close(self):
        self.todo.put(None)
        self.thread.join(WAIT)


def payments(db, sessions):
    with open_ledger(db) as ledger:
        return {sid: ledger.get_payment(sid) for sid in sessions}


def settled(db, cab, sessions):
    """All payments final and their pulses on the line (or False): for wait_until."""
    rows = payments(db, sessions)
    if any(r is None or r["state"] not in ("applied", "duplicate", "rejected") for r in rows.values()):
        return False
    if len(cab.pulses()) < sum(r["pulses"] for r in rows.values()):
        return False
    return rows


def check_books(db, cab, sessions, timeout=WAIT):
    """Every payment applied once: final in the ledger, exactly its pulses on the coin line, in order."""
    rows = stack.wait_until(lambda: settled(db, cab, sessions), timeout, 0.1, "every payment settled")
    by_session = defaultdict(list)
    for p in cab.pulses():
        by_session[p["session"]].append(p["n"])
    assert set(by_session) <= set(sessions), "pulses for a session nobody paid"
    for sid in sessions:
        row = rows[sid]
        assert row["state"] in ("applied", "duplicate"), row          # duplicate: the ack was lost, the credit wasn't
        assert sorted(by_session[sid]) == list(range(1, row["pulses"] + 1)), \
            "session %s (%d pulses) pulsed %r" % (sid, row["pulses"], by_session[sid])
    assert len(cab.pulses()) == sum(r["pulses"] for r in rows.values())
    seqs = [p["seq"] for p in cab.pulses()]
    assert seqs == sorted(seqs), "credits pulsed out of order: %r" % seqs
    assert [rows[s]["seq"] for s in sessions] == sorted(rows[s]["seq"] for s in sessions), \
        "seq follows the order Stripe delivered the payments"
    return rows


@pytest.fixture
def world(tmp_path):
    broker = Mosquitto(tmp_path / "mosquitto", autosave_interval=1).start()
    db = str(tmp_path / "arcade.db")
    with open_ledger(db) as ledger:
        secret = ledger.add_cabinet("cab1", price_cents=ONE, bundles=[(3, THREE)], coins_per_credit=2)
    relay = stack.Relay(tmp_path, db, broker.url, WHSEC, extra_env=RELAY_ENV)
    cab = stack.Cabinet(tmp_path, "cab1", secret, broker.url, keepalive=KEEPALIVE,
                        extra_args=["--pulse-ms", "40", "--gap-ms", "40"])
    stripe = None
    try:
        relay.start()
        cab.start()
        cab.wait_connected()
        stack.wait_until(lambda: relay.health().get("broker") == "ok", WAIT, 0.1, "relay on the broker")
        stripe = Stripe(lambda: relay.webhook_url)
        yield {"broker": broker, "db": db, "relay": relay, "cab": cab, "stripe": stripe, "tmp": tmp_path}
    finally:
        if stripe is not None:
            stripe.close()
        cab.stop()
        relay.stop()
        broker.stop()
    assert "Traceback" not in relay.log_path.read_text(), "the relay logged a crash"


def first_pulse_of(cab, k):
    """Wait for the first pulse of the k-th credit the cabinet pulses (1-based); returns its line."""
    def seen(lines):
        firsts = [x for x in lines if x.get("event") == "pulse" and x["n"] == 1]
        return len(firsts) >= k and firsts[k - 1]
    return cab.wait_for(seen, WAIT, "the first pulse of credit #%d" % k)


def test_relay_sigkilled_between_publish_and_ack_and_between_commit_and_publish(world):
    relay, cab, stripe, db = world["relay"], world["cab"], world["stripe"], world["db"]
    for i in range(8):
        stripe.pay("cab1", THREE if i % 2 == 0 else ONE)
    sent = stripe.wait_delivered(8)
    # Kill 1, same port: while the 3rd credit is on the coin line (published, not acked), with the
    # credits paid after it committed and never published (one credit in flight per cabinet).
    line = first_pulse_of(cab, 3)
    relay.stop(signal.SIGKILL)
    rows = payments(db, [s for s, _ in sent])
    in_flight = [r for r in rows.values() if r["seq"] == line["seq"]][0]
    assert in_flight["state"] in ("queued", "sent"), "killed before its ack was recorded"
    waiting = [r for r in rows.values() if r["seq"] > line["seq"]]
    assert waiting and all(r["state"] == "queued" for r in waiting), "committed, never published"
    for i in range(4):                  # paid while the relay is dead: Stripe retries until it is back
        stripe.pay("cab1", ONE if i % 2 == 0 else THREE)
    relay.start()

    # Kill 2, and come back on another port: the moment a webhook (12th) has been committed.
    stripe.wait_delivered(12)
    relay.stop(signal.SIGKILL)
    for i in range(4):
        stripe.pay("cab1", THREE)
    relay2 = stack.Relay(world["tmp"], db, world["broker"].url, WHSEC, extra_env=RELAY_ENV).start()
    world["relay"] = relay2
    stripe.url = lambda: relay2.webhook_url
    try:
        sent = stripe.wait_delivered(16)
        rows = check_books(db, cab, [s for s, _ in sent])
        print("relay kills: %d deliveries refused and retried; %r" % (
            stripe.refused, Counter(r["state"] for r in rows.values())))
    finally:
        relay2.stop()
    assert stripe.refused >= 1, "some deliveries met a dead relay and were retried"


@pytest.mark.parametrize("how", ["sigterm-kept", "wiped", "sigkill"])
def test_broker_restarted_during_a_burst(world, how):
    """kept: SIGTERM (saves its persistence file) and start again; wiped: no persistence, data dir
    removed (every session and queued message lost); sigkill: no chance to save beyond the last
    1 s autosave."""
    broker, cab, stripe, db = world["broker"], world["cab"], world["stripe"], world["db"]
    for i in range(6):
        stripe.pay("cab1", THREE if i % 2 == 0 else ONE)
    stripe.wait_delivered(6)
    first_pulse_of(cab, 2)              # the 2nd credit on the coin line, the others committed and waiting
    connects = len(cab.events("connected"))
    broker.stop(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
    for i in range(4):                  # paid while the broker is down: the relay commits them
        stripe.pay("cab1", ONE if i % 2 == 0 else THREE)
    stripe.wait_delivered(10)
    down = time.monotonic()
    broker.restart(persistence=how != "wiped", wipe=how == "wiped")
    cab.wait_connected(WAIT, connects + 1)
    sent = stripe.wait_delivered(10)
    rows = check_books(db, cab, [s for s, _ in sent])
    print("broker %s: settled %.1f s after the broker came back; %r" % (
        how, time.monotonic() - down, Counter(r["state"] for r in rows.values())))


def test_cabinet_offline_while_the_broker_forgets_its_session(world):
    """EMQX drops an MQTT 3.1.1 session after two hours: here mosquitto without persistence does it."""
    broker, cab, stripe, db, relay = world["broker"], world["cab"], world["stripe"], world["db"], world["relay"]
    stripe.pay("cab1", ONE)
    before = stripe.wait_delivered(1)
    check_books(db, cab, [s for s, _ in before])        # applied: the flash now holds ledger and last
    cab.stop()                                          # offline (clean stop: the session is kept...)
    for i in range(5):
        stripe.pay("cab1", THREE if i % 2 == 0 else ONE)
    sent = stripe.wait_delivered(6)
    # the broker took the first credit for the offline cabinet (PUBACK): it sits in the session's queue
    stack.wait_until(lambda: payments(db, [sent[1][0]])[sent[1][0]]["state"] == "sent", WAIT, 0.1,
                     "the broker holding a credit for the offline cabinet")
    broker.restart(persistence=False, wipe=True)        # ...until the broker forgets it
    stack.wait_until(lambda: relay.health().get("broker") == "ok", WAIT, 0.1, "relay back on the broker")
    stripe.pay("cab1", ONE)                             # and one more while it is still away
    sent = stripe.wait_delivered(7)
    assert cab.pulses() and len(cab.pulses()) == 2, "nothing pulsed while offline"
    cab.start()                                         # back with its flash
    boot = cab.wait_for(lambda ls: [x for x in ls if x.get("event") == "boot"][1:], WAIT, "the second boot")[0]
    assert (boot["recovered"], boot["last"]) == (False, 1)
    back = time.monotonic()
    rows = check_books(db, cab, [s for s, _ in sent])
    print("offline cabinet: 6 credits pulsed %.1f s after it came back; %r" % (
        time.monotonic() - back, Counter(r["state"] for r in rows.values())))
