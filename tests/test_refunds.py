"""Refunds that can never also pay out (issue 13): every order of refund and publish, Stripe's refusals
and lost answers, Dashboard refunds and disputes through the webhook. Stripe is the fake Stripe server
on loopback (tools/lab/fake_stripe.py) reached by the real stripe-python client; the oracle for "was
it refunded" is the fake's own list of refunds, never the relay's ledger."""

import pytest

from relay import create_app, refunds
from relay.ledger import open_ledger
from tools.lab import stripe_events as se
from tools.lab.fake_stripe import FakeStripe

SECRET = "whsec_test_refunds"
KEY = "sk_test_refunds_0123456789"


@pytest.fixture
def fake():
    with FakeStripe(api_key=KEY) as f:
        yield f


@pytest.fixture
def app(tmp_path, fake):
    db = str(tmp_path / "arcade.db")
    with open_ledger(db) as led:
        led.add_cabinet("cab1", name="Galaga", price_cents=100, bundles=[(3, 250)], coins_per_credit=2)
    return create_app({"ARCADE_DB": db, "STRIPE_WEBHOOK_SECRET": SECRET, "STRIPE_API_KEY": KEY,
                       "STRIPE_API_BASE": fake.url})


def post(client, evt):
    body = se.encode(evt)
    r = client.post("/stripe/webhook", data=body, headers={"Stripe-Signature": se.signature_header(body, SECRET),
                                                           "Content-Type": "application/json"})
    assert r.status_code == 200, r.get_data(as_text=True)
    return r.get_json()


def paid(fake, client, cabinet="cab1", amount=100):
    """A session paid on the fake Stripe, its webhook delivered to the relay: the session id."""
    s = fake.add_session(amount=amount, metadata={"cabinet_id": cabinet})
    fake.pay(s["id"])
    post(client, fake.events[-1])
    return s["id"]


def stripe_refunds(fake, session_id):
    pi = fake.sessions[session_id]["payment_intent"]
    return [r for r in fake.refunds.values() if r["payment_intent"] == pi]


def do_refund(app, ledger, sid, **kw):
    return refunds.refund(ledger, app.config, sid, "tester", "test", **kw)


def test_a_credit_never_published_is_withdrawn_and_refunded_once(app, client, ledger, fake):
    first, second = paid(fake, client), paid(fake, client)
    # the dispatcher's claim takes the head (seq 1) only: seq 2 was never published
    heads = ledger.next_deliveries()
    assert [h["session_id"] for h in heads] == [first]
    done = do_refund(app, ledger, second, reason="cabinet broken")
    assert done["after_play"] is False and done["amount"] == 100
    assert ledger.get_payment(second)["state"] == "refunded"
    assert len(stripe_refunds(fake, second)) == 1
    # refunds go with one idempotency key per payment
    posts = [r for r in fake.api_requests("POST") if r.path == "/v1/refunds"]
    assert [r.idempotency_key for r in posts] == [refunds.idempotency_key(second)]
    # after seq 1 is acked, the dispatcher never gets the refunded seq 2
    ledger.record_ack(first, 1, "applied", ack_pulses=2, ack_last=1)
    assert ledger.next_deliveries() == []
    # a second refund is a clear no-op
    with pytest.raises(refunds.RefundError, match="already refunded"):
        do_refund(app, ledger, second)
    assert len(stripe_refunds(fake, second)) == 1


def test_refund_claims_first_then_the_dispatcher_never_publishes_it(app, client, ledger, fake):
    sid = paid(fake, client)
    do_refund(app, ledger, sid)
    assert ledger.next_deliveries() == [], "a refunded credit must never be handed to the dispatcher"
    assert ledger.get_payment(sid)["published_at"] is None


