"""The operator's console in a real browser (issue 13): Debian's headless chromium driven by selenium
against `arcade console` — its own process on its own port, beside `arcade relay` (the public host,
which serves no /admin) — on the same database, with mosquitto, the simulated cabinet and the fake
Stripe sending real signed webhooks.

The story: one play is paid and pulsed; the cabinet goes offline; two more are paid: the first is
published (it may still pulse), the second never is. In the console the operator signs in, sees the
cabinet needing attention first, refunds the never-published credit with the button, is refused the
published one (so is `arcade refund`), sees a dispute, fixes a typo'd price. The cabinet comes back
on the same flash: the oracle is the coin line — exactly the pulses of the credits not refunded, and
exactly one refund at Stripe. Screenshots of every page at phone and desktop width go to
test-artifacts/console/ (named in docs/operations.md).
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from relay.console import auth
from relay.ledger import open_ledger
from tools.lab import stack
from tools.lab.broker import free_port
from tools.lab.fake_stripe import FakeStripe

from headless import chrome, wait

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "console"
WEBHOOK_SECRET = "whsec_test_console"
API_KEY = "sk_test_console_0123456789"
PASSWORD = "arcade operator password"
SIZES = {"phone": {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True},
         "desktop": {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}}


@pytest.fixture
def browser(tmp_path):
    with chrome(tmp_path, phone=False) as driver:     # phone and desktop sizes are set per screenshot
        yield driver


@pytest.fixture
def world(tmp_path, broker):
    db = str(tmp_path / "arcade.db")
    with open_ledger(db) as led:
        secret = led.add_cabinet("cab1", name="Galaga", price_cents=100, bundles=[(3, 250)], coins_per_credit=2)
        led.add_cabinet("pin1", name="Pinball", price_cents=50)
        led.add_operator("alice", auth.hash_password(PASSWORD))
    port = free_port()
    fake = FakeStripe(webhook_url="http://127.0.0.1:%d/stripe/webhook" % port, webhook_secret=WEBHOOK_SECRET,
                      api_key=API_KEY).start()
    env = {"STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": fake.url, "ARCADE_NAME": "Pixel Palace",
           "ARCADE_STUCK_AFTER": "3600"}
    relay = stack.Relay(tmp_path, db, broker.url, WEBHOOK_SECRET, port=port, extra_env=env)
    console = stack.Console(tmp_path, db, broker.url, extra_env=env)
    cab = stack.Cabinet(tmp_path, "cab1", secret, broker.url)
    try:
        relay.start()
        console.start()
        cab.start()
        cab.wait_connected()
        with open_ledger(db) as led:
            stack.wait_until(lambda: led.get_cabinet("cab1")["online"], 20, what="cab1 online at the relay")
            led.record_status("pin1", True, {"online": True, "fw": "0.2.0", "rssi": -58, "heap": 81234,
                                             "uptime": 7300})
        yield {"relay": relay, "console": console, "cab": cab, "fake": fake, "db": db, "env": env,
               "broker": broker}
    finally:
        cab.stop()
        console.stop()
        relay.stop()
        fake.stop()


def pay(fake, amount=100, cabinet="cab1"):
    s = fake.add_session(amount=amount, metadata={"cabinet_id": cabinet})
    fake.pay(s["id"])
    return s["id"]


def state_of(db, sid):
    with open_ledger(db) as led:
        p = led.get_payment(sid)
        return p and p["state"]


def shots(d, name):
    """The current page at phone and desktop width: <name>-phone.png, <name>-desktop.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for size, metrics in SIZES.items():
        d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
        height = d.execute_script("return Math.max(document.body.scrollHeight, %d)" % metrics["height"])
        d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", dict(metrics, height=min(int(height), 3000)))
        if size == "phone":
            assert d.execute_script("return document.documentElement.scrollWidth") <= metrics["width"], \
                "%s scrolls sideways on a phone" % name
        d.save_screenshot(str(ARTIFACTS / ("%s-%s.png" % (name, size))))
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", SIZES["phone"])


def css(d, selector):
    from selenium.webdriver.common.by import By
    return d.find_element(By.CSS_SELECTOR, selector)


