"""The player's pages through Flask's test client; Stripe calls through real stripe-python to the fake
Stripe server on loopback, which records what was sent."""
import re
import sqlite3

import pytest

from relay import create_app
from relay.ledger import open_ledger
from tools.lab import stripe_events as se
from tools.lab.fake_stripe import FakeStripe

SECRET = "whsec_test_pay"
API_KEY = "sk_test_pay_123456789"


@pytest.fixture
def fake():
    with FakeStripe(api_key=API_KEY) as f:
        yield f


def make_app(tmp_path, fake, **extra):
    cfg = {"TESTING": True, "ARCADE_DB": str(tmp_path / "arcade.db"), "STRIPE_WEBHOOK_SECRET": SECRET,
           "MQTT_URL": "mqtt://127.0.0.1:1", "STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": fake.url,
           "ARCADE_NAME": "Pixel Palace", "ARCADE_PUBLIC_URL": "https://pay.pixel.test", "ARCADE_TZ": "Europe/Berlin"}
    cfg.update(extra)
    return create_app(cfg)


@pytest.fixture
def app(tmp_path, fake):
    app = make_app(tmp_path, fake)
    with open_ledger(app.config["ARCADE_DB"]) as led:
        led.add_cabinet("cab1", name="Galaga", price_cents=100, bundles=[(3, 250)], coins_per_credit=2)
        led.add_cabinet("cab2", name="Pac-Man", price_cents=50)
        led.add_cabinet("gone", name="Old Pinball", price_cents=100)
        led.set_enabled("gone", False)
        led.add_cabinet("dark", name="Asteroids", price_cents=100)
        led.add_cabinet("paused", name="Tempest", price_cents=100)
        for cab in ("cab1", "cab2", "gone"):
            led.record_status(cab, True, {"t": "status", "cab": cab, "online": True})
        led.record_status("paused", True, {"t": "status", "cab": "paused", "online": True, "inhibited": True})
    yield app


def form_for(page, key):
    """The hidden fields of the form that buys option `key` on a rendered pay page."""
    html = page.get_data(as_text=True)
    block = re.search(r'<form method="post"[^>]*>\s*<input type="hidden" name="option" value="%s">(.*?)</form>'
                      % re.escape(key), html, re.S)
    assert block, "no form for option %s" % key
    fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', block.group(0)))
    return fields


def buy(client, cab, key, environ=None):
    page = client.get("/pay/%s" % cab)
    return client.post("/pay/%s" % cab, data=form_for(page, key), environ_base=environ or {})


def count(ledger, table):
    with sqlite3.connect(ledger.path) as db:
        return db.execute("SELECT COUNT(*) FROM %s" % table).fetchone()[0]


def webhook(client, evt):
    body = se.encode(evt)
    return client.post("/stripe/webhook", data=body, headers={
        "Content-Type": "application/json", "Stripe-Signature": se.signature_header(body, SECRET)})


# -- the front door ---------------------------------------------------------------------------------

def test_pay_page_shows_arcade_game_prices_bundles_and_ready(client):
    r = client.get("/pay/cab1")
    html = r.get_data(as_text=True)
    assert r.status_code == 200
    assert "Pixel Palace" in html and "<h1 class=\"game\">Galaga</h1>" in html
    assert "Ready to play" in html
    assert "<strong>$1.00</strong> per play" in html
    assert re.search(r"1 play\s*</span>\s*<span class=\"amount\">\$1.00", html)
    assert re.search(r"3 plays\s*</span>\s*<span class=\"amount\">\$2.50\s*<small class=\"save\">save 17%", html)
    assert "promo-" not in html
    assert r.headers["Cache-Control"] == "no-store" and "script-src 'self'" in r.headers["Content-Security-Policy"]