def test_a_published_unacknowledged_credit_is_refused(app, client, ledger, fake):
    sid = paid(fake, client)
    assert [h["session_id"] for h in ledger.next_deliveries()] == [sid]    # the dispatcher claims it first
    for force in (False, True):
        with pytest.raises(refunds.RefundError, match="may still pulse"):
            do_refund(app, ledger, sid, force=force)
    assert ledger.get_payment(sid)["state"] == "queued"
    assert stripe_refunds(fake, sid) == [] and not fake.api_requests("POST", "/v1/refunds")


def test_an_applied_credit_needs_force_and_says_the_play_was_given(app, client, ledger, fake):
    sid = paid(fake, client)
    ledger.next_deliveries()
    ledger.mark_sent(sid, 1)
    ledger.record_ack(sid, 1, "applied", ack_pulses=2, ack_last=1)
    with pytest.raises(refunds.RefundError, match="was played"):
        do_refund(app, ledger, sid)
    assert stripe_refunds(fake, sid) == []
    done = do_refund(app, ledger, sid, force=True)
    assert done["after_play"] is True
    assert ledger.get_payment(sid)["state"] == "applied"
    assert ledger.get_refund(sid)["after_play"] == 1 and len(stripe_refunds(fake, sid)) == 1


def test_an_invalid_payment_is_refunded(app, client, ledger, fake):
    sid = paid(fake, client, amount=77)          # no price of cab1 is 0.77
    assert ledger.get_payment(sid)["state"] == "invalid"
    do_refund(app, ledger, sid)
    assert ledger.get_payment(sid)["state"] == "refunded" and stripe_refunds(fake, sid)[0]["amount"] == 77


@pytest.mark.parametrize("make, match", [
    (lambda led, fake, client: "cs_test_nope", "no payment"),
    (lambda led, fake, client: _pending(led), "no money was taken"),
])
def test_nothing_to_refund_is_a_clear_no_op(app, client, ledger, fake, make, match):
    sid = make(ledger, fake, client)
    with pytest.raises(refunds.RefundError, match=match):
        do_refund(app, ledger, sid)
    assert not fake.api_requests("POST", "/v1/refunds")


def _pending(led):
    led.record_checkout("evt_p", "checkout.session.completed", "cs_test_pending", "pending", cabinet_id="cab1")
    return "cs_test_pending"


def test_stripe_refusing_leaves_the_payment_as_it_was(app, client, ledger, fake):
    sid = paid(fake, client)
    paid(fake, client)
    fake.fail_next_refund(400, "invalid_request_error", "This account cannot refund now.")
    with pytest.raises(refunds.RefundError, match="cannot refund now.*as it was"):
        do_refund(app, ledger, sid)
    assert ledger.get_payment(sid)["state"] == "queued" and stripe_refunds(fake, sid) == []
    assert ledger.get_refund(sid)["state"] == "failed"
    assert [h["session_id"] for h in ledger.next_deliveries()] == [sid], "the credit is delivered as usual"


def test_a_lost_answer_holds_the_credit_and_the_retry_cannot_refund_twice(app, client, ledger, fake):
    sid = paid(fake, client)
    fake.fail_next_refund(500, "api_error", "upstream timeout", made=True)
    with pytest.raises(refunds.RefundError, match="may or may not have been made"):
        do_refund(app, ledger, sid)
    assert len(stripe_refunds(fake, sid)) == 1          # Stripe did refund
    assert ledger.get_payment(sid)["state"] == "refunding"
    assert ledger.next_deliveries() == [], "a credit whose refund may have happened must not be sent"
    done = do_refund(app, ledger, sid)                   # same idempotency key: Stripe answers the same refund
    assert len(stripe_refunds(fake, sid)) == 1 and done["refund_id"] == stripe_refunds(fake, sid)[0]["id"]
    assert ledger.get_payment(sid)["state"] == "refunded"


