"""Stripe's side of exactly-once (issue 3, fault 7): what Stripe's at-least-once, any-order delivery does.

tests/test_relay_webhook.py already covers, through the Flask test client: the same event twice in a
row, completed + async_payment_succeeded in either order (both paid), unpaid -> succeeded / failed,
8 concurrent deliveries of one event, a fresh event signed 301 s ago, and a retry after a 503.
This file covers what those leave out:

* retries after the credit was delivered, and retries spread over the async life of one session;
* the realistic out-of-order case: async_payment_succeeded before a completed that still says
  `unpaid` (and a late failed/expired after it): the credit stays, once;
* concurrent deliveries through the real relay process (waitress, real HTTP), of one event and of
  two event types for one session, racing each other;
* a replay of a captured, once-accepted event after the 300 s tolerance, with its original header
  or with the timestamp edited: 400 and nothing recorded; inside the tolerance: accepted.
"""
import json
import sqlite3
import threading
import time
import urllib.error
import urllib.request

import pytest

from relay import create_app
from relay.ledger import open_ledger
from tools.lab import stripe_events as se
from tools.lab.stack import Relay

SECRET = "whsec_stripe_side"


@pytest.fixture
def app(tmp_path):
    app = create_app({"TESTING": True, "ARCADE_DB": str(tmp_path / "arcade.db"), "STRIPE_WEBHOOK_SECRET": SECRET,
                      "MQTT_URL": "mqtt://127.0.0.1:1"})
    with open_ledger(app.config["ARCADE_DB"]) as ledger:
        ledger.add_cabinet("cab1", price_cents=100, bundles=[(3, 250)], coins_per_credit=2)
    return app


def post(client, body, header=None, timestamp=None):
    header = header or se.signature_header(body, SECRET, timestamp)
    return client.post("/stripe/webhook", data=body, headers={"Stripe-Signature": header,
                                                                "Content-Type": "application/json"})


def send(client, session, type_="checkout.session.completed", **kw):
    return post(client, se.encode(se.event(session, type_)), **kw)


def rows(ledger, table):
    db = sqlite3.connect(ledger.path)
    try:
        return db.execute("SELECT COUNT(*) FROM %s" % table).fetchone()[0]
    finally:
        db.close()


# --- retries -----------------------------------------------------------------------------------------

def test_retries_after_delivery_change_nothing(client, ledger):
    evt = se.event(se.checkout_session("cab1", 250))
    body = se.encode(evt)
    assert post(client, body).json["result"] == "queued"
    sid = evt["data"]["object"]["id"]
    ledger.mark_sent(sid, 1)
    ledger.record_ack(sid, 1, "applied", "", 6, 1)
    before = ledger.get_payment(sid)
    # Stripe retries for days (each attempt signed afresh), e.g. because our 200 got lost on the way
    for _ in range(5):
        r = post(client, body)
        assert (r.status_code, r.json["result"]) == (200, "duplicate_event")
    assert ledger.get_payment(sid) == before
    assert ledger.get_cabinet("cab1")["next_seq"] == 2 and rows(ledger, "events") == 1


def test_retries_interleaved_over_an_async_payment(client, ledger):
    session = se.checkout_session("cab1", 100, payment_status="unpaid")
    completed = se.encode(se.event(session))
    succeeded = se.encode(se.event(dict(session, payment_status="paid"), "checkout.session.async_payment_succeeded"))
    answers = [post(client, b).json["result"] for b in (completed, completed, succeeded, completed, succeeded)]
    assert answers == ["pending", "duplicate_event", "queued", "duplicate_event", "duplicate_event"]
    p = ledger.get_payment(session["id"])
    assert (p["state"], p["credits"], p["pulses"], p["seq"]) == ("queued", 1, 2, 1)


# --- out of order ------------------------------------------------------------------------------------

@pytest.mark.parametrize("late_type, late_status", [
    ("checkout.session.completed", "unpaid"),              # the completed Stripe sent first, delivered last
    ("checkout.session.async_payment_failed", "unpaid"),   # contradicts: the first word stands
    ("checkout.session.expired", "unpaid"),
], ids=["completed unpaid", "async failed", "expired"])
def test_async_succeeded_first_then_a_late_event_keeps_the_credit_once(client, ledger, late_type, late_status):
    session = se.checkout_session("cab1", 250)
    assert send(client, session, "checkout.session.async_payment_succeeded").json["result"] == "queued"
    r = send(client, dict(session, payment_status=late_status), late_type)
    assert (r.status_code, r.json["result"]) == (200, "duplicate_session")
    p = ledger.get_payment(session["id"])
    assert (p["state"], p["credits"], p["pulses"], p["seq"], p["event_type"]) == \
        ("queued", 3, 6, 1, "checkout.session.async_payment_succeeded")
    assert ledger.get_cabinet("cab1")["next_seq"] == 2