@pytest.mark.parametrize("cab, status, text", [
    ("nope", 404, "We don&#39;t know this cabinet"),
    ("bad id!", 404, "We don&#39;t know this cabinet"),
    ("gone", 410, "This cabinet no longer takes payments"),
])
def test_unknown_and_disabled_cabinets(client, fake, cab, status, text):
    for r in (client.get("/pay/%s" % cab), client.post("/pay/%s" % cab, data={"option": "1"})):
        assert r.status_code == status
        assert text in r.get_data(as_text=True)
        assert "<form" not in r.get_data(as_text=True)
    assert fake.api_requests() == []


@pytest.mark.parametrize("cab, text", [("dark", "This cabinet is offline right now"),
                                       ("paused", "This cabinet is paused")])
def test_offline_or_inhibited_cabinet_sells_nothing(client, fake, ledger, cab, text):
    r = client.get("/pay/%s" % cab)
    html = r.get_data(as_text=True)
    assert r.status_code == 200 and text in html and "Nothing has been charged" in html
    assert 'method="post"' not in html
    forged = client.post("/pay/%s" % cab, data={"option": "1", "amount": "100", "credits": "1", "nonce": "x" * 16})
    assert forged.status_code == 409 and text in forged.get_data(as_text=True)
    assert fake.api_requests() == [] and count(ledger, "checkouts") == 0


def test_choosing_a_bundle_creates_a_checkout_session_and_records_what_it_owes(client, fake, ledger):
    r = buy(client, "cab1", "3")
    assert r.status_code == 303
    (req,) = fake.api_requests("POST")
    sid = next(iter(fake.sessions))
    assert r.headers["Location"] == "%s/pay/%s" % (fake.url, sid)
    f = req.form
    assert f["mode"] == "payment"
    assert f["line_items[0][price_data][unit_amount]"] == "250"
    assert f["line_items[0][price_data][currency]"] == "usd"
    assert f["line_items[0][price_data][product_data][name]"] == "Pixel Palace - Galaga, 3 plays"
    assert f["metadata[cabinet_id]"] == "cab1" and f["metadata[credits]"] == "3"
    assert f["client_reference_id"] == "cab1"
    assert f["success_url"] == "https://pay.pixel.test/paid?session_id={CHECKOUT_SESSION_ID}"
    assert f["cancel_url"] == "https://pay.pixel.test/cancel?cabinet=cab1"
    assert req.idempotency_key.startswith("arcade-pay-") and req.api_key == API_KEY
    row = ledger.get_expected_checkout(sid)
    assert (row["cabinet_id"], row["credits"], row["amount"], row["currency"]) == ("cab1", 3, 250, "usd")


def test_double_submit_gives_the_same_session_and_one_record(client, fake, ledger):
    fields = form_for(client.get("/pay/cab1"), "1")
    a = client.post("/pay/cab1", data=fields)
    b = client.post("/pay/cab1", data=fields)
    assert a.status_code == b.status_code == 303 and a.headers["Location"] == b.headers["Location"]
    assert len(fake.sessions) == 1 and count(ledger, "checkouts") == 1
    keys = {r.idempotency_key for r in fake.api_requests("POST")}
    assert len(keys) == 1
    c = buy(client, "cab1", "1")        # a fresh page for the same bundle: the open session again
    assert c.headers["Location"] == a.headers["Location"] and len(fake.sessions) == 1
    d = buy(client, "cab1", "3")        # another bundle is another purchase
    assert d.headers["Location"] != a.headers["Location"] and len(fake.sessions) == 2
    fake.pay(next(iter(fake.sessions)))
    webhook(client, fake.events[-1])
    e = buy(client, "cab1", "1")        # once paid, the same bundle is a new purchase
    assert e.headers["Location"] != a.headers["Location"] and len(fake.sessions) == 3