def test_run_the_arcade_from_a_phone(browser, world):
    d, fake, cab, db = browser, world["fake"], world["cab"], world["db"]
    console, relay = world["console"].url, world["relay"].url
    d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", SIZES["phone"])

    first = pay(fake)
    cab.wait_pulses(2)
    stack.wait_until(lambda: state_of(db, first) == "applied", 20, what="the first play applied")
    cab.stop()
    with open_ledger(db) as led:
        stack.wait_until(lambda: not led.get_cabinet("cab1")["online"], 20, what="cab1 offline at the relay")
    published, never = pay(fake), pay(fake)
    stack.wait_until(lambda: state_of(db, published) == "sent", 20, what="the second credit at the broker")
    with open_ledger(db) as led:
        assert led.get_payment(never)["state"] == "queued" and led.get_payment(never)["published_at"] is None
    invalid = pay(fake, amount=77)
    fake.open_dispute(first, reason="product_not_received")
    stack.wait_until(lambda: state_of(db, invalid) == "invalid", 20, what="the invalid payment recorded")

    # the public relay has no console; the console's own port asks to sign in before any data
    import urllib.error
    import urllib.request
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(relay + "/admin/", timeout=10)
    assert e.value.code == 404
    e.value.close()
    d.get(console + "/admin/payments/" + never)
    wait(d, lambda d: "/admin/login" in d.current_url, "the sign-in page")
    assert never not in d.page_source.split("next=")[0]
    css(d, "input[name=name]").send_keys("alice")
    css(d, "input[name=password]").send_keys("wrong password")
    css(d, "form button[type=submit]").click()
    wait(d, lambda d: "don't match" in d.page_source, "the refusal")
    shots(d, "01-sign-in-refused")
    css(d, "input[name=password]").send_keys(PASSWORD)
    css(d, "input[name=name]").clear()
    css(d, "input[name=name]").send_keys("alice")
    css(d, "form button[type=submit]").click()
    wait(d, lambda d: d.current_url.endswith("/admin/payments/" + never), "back to the asked page")
    cookie = d.get_cookie("arcade_console")
    assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"

    # Now: the offline cabinet with credits in flight first, the dispute and invalid payment called out
    d.get(console + "/admin/")
    tiles = d.find_elements("css selector", ".tiles .tile")
    assert tiles[0].get_attribute("id") == "tile-cab1" and "Offline" in tiles[0].text
    assert "In flight\n2" in tiles[0].text
    assert "0.2.0" in tiles[1].text and "-58 dBm" in tiles[1].text and "79.3 KB" in tiles[1].text
    attention = css(d, ".attention").text
    assert "Dispute needs_response" in attention and "Invalid payment" in attention
    shots(d, "02-now")

    d.get(console + "/admin/payments?cabinet=cab1")
    assert len(d.find_elements("css selector", ".payments li")) == 4
    shots(d, "03-payments")

    # the published credit: not refundable (it may still pulse), in the console and on the command line
    d.get(console + "/admin/payments/" + published)
    assert "may still pulse" in d.page_source and not d.find_elements("css selector", "button.danger")
    shots(d, "04-payment-published-not-refundable")
    r = subprocess.run([sys.executable, "-m", "tools.cli", "refund", published, "--reason", "test"],
                       cwd=ROOT, env=dict(os.environ, ARCADE_DB=db, **world["env"]), capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "may still pulse" in r.stderr, r.stderr

    # the never-published credit: refunded with the button; the timeline says so
    d.get(console + "/admin/payments/" + never)
    assert "never published" in css(d, "form.form").text
    shots(d, "05-payment-refund-offered")
    css(d, "input[name=reason]").send_keys("cabinet broken")
    css(d, "button.danger").click()
    wait(d, lambda d: "Refunded" in css(d, ".flash").text, "the refund's confirmation")
    assert "refund succeeded" in css(d, ".timeline").text
    shots(d, "06-payment-refunded")
    assert state_of(db, never) == "refunded"

    # a typo'd price is refused with a reason and nothing changes; then a real change is saved
    d.get(console + "/admin/cabinets/cab1")
    price = css(d, "input[name=price]")
    price.clear()
    price.send_keys("1,50")
    css(d, "form.form button[type=submit]").click()
    wait(d, lambda d: "Nothing was changed" in d.page_source, "the form's refusal")
    shots(d, "07-cabinet-bad-price")
    with open_ledger(db) as led:
        assert led.get_cabinet("cab1")["price_cents"] == 100
    price = css(d, "input[name=price]")
    price.clear()
    price.send_keys("1.50")
    css(d, "form.form button[type=submit]").click()
    wait(d, lambda d: "Saved" in d.page_source, "the save")
    with open_ledger(db) as led:
        assert led.get_cabinet("cab1")["price_cents"] == 150
    shots(d, "08-cabinet-saved")
    add = [f for f in d.find_elements("css selector", "form.form") if "Add promotion" in f.text][0]
    add.find_element("css selector", "input[name=days]").clear()
    add.find_element("css selector", "input[name=days]").send_keys("daily")
    add.find_element("css selector", "button[type=submit]").click()
    wait(d, lambda d: "Promotion 1 added" in d.page_source, "the promotion added")
    with open_ledger(db) as led:
        assert [(p["cabinet_id"], p["kind"], p["value"]) for p in led.list_promotions()] == [("cab1", "bonus", 1)]

    d.get(console + "/admin/takings")
    assert css(d, "svg") is not None and "cab1" in css(d, "table").text
    assert "Plays/hour while on" in d.page_source and "Happy hour" in d.page_source
    shots(d, "09-takings")
    d.get(console + "/admin/cabinets")
    shots(d, "10-cabinets")
    d.get(console + "/admin/payments?filter=disputed")
    assert first[:20] in d.page_source
    d.get(console + "/admin/audit")
    audit = css(d, "table").text
    for line in ("login.failed", "login", "refund.requested", "refund.succeeded", "cabinet.set", "promotion.add"):
        assert line in audit
    shots(d, "11-audit")
    css(d, ".signout button").click()
    wait(d, lambda d: "/admin/login" in d.current_url, "signed out")
    d.get(console + "/admin/")
    wait(d, lambda d: "/admin/login" in d.current_url, "no session after signing out")

    # The cabinet comes back on the same flash: the published credit pulses, the refunded one never.
    cab.start()
    cab.wait_connected(count=2)
    stack.wait_until(lambda: state_of(db, published) == "applied", 30, what="the published credit applied")
    last = pay(fake, amount=150)           # the new price: delivered after (so past) the refunded seq
    stack.wait_until(lambda: state_of(db, last) == "applied", 30, what="a later credit applied")
    assert len(cab.wait_pulses(6)) == 6
    assert len(cab.pulses()) == 6, "2 + 2 + 2 coin pulses: the refunded credit never reached the coin line"
    refunds = list(fake.refunds.values())
    assert len(refunds) == 1 and refunds[0]["payment_intent"] == fake.sessions[never]["payment_intent"]
