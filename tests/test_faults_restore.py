"""Fault 8 of issue 3: a relay database restored from an old backup, and a cabinet re-flashed with
empty flash. Neither may swallow a new credit nor apply an old one again (docs/protocol.md, the
ledger rule).

The backup is taken the way an operator should take one of a live WAL database: sqlite3's online
backup API (a consistent snapshot, WAL content included), while the relay runs.
"""
import signal
import sqlite3
from collections import Counter

import pytest

from relay.ledger import open_ledger
from tools.lab import stack
from tools.lab import stripe_events
from tools.lab import trigger
from tools.lab.broker import Mosquitto

WHSEC = "whsec_test_faults_restore"
RELAY_ENV = {"ARCADE_ACK_TIMEOUT": "1", "ARCADE_ACK_TIMEOUT_MAX": "2", "ARCADE_RESCAN": "0.5",
             "ARCADE_MQTT_KEEPALIVE": "5"}
WAIT = 30.0
FINAL = ("applied", "duplicate", "rejected")


@pytest.fixture
def world(tmp_path):
    broker = Mosquitto(tmp_path / "mosquitto").start()
    db = str(tmp_path / "arcade.db")
    with open_ledger(db) as ledger:
        secret = ledger.add_cabinet("cab1", price_cents=100, coins_per_credit=2)
    relay = stack.Relay(tmp_path, db, broker.url, WHSEC, extra_env=RELAY_ENV)
    # a long gap: a cut sent on the first pulse line lands before the second pulse
    cab = stack.Cabinet(tmp_path, "cab1", secret, broker.url, keepalive=5,
                        extra_args=["--pulse-ms", "30", "--gap-ms", "300"])
    w = {"tmp": tmp_path, "broker": broker, "db": db, "secret": secret, "relay": relay, "cab": cab,
         "events": {}, "cabs": [cab]}
    try:
        relay.start()
        cab.start()
        cab.wait_connected()
        stack.wait_until(lambda: relay.health().get("broker") == "ok", WAIT, 0.1, "relay on the broker")
        yield w
    finally:
        for c in w["cabs"]:
            c.stop()
        relay.stop()
        broker.stop()


def pay(w, session_id=None):
    """Post a payment (or, with session_id, Stripe's delivery of that payment again: same event)."""
    if session_id is None:
        session = stripe_events.checkout_session("cab1", 100, client_reference_id="cab1")
        w["events"][session["id"]] = stripe_events.encode(stripe_events.event(session))
        session_id = session["id"]
    body = w["events"][session_id]
    status, answer = trigger.post(w["relay"].webhook_url, body, stripe_events.signature_header(body, WHSEC))
    assert status == 200, answer
    return session_id


def backup(db, to):
    src, dst = sqlite3.connect(db), sqlite3.connect(to)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def restore(db, frm):
    """Put the old copy back while the relay is stopped: the database file, no WAL, no shared memory."""
    for suffix in ("-wal", "-shm"):
        try:
            (stack.Path(db + suffix)).unlink()
        except FileNotFoundError:
            pass
    stack.Path(db).write_bytes(stack.Path(frm).read_bytes())


def rows(w, sessions):
    with open_ledger(w["db"]) as ledger:
        return {s: ledger.get_payment(s) for s in sessions}


def final(w, sessions):
    got = rows(w, sessions)
    return all(r is not None and r["state"] in FINAL for r in got.values()) and got


def pulses(w):
    """Coin pulses per session over every flash this cabinet has had."""
    return Counter(p["session"] for c in w["cabs"] for p in c.pulses())


def wait_pulses(w, expected, timeout=WAIT):
    try:
        return stack.wait_until(lambda: sum(pulses(w).values()) >= sum(expected.values()) and pulses(w), timeout,
                                0.1, "%d pulses" % sum(expected.values()))
    except TimeoutError:
        got = pulses(w)
        short = {s: (got[s], n) for s, n in expected.items() if got[s] != n}
        raise AssertionError("pulses (seen, paid) differ for %r; ledger: %r"
                             % (short, {s: (r["state"], r["seq"]) for s, r in rows(w, list(short)).items()}))