@pytest.mark.parametrize("change, status", [
    ({"amount": "90"}, 409),            # page shown under another price
    ({"credits": "5"}, 409),
    ({"option": "7"}, 400),             # no such option
    ({"nonce": ""}, 400),
])
def test_a_purchase_never_charges_what_was_not_shown(client, fake, ledger, change, status):
    fields = form_for(client.get("/pay/cab1"), "3")
    fields.update(change)
    r = client.post("/pay/cab1", data=fields)
    assert r.status_code == status
    assert fake.api_requests() == [] and count(ledger, "checkouts") == 0
    if status == 409:
        assert "Prices have just changed" in r.get_data(as_text=True)


def test_active_promotion_is_shown_and_charged(app, client, fake, ledger):
    ledger.add_promotion("cab1", "percent", 20, range(7), 0, 1440, "Opening week")
    html = client.get("/pay/cab1").get_data(as_text=True)
    assert "Opening week" in html and "20% off" in html
    assert re.search(r"<s>\$2.50</s> \$2.00", html)
    r = buy(client, "cab1", "3")
    assert r.status_code == 303
    (req,) = fake.api_requests("POST")
    assert req.form["line_items[0][price_data][unit_amount]"] == "200"
    sid = next(iter(fake.sessions))
    assert ledger.get_expected_checkout(sid)["amount"] == 200
    # The webhook then credits what was recorded: 200 buys 3 credits although the price table says 2.50.
    fake.pay(sid)
    assert webhook(client, fake.events[-1]).get_json()["result"] == "queued"
    p = ledger.get_payment(sid)
    assert (p["state"], p["credits"], p["pulses"], p["amount"]) == ("queued", 3, 6, 200)


def test_bonus_promotion_credits_the_bonus(client, fake, ledger):
    ledger.add_promotion(None, "bonus", 1, range(7), 0, 1440, "")
    r = buy(client, "cab2", "1")
    assert r.status_code == 303
    sid = next(iter(fake.sessions))
    fake.pay(sid)
    webhook(client, fake.events[-1])
    assert ledger.get_payment(sid)["credits"] == 2


def test_webhook_flags_a_payment_that_differs_from_what_was_recorded(client, fake, ledger):
    buy(client, "cab1", "3")
    sid = next(iter(fake.sessions))
    fake.pay(sid)
    session = dict(fake.events[-1]["data"]["object"], amount_total=100)   # paid 1.00 for a 2.50 bundle
    assert webhook(client, se.event(session)).status_code == 200
    p = ledger.get_payment(sid)
    assert (p["state"], p["reason"], p["credits"]) == ("invalid", "amount_mismatch", 0)


def buy_and_pay(client, fake, cab, key, environ=None):
    """Buy, and pay what was bought: the next purchase is a new session (an open one is reused)."""
    r = buy(client, cab, key, environ)
    if r.status_code == 303:
        fake.pay(r.headers["Location"].rsplit("/", 1)[1])
        assert webhook(client, fake.events[-1]).status_code == 200
    return r


def test_rate_limit_per_client_and_cabinet(client, fake, ledger):
    for _ in range(5):
        assert buy_and_pay(client, fake, "cab2", "1").status_code == 303
    r = buy(client, "cab2", "1")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert "Too many payment attempts" in r.get_data(as_text=True)
    assert len(fake.sessions) == 5
    assert buy(client, "cab1", "1").status_code == 303                              # another cabinet
    assert buy(client, "cab2", "1", {"REMOTE_ADDR": "10.1.2.3"}).status_code == 303  # another phone


