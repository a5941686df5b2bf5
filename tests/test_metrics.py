"""GET /metrics (issue 13): Prometheus text through prometheus_client, names arcade_<thing>_<unit>,
no session id anywhere, behind a bearer token when ARCADE_METRICS_TOKEN is set."""
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay import create_app
from relay.ledger import open_ledger
from tools.lab import stripe_events as se

SECRET = "whsec_test_metrics"
TOKEN = "metrics-token-0123456789abcdef"


@pytest.fixture
def app(tmp_path):
    db = str(tmp_path / "arcade.db")
    with open_ledger(db) as led:
        led.add_cabinet("cab1", name="Galaga", price_cents=100)
        led.add_cabinet("cab2", name="Pinball", price_cents=100)
        led.record_status("cab1", True, {"online": True})
    return create_app({"ARCADE_DB": db, "STRIPE_WEBHOOK_SECRET": SECRET, "ARCADE_METRICS_TOKEN": TOKEN})


def scrape(client, token=TOKEN):
    r = client.get("/metrics", headers={"Authorization": "Bearer " + token} if token else {})
    return r


def samples(text):
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def pay(client, session_id, amount=100, sign=True):
    body = se.encode(se.event(se.checkout_session("cab1", amount, session_id=session_id)))
    header = se.signature_header(body, SECRET if sign else "whsec_wrong")
    return client.post("/stripe/webhook", data=body, headers={"Stripe-Signature": header})


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Bearer " + TOKEN[:-1], "Basic " + TOKEN, TOKEN,
                                    "Bearer " + TOKEN + "x" * 2000])
def test_metrics_need_the_token(client, header):
    r = client.get("/metrics", headers={"Authorization": header} if header else {})
    assert r.status_code == 401 and b"arcade_" not in r.data


def test_metrics_from_the_ledger_and_the_webhook(client, ledger):
    for i in range(3):
        assert pay(client, "cs_test_metric_%d" % i).status_code == 200
    assert pay(client, "cs_test_metric_bad", amount=55).status_code == 200     # invalid amount
    assert pay(client, "cs_test_forged", sign=False).status_code == 400
    ledger.next_deliveries()
    ledger.record_ack("cs_test_metric_0", 1, "applied", ack_pulses=1, ack_last=1)
    r = scrape(client)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    text = r.get_data(as_text=True)
    s = samples(text)
    assert s[("arcade_payments", (("state", "applied"),))] == 1
    assert s[("arcade_payments", (("state", "queued"),))] == 2
    assert s[("arcade_payments", (("state", "invalid"),))] == 1
    assert s[("arcade_credits_in_flight", ())] == 2
    assert s[("arcade_cabinets_online", ())] == 1 and s[("arcade_cabinet_online", (("cabinet", "cab2"),))] == 0
    assert s[("arcade_webhook_duration_seconds_count", ())] == 5
    assert s[("arcade_webhook_refused_total", ())] == 1
    assert s[("arcade_webhook_to_applied_seconds_count", ())] == 1
    # no session id, in a label or anywhere
    assert "cs_test" not in text
    names = {fam.name for fam in text_string_to_metric_families(text)}
    assert all(re.fullmatch(r"arcade_[a-z_]+", n) for n in names), names


def test_without_a_token_metrics_are_open(tmp_path):
    app = create_app({"ARCADE_DB": str(tmp_path / "o.db"), "STRIPE_WEBHOOK_SECRET": SECRET})
    assert app.test_client().get("/metrics").status_code == 200
