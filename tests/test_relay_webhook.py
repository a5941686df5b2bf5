"""POST /stripe/webhook through Flask's test client, with Stripe-shaped events signed like Stripe does.

Each way to be wrong is one row; each row checks the answer and what the ledger holds afterwards.
"""
import sqlite3
import threading
import time

import pytest

from relay import create_app
from relay.config import ConfigError
from relay.ledger import open_ledger
from tools.lab import stripe_events as se

SECRET = "whsec_test_webhook"


def _db(request, tmp_path, backend):
    return str(tmp_path / "arcade.db") if backend == "sqlite" else request.getfixturevalue("pg_url")


# The idempotency and concurrency tests run on both ledger backends; the rest on SQLite.
BOTH_BACKENDS = pytest.mark.parametrize("app", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def app(request, tmp_path):
    db = _db(request, tmp_path, getattr(request, "param", "sqlite"))
    app = create_app({"TESTING": True, "ARCADE_DB": db, "STRIPE_WEBHOOK_SECRET": SECRET,
                      "MQTT_URL": "mqtt://127.0.0.1:1"})
    with open_ledger(app.config["ARCADE_DB"]) as ledger:
        ledger.add_cabinet("cab1", name="Galaga", price_cents=100, bundles=[(3, 250)], coins_per_credit=2)
        ledger.add_cabinet("cab2", price_cents=50)
        ledger.add_cabinet("off", price_cents=100)
        ledger.set_enabled("off", False)
    yield app


def post(client, evt, secret=SECRET, timestamp=None, body=None, header=True):
    body = se.encode(evt) if body is None else body
    headers = {"Content-Type": "application/json"}
    if header:
        headers["Stripe-Signature"] = se.signature_header(body, secret, timestamp)
    return client.post("/stripe/webhook", data=body, headers=headers)


def paid(cab="cab1", amount=100, **kw):
    return se.event(se.checkout_session(cab, amount, **kw))


def count(ledger, table):
    return ledger._db.execute("SELECT COUNT(*) FROM %s" % table).fetchone()[0]


def test_paid_checkout_is_recorded_with_a_sequenced_credit(client, ledger, app):
    evt = paid(amount=250)
    r = post(client, evt)
    assert r.status_code == 200 and r.json["result"] == "queued"
    p = ledger.get_payment(evt["data"]["object"]["id"])
    assert (p["state"], p["cabinet_id"], p["credits"], p["pulses"], p["amount"], p["currency"], p["seq"]) == \
        ("queued", "cab1", 3, 6, 250, "usd", 1)
    assert p["paid_at"] and p["queued_at"] and p["sent_at"] is None
    assert app.extensions["arcade"]["wake"].is_set(), "the dispatcher was not woken"


def test_a_credit_for_a_cabinet_with_one_in_flight_wakes_no_dispatcher_step_and_is_still_queued(client, ledger, app):
    """The dispatcher's ack step sends the next credit of a busy cabinet: the webhook skips the wake-up
    (a ledger scan for nothing); an idle cabinet's credit wakes it."""
    class Busy:                             # and not connected: nothing published from the webhook
        def in_flight(self, cab):
            return cab == "cab1"

        def first_publish(self, cab):
            return None

    wake = app.extensions["arcade"]["wake"]
    app.extensions["arcade"]["dispatcher"] = Busy()
    busy = paid()
    assert post(client, busy).json["result"] == "queued" and not wake.is_set()
    assert ledger.get_payment(busy["data"]["object"]["id"])["state"] == "queued"
    assert post(client, paid(cab="cab2", amount=50)).json["result"] == "queued" and wake.is_set()


def test_a_server_app_keeps_one_sqlite_connection_per_thread_and_a_plain_app_opens_one_per_request(app, monkeypatch):
    from relay import db as relay_db
    opened = []
    real = relay_db.open_ledger

    def counting(*a, **kw):
        opened.append(a[0])
        return real(*a, **kw)

    monkeypatch.setattr(relay_db, "open_ledger", counting)
    client = app.test_client()
    for _ in range(3):
        assert post(client, paid()).json["result"] == "queued"
    assert len(opened) == 3, "a plain app (tests, one-off tools) opens and closes a ledger per request"
    relay_db.keep_connections(app)          # what `arcade relay` does
    for _ in range(3):
        assert post(client, paid()).json["result"] == "queued"
    assert len(opened) == 4, "a server app's thread opens its ledger once and keeps it"


# --- refused before anything is recorded: 400 ---------------------------------------------------

def _stale(client, evt):
    return post(client, evt, timestamp=time.time() - 301)


@pytest.mark.parametrize("send", [
    pytest.param(lambda c, e: post(c, e, secret="whsec_wrong"), id="bad signature"),
    pytest.param(_stale, id="stale timestamp"),
    pytest.param(lambda c, e: post(c, e, header=False), id="missing header"),
    pytest.param(lambda c, e: post(c, e, body=b'{"id": "evt_1", "type": "checkout.se'), id="malformed JSON"),
    pytest.param(lambda c, e: post(c, e, body=b"\xff\xfe not utf-8"), id="not UTF-8"),
    pytest.param(lambda c, e: c.post("/stripe/webhook", data=se.encode(e),
                                     headers={"Stripe-Signature": "t=abc,v1=zz"}), id="garbled header"),
    pytest.param(lambda c, e: post(c, dict(e, data={"object": {"object": "checkout.session"}})),
                 id="session without id"),
])
def test_refused_with_400_and_nothing_recorded(client, ledger, send):
    r = send(client, paid())
    assert r.status_code == 400
    assert "error" in r.json
    assert count(ledger, "payments") == 0 and count(ledger, "events") == 0


# --- recorded without a credit: 2xx (a retry cannot fix them) -------------------------------------

@pytest.mark.parametrize("evt, state, reason", [
    (paid("nosuch"), "invalid", "unknown_cabinet"),
    (paid("bad id!"), "invalid", "unknown_cabinet"),
    (paid("off"), "invalid", "cabinet_disabled"),
    (paid(amount=150), "invalid", "amount_mismatch"),
    (paid(amount=0), "invalid", "amount_mismatch"),
    (paid(amount=100, currency="eur"), "invalid", "wrong_currency"),
    (paid(amount=100 * 200), "invalid", "too_many_pulses"),
    (paid(metadata_key=None), "invalid", "no_cabinet"),
    (paid(payment_status="unpaid"), "pending", "awaiting_payment"),
    (paid(payment_status="no_payment_required"), "invalid", "payment_status_no_payment_required"),
    (se.event(se.checkout_session("cab1", 100, payment_status="unpaid"), "checkout.session.async_payment_failed"),
     "failed", ""),
    (se.event(se.checkout_session("cab1", 100, payment_status="unpaid", status="expired"),
              "checkout.session.expired"), "expired", ""),
], ids=["unknown cabinet", "malformed cabinet id", "disabled cabinet", "wrong amount", "zero amount",
        "wrong currency", "too many pulses", "no cabinet at all", "payment_status unpaid",
        "no payment required", "async payment failed", "session expired"])
def test_recorded_without_credit(client, ledger, evt, state, reason):
    r = post(client, evt)
    assert r.status_code == 200
    p = ledger.get_payment(evt["data"]["object"]["id"])
    assert (p["state"], p["reason"], p["credits"], p["pulses"], p["seq"]) == (state, reason, 0, 0, None)
    assert ledger.get_cabinet("cab1")["next_seq"] == 1, "a sequence number was spent on no credit"


@pytest.mark.parametrize("session, credits, pulses", [
    (se.checkout_session("cab2", 50, metadata_key="machine_id"), 1, 1),
    (se.checkout_session("cab2", 100, metadata_key=None, client_reference_id="cab2"), 2, 2),
    (se.checkout_session("cab1", 300, extra_metadata={"credits": "99"}), 3, 6),
], ids=["machine_id (the seed's shape)", "client_reference_id", "metadata credits ignored"])
def test_cabinet_from_each_place_and_credits_from_the_amount(client, ledger, session, credits, pulses):
    assert post(client, se.event(session)).status_code == 200
    p = ledger.get_payment(session["id"])
    assert (p["state"], p["credits"], p["pulses"]) == ("queued", credits, pulses)


def test_other_event_types_are_acknowledged_and_ignored(client, ledger):
    r = post(client, se.event({"id": "pi_1", "object": "payment_intent"}, "payment_intent.succeeded"))
    assert r.status_code == 200 and r.json["ignored"] == "payment_intent.succeeded"
    assert count(ledger, "payments") == 0 and count(ledger, "events") == 0


# --- idempotency ---------------------------------------------------------------------------------

@BOTH_BACKENDS
def test_same_event_twice_credits_once(client, ledger):
    evt = paid()
    assert [post(client, evt).json["result"] for _ in range(2)] == ["queued", "duplicate_event"]
    assert count(ledger, "payments") == 1 and ledger.get_cabinet("cab1")["next_seq"] == 2


@pytest.mark.parametrize("first, second", [
    ("checkout.session.completed", "checkout.session.async_payment_succeeded"),
    ("checkout.session.async_payment_succeeded", "checkout.session.completed"),
])
def test_two_event_types_for_one_session_credit_once(client, ledger, first, second):
    session = se.checkout_session("cab1", 100)
    assert post(client, se.event(session, first)).json["result"] == "queued"
    assert post(client, se.event(session, second)).json["result"] == "duplicate_session"
    assert ledger.get_payment(session["id"])["seq"] == 1 and ledger.get_cabinet("cab1")["next_seq"] == 2


@BOTH_BACKENDS
def test_async_payment_pending_then_succeeded_credits_once(client, ledger):
    session = se.checkout_session("cab1", 100, payment_status="unpaid")
    assert post(client, se.event(session)).json["result"] == "pending"
    done = dict(session, payment_status="paid")
    assert post(client, se.event(done, "checkout.session.async_payment_succeeded")).json["result"] == "queued"
    assert post(client, se.event(done, "checkout.session.async_payment_failed")).json["result"] == \
        "duplicate_session"
    p = ledger.get_payment(session["id"])
    assert (p["state"], p["credits"], p["seq"]) == ("queued", 1, 1)


@BOTH_BACKENDS
def test_async_payment_pending_then_failed_gives_nothing(client, ledger):
    session = se.checkout_session("cab1", 100, payment_status="unpaid")
    post(client, se.event(session))
    assert post(client, se.event(session, "checkout.session.async_payment_failed")).json["result"] == "failed"
    assert ledger.get_payment(session["id"])["state"] == "failed"


@BOTH_BACKENDS
def test_concurrent_deliveries_of_one_event_credit_once(app, ledger):
    evt = paid()
    body = se.encode(evt)
    header = se.signature_header(body, SECRET)
    results, start = [], threading.Barrier(8)

    def deliver():
        client = app.test_client()
        start.wait(10)
        r = client.post("/stripe/webhook", data=body, headers={"Stripe-Signature": header})
        results.append((r.status_code, r.json["result"]))

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == [(200, "duplicate_event")] * 7 + [(200, "queued")]
    assert count(ledger, "payments") == 1 and ledger.get_cabinet("cab1")["next_seq"] == 2


@BOTH_BACKENDS
def test_concurrent_payments_get_strictly_increasing_seqs(app, ledger):
    events = [paid() for _ in range(12)]
    errors = []

    def deliver(evts):
        client = app.test_client()
        for evt in evts:
            r = post(client, evt)
            if r.status_code != 200:
                errors.append(r.status_code)

    threads = [threading.Thread(target=deliver, args=(events[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    payments = sorted((ledger.get_payment(e["data"]["object"]["id"]) for e in events), key=lambda p: p["queued_at"])
    assert sorted(p["seq"] for p in payments) == list(range(1, 13))


# --- storage failure: 5xx so Stripe retries --------------------------------------------------------

@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_storage_failure_answers_503_and_a_retry_succeeds(request, tmp_path, backend):
    app = create_app({"ARCADE_DB": _db(request, tmp_path, backend), "STRIPE_WEBHOOK_SECRET": SECRET,
                      "ARCADE_DB_BUSY_TIMEOUT": 100})
    with open_ledger(app.config["ARCADE_DB"]) as ledger:
        ledger.add_cabinet("cab1", price_cents=100)
    client, evt = app.test_client(), paid()
    # Another process holds the write lock for longer than the relay waits.
    if backend == "sqlite":
        locker = sqlite3.connect(app.config["ARCADE_DB"], isolation_level=None)
        hold, release = "BEGIN IMMEDIATE", "ROLLBACK"
    else:
        import psycopg
        from relay.backends import WRITE_LOCK
        locker = psycopg.connect(app.config["ARCADE_DB"], autocommit=True)
        hold, release = "SELECT pg_advisory_lock(%d)" % WRITE_LOCK, "SELECT pg_advisory_unlock(%d)" % WRITE_LOCK
    try:
        locker.execute(hold)
        r = post(client, evt)
        assert r.status_code == 503 and "retry" in r.json["error"]
    finally:
        locker.execute(release)
        locker.close()
    with open_ledger(app.config["ARCADE_DB"]) as ledger:
        assert ledger.get_payment(evt["data"]["object"]["id"]) is None
        assert count(ledger, "events") == 0, "the event id was kept: Stripe's retry would be swallowed"
    # Stripe retries the same event: now it is recorded.
    assert post(client, evt).json["result"] == "queued"


# --- start-up and health ---------------------------------------------------------------------------

@pytest.mark.parametrize("value", [None, "", "   "], ids=["unset", "empty", "blank"])
def test_refuses_to_start_without_webhook_secret(tmp_path, value):
    settings = {"ARCADE_DB": str(tmp_path / "a.db")}
    if value is not None:
        settings["STRIPE_WEBHOOK_SECRET"] = value
    with pytest.raises(ConfigError, match="STRIPE_WEBHOOK_SECRET is not set"):
        create_app(settings)
    assert not (tmp_path / "a.db").exists()


def test_healthz_reports_database_and_broker_to_the_token_only(client, broker, app):
    app.config["ARCADE_METRICS_TOKEN"] = "t0ken-for-metrics"
    auth = {"Authorization": "Bearer t0ken-for-metrics"}
    r = client.get("/healthz", headers=auth)
    assert r.status_code == 503 and r.json["db"] == "ok" and r.json["broker"] == "down"
    app.config["MQTT_URL"] = broker.url
    app.extensions["arcade"].pop("broker_probe")   # the probe is cached (PROBE_EVERY): start afresh
    r = client.get("/healthz", headers=auth)
    assert r.status_code == 200
    assert r.json["broker"] == "ok" and r.json["ledger"] == app.config["ARCADE_LEDGER_ID"][:8]
    assert r.json["pending"] == 0
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "t0ken-for-metrics"}):
        r = client.get("/healthz", headers=headers)
        assert r.status_code == 200 and r.json == {"status": "ok"}