@pytest.mark.parametrize("hops, separate", [(0, False), (1, True)])
def test_rate_limit_behind_a_reverse_proxy_keys_on_the_forwarded_client(tmp_path, fake, hops, separate):
    # Behind nginx every request comes from 127.0.0.1: with ARCADE_PROXY_HOPS=1 each phone (the
    # proxy's X-Forwarded-For) has its own budget; with 0 the header is not trusted (spoofable).
    app = make_app(tmp_path, fake, ARCADE_PROXY_HOPS=str(hops))
    with open_ledger(app.config["ARCADE_DB"]) as led:
        led.add_cabinet("cab2", name="Pac-Man", price_cents=50)
        led.record_status("cab2", True, {"t": "status", "cab": "cab2", "online": True})
    client = app.test_client()

    def buy_from(phone):
        page = client.get("/pay/cab2", headers={"X-Forwarded-For": phone})
        r = client.post("/pay/cab2", data=form_for(page, "1"), headers={"X-Forwarded-For": phone},
                        environ_base={"REMOTE_ADDR": "127.0.0.1"})
        if r.status_code == 303:
            fake.pay(r.headers["Location"].rsplit("/", 1)[1])
            assert webhook(client, fake.events[-1]).status_code == 200
        return r
    for _ in range(5):
        assert buy_from("203.0.113.7").status_code == 303
    assert buy_from("203.0.113.7").status_code == 429
    assert buy_from("198.51.100.9").status_code == (303 if separate else 429)


@pytest.mark.parametrize("value", ["-1", "many", "9"])
def test_proxy_hops_must_be_a_small_count(tmp_path, fake, value):
    from relay.config import ConfigError
    with pytest.raises(ConfigError, match="ARCADE_PROXY_HOPS"):
        make_app(tmp_path, fake, ARCADE_PROXY_HOPS=value)


def test_requests_are_bounded(client, fake):
    assert client.get("/pay/cab1?x=" + "a" * 600).status_code == 414
    assert client.get("/paid?session_id=" + "a" * 600).status_code == 414
    r = client.post("/pay/cab1", data={"option": "1", "pad": "x" * 5000})
    assert r.status_code == 413
    assert fake.api_requests() == []


def test_stripe_unreachable_charges_nothing_and_says_so(tmp_path, app, client, fake, ledger):
    fields = form_for(client.get("/pay/cab1"), "1")
    fake.stop()
    r = client.post("/pay/cab1", data=fields)
    assert r.status_code == 502 and "Nothing was charged" in r.get_data(as_text=True)
    assert count(ledger, "checkouts") == 0


def test_without_api_key_the_page_sells_nothing(tmp_path, fake):
    app = make_app(tmp_path, fake, STRIPE_API_KEY="")
    with open_ledger(app.config["ARCADE_DB"]) as led:
        led.add_cabinet("cab1", price_cents=100)
        led.record_status("cab1", True)
    html = app.test_client().get("/pay/cab1").get_data(as_text=True)
    assert "isn't set up" in html and 'method="post"' not in html


# -- /paid and /cancel ------------------------------------------------------------------------------

def test_paid_page_follows_the_payment_to_credits_added(client, fake, ledger):
    buy(client, "cab1", "3")
    sid = next(iter(fake.sessions))
    status = lambda: client.get("/paid/status?session_id=" + sid).get_json()  # noqa: E731
    assert status()["state"] == "waiting"
    page = client.get("/paid?session_id=" + sid).get_data(as_text=True)
    assert "Waiting for the payment confirmation" in page and 'http-equiv="refresh"' in page and "paid.js" in page
    fake.pay(sid)
    webhook(client, fake.events[-1])
    s = status()
    assert (s["state"], s["step"], s["credits"], s["cabinet"]) == ("paid", 1, 3, "Galaga")
    seq = ledger.get_payment(sid)["seq"]
    ledger.mark_sent(sid, seq)
    assert status()["state"] == "on_its_way"
    ledger.record_ack(sid, seq, "applied", ack_pulses=6, ack_last=seq)
    s = status()
    assert (s["state"], s["step"], s["done"]) == ("applied", 3, True)
    page = client.get("/paid?session_id=" + sid).get_data(as_text=True)
    assert "Credits added" in page and "3 credits added to Galaga. Press START!" in page
    assert 'http-equiv="refresh"' not in page


def test_paid_page_when_cabinet_unreachable_says_what_happens_next(client, fake, ledger):
    buy(client, "cab1", "1")
    sid = next(iter(fake.sessions))
    fake.pay(sid)
    webhook(client, fake.events[-1])
    ledger.record_status("cab1", False)
    s = client.get("/paid/status?session_id=" + sid).get_json()
    assert s["state"] == "unreachable" and s["tone"] == "warn"
    assert "will reach the cabinet automatically as soon as it is back online" in s["message"]