# --- replays -----------------------------------------------------------------------------------------

def test_replay_of_an_accepted_event_after_the_tolerance_is_refused(client, ledger):
    evt = se.event(se.checkout_session("cab1", 100))
    body = se.encode(evt)
    captured = se.signature_header(body, SECRET, time.time() - 301)   # as sent 301 s ago
    # accepted once, when it was fresh (re-signed now: same body, same event id)
    assert post(client, body).json["result"] == "queued"
    events, payments = rows(ledger, "events"), rows(ledger, "payments")
    r = post(client, body, header=captured)
    assert r.status_code == 400 and "signature" in r.json["error"]
    # the attacker edits the timestamp to look fresh: the signature no longer matches
    forged = "t=%d,%s" % (int(time.time()), captured.split(",", 1)[1])
    r = post(client, body, header=forged)
    assert r.status_code == 400 and "signature" in r.json["error"]
    assert (rows(ledger, "events"), rows(ledger, "payments")) == (events, payments)


def test_replay_of_a_never_seen_event_after_the_tolerance_records_nothing(client, ledger):
    session = se.checkout_session("cab1", 100)
    r = send(client, session, timestamp=time.time() - 3600)
    assert r.status_code == 400
    assert ledger.get_payment(session["id"]) is None and rows(ledger, "events") == 0


def test_inside_the_tolerance_is_accepted(client, ledger):
    session = se.checkout_session("cab1", 100)
    r = send(client, session, timestamp=time.time() - 240)   # Stripe's retries are signed when sent
    assert (r.status_code, r.json["result"]) == (200, "queued")


# --- the real relay process: concurrency and replay over HTTP ----------------------------------------

@pytest.fixture
def relay(tmp_path, broker):
    db = str(tmp_path / "arcade.db")
    with open_ledger(db) as ledger:
        ledger.add_cabinet("cab1", price_cents=100, coins_per_credit=2)
    r = Relay(tmp_path, db, broker.url, SECRET).start()
    yield r
    r.stop()


def http_post(url, body, header):
    req = urllib.request.Request(url, data=body, method="POST", headers={"Stripe-Signature": header,
                                                                         "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.load(e)
        finally:
            e.close()


def race(url, bodies, copies):
    """Every body `copies` times, all released at once from their own threads."""
    jobs = [b for b in bodies for _ in range(copies)]
    results, gate = [], threading.Barrier(len(jobs))

    def deliver(body):
        header = se.signature_header(body, SECRET)
        gate.wait(20)
        results.append(http_post(url, body, header))

    threads = [threading.Thread(target=deliver, args=(b,)) for b in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    return results


def test_concurrent_deliveries_of_one_event_to_the_relay_process(relay, tmp_path):
    evt = se.event(se.checkout_session("cab1", 300))
    results = race(relay.webhook_url, [se.encode(evt)], copies=12)
    assert sorted((code, body["result"]) for code, body in results) == \
        [(200, "duplicate_event")] * 11 + [(200, "queued")]
    with open_ledger(str(tmp_path / "arcade.db")) as ledger:
        p = ledger.get_payment(evt["data"]["object"]["id"])
        assert (p["credits"], p["pulses"], p["seq"]) == (3, 6, 1)
        assert ledger.get_cabinet("cab1")["next_seq"] == 2


def test_concurrent_completed_and_async_succeeded_for_one_session(relay, tmp_path):
    session = se.checkout_session("cab1", 100)
    bodies = [se.encode(se.event(session)),
              se.encode(se.event(session, "checkout.session.async_payment_succeeded"))]
    results = race(relay.webhook_url, bodies, copies=6)
    got = sorted(body["result"] for code, body in results if code == 200)
    assert len(got) == 12, results
    assert got.count("queued") == 1
    assert got.count("duplicate_event") == 10 and got.count("duplicate_session") == 1
    with open_ledger(str(tmp_path / "arcade.db")) as ledger:
        assert ledger.get_payment(session["id"])["seq"] == 1 and ledger.get_cabinet("cab1")["next_seq"] == 2


def test_stale_replay_to_the_relay_process_is_refused(relay, tmp_path):
    session = se.checkout_session("cab1", 100)
    body = se.encode(se.event(session))
    code, answer = http_post(relay.webhook_url, body, se.signature_header(body, SECRET, time.time() - 301))
    assert code == 400 and "signature" in answer["error"]
    with open_ledger(str(tmp_path / "arcade.db")) as ledger:
        assert ledger.get_payment(session["id"]) is None and rows(ledger, "events") == 0
    assert "webhook refused (400)" in relay.log_path.read_text()
