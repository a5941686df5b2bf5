"""Durability of the webhook's 2xx (issue 12): the relay answers Stripe only once the payment's row is
durable, also when concurrent webhooks share one commit (group commit, relay/ledger.py). Several
senders post payments concurrently; the instant one of them gets its k-th 2xx it SIGKILLs the relay
(no clean shutdown, webhooks still in progress). Every payment answered 2xx must be in the database
(read with sqlite3, not the ledger code), and after a restart each is pulsed exactly once on the
simulated coin pin. The oracle is this test's own record of what was answered 2xx."""
import os
import signal
import sqlite3
import threading

from relay.ledger import open_ledger
from tools.lab import stack, stripe_events
from tools.lab.bench import Http

WHSEC = "whsec_durability_test"
SENDERS = 4
KILL_AFTER = 12         # 2xx answers before the kill


def _states(db):
    conn = sqlite3.connect(db)
    try:
        return {r[0] for r in conn.execute("SELECT state FROM payments")}
    finally:
        conn.close()


def test_every_payment_answered_2xx_survives_a_sigkill_and_is_delivered_after_restart(tmp_path, broker):
    db = str(tmp_path / "arcade.db")
    with open_ledger(db) as ledger:
        secret = ledger.add_cabinet("cab1", price_cents=100)     # $1 = 1 credit = 1 coin
    relay = stack.Relay(tmp_path / "r1", db, broker.url, WHSEC).start()
    acked, lock, killed = [], threading.Lock(), threading.Event()

    def send():
        http = Http(relay.webhook_url)
        try:
            while not killed.is_set():
                session = stripe_events.checkout_session("cab1", 100, client_reference_id="cab1")
                body = stripe_events.encode(stripe_events.event(session))
                try:
                    status = http.post(body, stripe_events.signature_header(body, WHSEC))
                except OSError:
                    return          # the relay is gone
                if status == 200:
                    with lock:
                        acked.append(session["id"])
                        if len(acked) == KILL_AFTER and not killed.is_set():
                            os.kill(relay.proc.pid, signal.SIGKILL)     # right after this 2xx
                            killed.set()
        finally:
            http.close()

    threads = [threading.Thread(target=send) for _ in range(SENDERS)]
    for t in threads:
        t.start()
    try:
        assert killed.wait(60), "the relay answered fewer than %d webhooks in 60 s" % KILL_AFTER
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads)
    finally:
        relay.stop(signal.SIGKILL)
    assert relay.proc.returncode == -signal.SIGKILL, "the relay died of the SIGKILL, not before it"

    conn = sqlite3.connect(db)
    try:
        rows = dict(conn.execute("SELECT session_id, state FROM payments WHERE cabinet_id = 'cab1'").fetchall())
    finally:
        conn.close()
    missing = [s for s in acked if s not in rows]
    assert not missing, "answered 2xx but not in the database after the SIGKILL: %s" % missing
    assert all(rows[s] in ("queued", "sent") for s in acked)

    # back up: every payment the database holds (all the 2xx ones, maybe a few whose answer the kill
    # cut off) is pulsed exactly once
    relay = stack.Relay(tmp_path / "r2", db, broker.url, WHSEC).start()
    cab = stack.Cabinet(tmp_path, "cab1", secret, broker.url, extra_args=["--pulse-ms", "20", "--gap-ms", "20"])
    try:
        cab.start()
        cab.wait_pulses(len(rows), timeout=60)
        stack.wait_until(lambda: _states(db) == {"applied"}, 30, what="every credit acknowledged")
        pulses = cab.pulses()
    finally:
        cab.stop()
        relay.stop()
    by_session = {}
    for p in pulses:
        by_session[p["session"]] = by_session.get(p["session"], 0) + 1
    assert set(acked) <= set(by_session), "a payment answered 2xx was never delivered"
    assert set(by_session) <= set(rows), "a pulse for a payment the relay never recorded"
    assert all(n == 1 for n in by_session.values()), "a credit pulsed twice: %r" % by_session