def test_dashboard_refund_of_an_undelivered_credit_withdraws_it(app, client, ledger, fake):
    sid = paid(fake, client)
    fake.dashboard_refund(sid)
    assert post(client, fake.events[-1])["result"] == "refund_recorded"
    assert ledger.get_payment(sid)["state"] == "refunded"
    assert ledger.next_deliveries() == []
    assert post(client, fake.events[-1])["result"] == "known"      # Stripe resends: nothing more


def test_dashboard_refund_after_play_is_recorded_as_such(app, client, ledger, fake):
    sid = paid(fake, client)
    ledger.next_deliveries()
    ledger.record_ack(sid, 1, "applied", ack_pulses=2, ack_last=1)
    fake.dashboard_refund(sid)
    post(client, fake.events[-1])
    assert ledger.get_payment(sid)["state"] == "applied"
    r = ledger.get_refund(sid)
    assert (r["state"], r["after_play"], r["source"]) == ("succeeded", 1, "dashboard")


def test_disputes_are_recorded_from_created_to_closed(app, client, ledger, fake):
    sid = paid(fake, client)
    dp = fake.open_dispute(sid, reason="product_not_received")
    assert post(client, fake.events[-1])["result"] == "dispute_recorded"
    [d] = ledger.list_disputes(open_only=True)
    assert (d["session_id"], d["status"], d["reason"], d["amount"]) == (sid, "needs_response",
                                                                       "product_not_received", 100)
    fake.close_dispute(dp["id"], "lost")
    post(client, fake.events[-1])
    assert ledger.list_disputes(open_only=True) == []
    assert ledger.list_disputes()[0]["status"] == "lost"
    assert [a["action"] for a in ledger.list_audit()][:2] == ["dispute.closed", "dispute.created"]


def test_the_players_page_says_refunded(app, client, ledger, fake):
    sid = paid(fake, client)
    do_refund(app, ledger, sid)
    view = client.get("/paid/status?session_id=" + sid).get_json()
    assert view["state"] == "refunded" and view["done"] is True and "No credit will be added" in view["message"]
    assert "Refunded" in client.get("/paid?session_id=" + sid).get_data(as_text=True)


def test_arcade_fake_stripe_runs_on_a_port(tmp_path):
    import json
    import os
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    from tools.lab.broker import free_port
    port = free_port()
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "fake-stripe", "--port", str(port)], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        assert "fake Stripe on http://127.0.0.1:%d" % port in proc.stdout.readline().decode()
        req = urllib.request.Request("http://127.0.0.1:%d/v1/refunds" % port, data=b"payment_intent=pi_nope",
                                     headers={"Authorization": "Bearer sk_test_x"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 400 and json.load(e.value)["error"]["code"] == "resource_missing"
        e.value.close()
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()


def test_a_refund_that_fails_later_is_recorded_and_alerted(app, client, ledger, fake):
    from relay import alerts
    sid = paid(fake, client)
    done = do_refund(app, ledger, sid)
    refund = dict(fake.refunds[done["refund_id"]], status="failed", failure_reason="expired_or_canceled_card")
    assert post(client, se.event(refund, type_="refund.updated"))["result"] == "refund_failed"
    r = ledger.get_refund(sid)
    assert r["state"] == "failed" and "expired_or_canceled_card" in r["error"]
    assert ledger.get_payment(sid)["state"] == "refunded"        # the withdrawn credit stays withdrawn
    assert "refund_failed:" + sid in alerts.Alerter({"ARCADE_DB": ledger.path}).conditions(ledger, 0)
    from relay.console import create_app as console_app
    from test_console import BASE, PASSWORD, hashed, sign_in
    ledger.add_operator("alice", hashed(PASSWORD))
    console = console_app({"ARCADE_DB": ledger.path}).test_client()
    assert sign_in(console).status_code == 303
    assert "Refund failed after Stripe accepted it" in console.get(BASE + "/admin/").get_data(as_text=True)
    other = dict(refund, id="re_unknown", metadata={}, payment_intent="pi_unknown")
    assert post(client, se.event(other, type_="refund.updated"))["result"] == "unmatched"