@pytest.mark.parametrize("query", ["session_id=cs_test_notours123", "session_id=<script>", "", "session_id="])
def test_paid_page_for_a_session_that_is_not_ours_shows_nothing(client, ledger, query):
    r = client.get("/paid?" + query)
    html = r.get_data(as_text=True)
    assert r.status_code == 404 and "Nothing to show" in html
    assert "Galaga" not in html and "cs_test" not in html and "<script>" not in html
    assert client.get("/paid/status?" + query).get_json() == {"state": "unknown"}


def test_cancel_page(client):
    html = client.get("/cancel?cabinet=cab1").get_data(as_text=True)
    assert "Nothing was charged" in html and 'href="/pay/cab1"' in html and "Try again" in html
    html = client.get("/cancel?cabinet=nope").get_data(as_text=True)
    assert "Nothing was charged" in html and "Try again" not in html


# -- Payment Links mode -----------------------------------------------------------------------------

def test_payment_link_session_is_credited_to_the_mapped_cabinet(client, fake, ledger):
    link = fake.add_payment_link(50, metadata={})
    ledger.link_payment_link(link, "cab2")
    s = fake._create({"mode": "payment", "line_items": [{"quantity": "1", "price_data": {
        "currency": "usd", "unit_amount": "50"}}]}, payment_link=link)
    fake.pay(s["id"])
    assert webhook(client, fake.events[-1]).get_json()["result"] == "queued"
    p = ledger.get_payment(s["id"])
    assert (p["cabinet_id"], p["credits"]) == ("cab2", 1)


def test_payment_link_metadata_and_client_reference_id_win_over_the_mapping(client, fake, ledger):
    link = fake.add_payment_link(100, metadata={"cabinet_id": "cab1"})
    ledger.link_payment_link(link, "cab2")
    s = fake._create({"mode": "payment", "metadata": {"cabinet_id": "cab1"}, "line_items": [{"quantity": "1",
                      "price_data": {"currency": "usd", "unit_amount": "100"}}]}, payment_link=link)
    fake.pay(s["id"])
    webhook(client, fake.events[-1])
    assert ledger.get_payment(s["id"])["cabinet_id"] == "cab1"
    s2 = fake._create({"mode": "payment", "client_reference_id": "cab1", "line_items": [{"quantity": "1",
                       "price_data": {"currency": "usd", "unit_amount": "100"}}]}, payment_link=link)
    fake.pay(s2["id"])
    webhook(client, fake.events[-1])
    assert ledger.get_payment(s2["id"])["cabinet_id"] == "cab1"


@pytest.mark.parametrize("link, cab, message", [
    ("plink_", "cab1", "not valid"), ("price_123", "cab1", "not valid"), ("plink_abc", "nope", "no cabinet"),
])
def test_bad_payment_link_mapping_is_refused(ledger, link, cab, message):
    from relay.ledger import LedgerError
    with pytest.raises(LedgerError, match=message):
        ledger.link_payment_link(link, cab)
    assert ledger.list_payment_links() == []


def test_cabinet_link_command_maps_a_payment_link(app, ledger, capsys):
    from tools.commands import cabinet as cabinet_cmd
    db = app.config["ARCADE_DB"]
    assert cabinet_cmd.main(["--db", db, "link", "cab2", "plink_1AbCdE"]) == 0
    assert "payment link plink_1AbCdE now credits cabinet cab2" in capsys.readouterr().out
    assert ledger.payment_link_cabinet("plink_1AbCdE") == "cab2"
    assert cabinet_cmd.main(["--db", db, "link", "nope", "plink_2"]) == 2
    assert "no cabinet 'nope'" in capsys.readouterr().err
    assert ledger.payment_link_cabinet("plink_2") is None