def test_restored_backup_neither_swallows_new_credits_nor_reapplies_old_ones(world):
    w, db, relay, cab = world, world["db"], world["relay"], world["cab"]
    p1, p2 = pay(w), pay(w)
    stack.wait_until(lambda: final(w, [p1, p2]), WAIT, 0.1, "p1, p2 applied")
    copy = str(w["tmp"] / "backup.db")
    backup(db, copy)                    # the counter for cab1 stands at 3 in the copy

    p3 = pay(w)                         # seq 3
    cab.wait_for(lambda ls: [x for x in ls if x.get("event") == "pulse" and x["session"] == p3], WAIT,
                 "p3's first pulse")
    cab.stop(signal.SIGKILL)            # power cut in p3's pulse train: its ack will come from flash at boot
    relay.stop(signal.SIGKILL)
    restore(db, copy)                   # the relay comes back with the old copy: it never heard of p3
    relay.start()
    stack.wait_until(lambda: relay.health().get("broker") == "ok", WAIT, 0.1, "relay on the broker")
    n1, n2 = pay(w), pay(w)
    again = pay(w, p3)                  # Stripe (or reconciliation) delivers p3 again: new to this database
    got = rows(w, [p1, p2, n1, n2, again])
    assert [got[s]["seq"] for s in (p1, p2, n1, n2, again)] == [1, 2, 3, 4, 5], "the restored counter reuses seq 3"

    cab.start()                         # boots, finishes p3, and answers what the broker kept for it
    settled = stack.wait_until(lambda: final(w, [n1, n2, again]), WAIT, 0.1, "every payment final")
    expected = Counter({p1: 2, p2: 2, p3: 2, n1: 2, n2: 2})
    got_pulses = wait_pulses(w, expected)
    assert got_pulses == expected, "new credits pulse once, p3 is not applied again"
    assert settled[again]["state"] == "duplicate", "the cabinet remembered p3's session"
    assert settled[n1]["state"] == settled[n2]["state"] == "applied"
    assert settled[n1]["seq"] > 3, "n1 was re-sequenced past the seq the cabinet had used for p3"
    assert "re-sequenced" in relay.log_path.read_text()


def test_reflashed_cabinet_neither_swallows_new_credits_nor_reapplies_old_ones(world):
    w, cab = world, world["cab"]
    p1, p2 = pay(w), pay(w)
    stack.wait_until(lambda: final(w, [p1, p2]), WAIT, 0.1, "p1, p2 applied")
    wait_pulses(w, Counter({p1: 2, p2: 2}))
    cab.stop()                          # taken down and re-flashed: same id and secret, empty flash
    fresh = stack.Cabinet(w["tmp"], "cab1", w["secret"], w["broker"].url, state_dir=w["tmp"] / "flash-new",
                          keepalive=5, extra_args=["--pulse-ms", "30", "--gap-ms", "30"])
    w["cabs"].append(fresh)
    fresh.start()
    fresh.wait_connected()
    boot = fresh.events("boot")[0]
    assert (boot["journal"], boot["ledger"], boot["last"]) == ("fresh", "", 0)
    n1, n2 = pay(w), pay(w)
    pay(w, p1)                          # an old payment delivered again: the relay knows it, nothing is sent
    settled = stack.wait_until(lambda: final(w, [n1, n2]), WAIT, 0.1, "n1, n2 final")
    expected = Counter({p1: 2, p2: 2, n1: 2, n2: 2})
    assert wait_pulses(w, expected) == expected
    assert Counter(p["session"] for p in fresh.pulses()) == Counter({n1: 2, n2: 2})
    assert settled[n1]["state"] == settled[n2]["state"] == "applied"
    assert rows(w, [p1])[p1]["state"] == "applied"
    flash = stack.json.loads((w["tmp"] / "flash-new" / "state.json").read_text())
    with open_ledger(w["db"]) as ledger:
        assert (flash["ledger"], flash["last"]) == (ledger.ledger_id, settled[n2]["seq"]), "adopted the relay's ledger"
