"""The player's flow in a real browser: Debian's headless chromium driven by selenium, phone-sized.

Real processes: mosquitto, `arcade relay`, `arcade simulate` (the firmware with simulated pins) and the
fake Stripe server (its hosted checkout page sends the signed webhook, as Stripe would). The browser
opens /pay/<cab>, picks a bundle; the cabinet goes offline before the player pays on the fake checkout,
so /paid first says the payment is safe and waiting; the cabinet comes back (same flash) and the open
page turns to "Credits added" without a reload, after exactly the paid pulses. Also the offline cabinet
page and the cancel page.
(The no-JavaScript fallback of /paid, a <noscript> meta refresh, is checked in test_pay_pages.py:
chromedriver itself needs JavaScript.) Screenshots go to test-artifacts/browser/.
"""
import pytest
from headless import PHONE, chrome, click, shot, text, wait

from relay.ledger import open_ledger
from tools.lab import stack
from tools.lab.broker import free_port
from tools.lab.fake_stripe import FakeStripe

WEBHOOK_SECRET = "whsec_test_browser"
API_KEY = "sk_test_browser_0123456789"


@pytest.fixture
def browser(tmp_path):
    with chrome(tmp_path) as driver:
        yield driver


@pytest.fixture
def world(tmp_path, broker):
    db = str(tmp_path / "arcade.db")
    with open_ledger(db) as led:
        secret = led.add_cabinet("cab1", name="Galaga", price_cents=100, bundles=[(3, 250)], coins_per_credit=2)
        led.add_cabinet("dark", name="Asteroids", price_cents=100)
        led.add_cabinet("promo", name="Ms. Pac-Man", price_cents=100, bundles=[(3, 250), (6, 450)])
        led.add_promotion("promo", "bonus", 1, range(7), 0, 24 * 60, "Happy hour")
    port = free_port()
    fake = FakeStripe(webhook_url="http://127.0.0.1:%d/stripe/webhook" % port, webhook_secret=WEBHOOK_SECRET,
                      api_key=API_KEY).start()
    relay = stack.Relay(tmp_path, db, broker.url, WEBHOOK_SECRET, port=port, extra_env={
        "STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": fake.url, "ARCADE_PUBLIC_URL": "http://127.0.0.1:%d" % port,
        "ARCADE_NAME": "Pixel Palace"})
    cab = stack.Cabinet(tmp_path, "cab1", secret, broker.url)
    try:
        relay.start()
        cab.start()
        cab.wait_connected()
        with open_ledger(db) as led:
            stack.wait_until(lambda: led.get_cabinet("cab1")["online"], 20, what="cab1 online at the relay")
            led.record_status("promo", True)     # shown as ready; nothing is bought from it here
        yield {"relay": relay, "cab": cab, "fake": fake, "db": db}
    finally:
        cab.stop()
        relay.stop()
        fake.stop()


def test_pay_for_a_bundle_and_watch_the_credits_arrive(browser, world):
    from selenium.webdriver.common.by import By
    relay, fake, cab = world["relay"], world["fake"], world["cab"]
    d = browser

    d.get(relay.url + "/pay/cab1")
    assert text(d, "h1.game") == "Galaga" and text(d, ".arcade").upper() == "PIXEL PALACE"
    assert text(d, "#status") == "Ready to play"
    assert "$1.00 per play" in text(d, "#price")
    assert d.execute_script("return document.documentElement.scrollWidth") <= PHONE["width"]  # no sideways scroll
    shot(d, "01-pay-page.png")

    click(d, "#offer-3")                                          # 3 plays for $2.50
    wait(d, lambda d: d.current_url.startswith(fake.url + "/pay/cs_test_"), "the fake Stripe checkout")
    assert "Pay USD 2.50" in text(d, "#pay")
    shot(d, "02-fake-checkout.png")

    # The cabinet drops off after the page sold and before the player presses Pay, so /paid first
    # shows a payment that can't have reached the cabinet; "Credits added" can then only arrive live.
    cab.stop()
    with open_ledger(world["db"]) as led:
        stack.wait_until(lambda: not led.get_cabinet("cab1")["online"], 20, what="cab1 offline at the relay")
    click(d, "#pay")
    wait(d, lambda d: d.current_url.startswith(relay.url + "/paid?session_id=cs_test_"), "back on /paid")
    state = d.find_element(By.ID, "state")
    assert state.get_attribute("data-state") == "unreachable"     # as the relay rendered it
    assert text(d, "#title") == "Paid \u2713 The cabinet is offline"
    assert "your 3 credits will reach the cabinet automatically" in text(d, "#message")
    steps = [li.get_attribute("class") for li in d.find_elements(By.CSS_SELECTOR, "#steps li")]
    assert steps[0] == "done" and steps[2] == ""                 # "On its way" too once the relay sent it
    assert d.execute_script("return document.documentElement.scrollWidth") <= PHONE["width"]
    assert cab.pulses() == []
    shot(d, "03-paid-waiting-for-cabinet.png")
    d.execute_script("window.__marker = 42")
    steps_height = d.execute_script("return document.getElementById('steps').offsetHeight")

    cab.start()                                                   # same --state dir: the same flash
    cab.wait_connected(count=2)
    wait(d, lambda d: state.get_attribute("data-state") == "applied", "credits added", timeout=30)
    # It got there by polling /paid/status, without a reload: a reload would have dropped the marker
    # (and made `state` a stale element).
    assert d.execute_script("return window.__marker") == 42
    assert text(d, "#title") == "Credits added \u2713"
    assert "3 credits added to Galaga. Press START!" in text(d, "#message")
    assert [li.get_attribute("class") for li in d.find_elements(By.CSS_SELECTOR, "#steps li")] == ["done"] * 3
    # A step turning done doesn't re-wrap its label, so the page doesn't jump under the player's thumb.
    assert d.execute_script("return document.getElementById('steps').offsetHeight") == steps_height
    shot(d, "04-paid-credits-added.png")
    sid = d.current_url.split("session_id=")[1]
    with open_ledger(world["db"]) as led:
        p = led.get_payment(sid)
        assert (p["state"], p["credits"], p["pulses"], p["amount"]) == ("applied", 3, 6, 250)
    # 3 credits x 2 coins, once: the broker's queued copy and the relay's resend when the cabinet came
    # back online may both arrive; the second one is a duplicate and pulses nothing.
    cab.wait_for(lambda ls: any(x.get("event") == "ack" and x["result"] == "applied" for x in ls), 10,
                 "the applied ack")
    acks = [(a["result"], a["pulses"]) for a in cab.events("ack")]
    assert acks.count(("applied", 6)) == 1 and set(acks) <= {("applied", 6), ("duplicate", 0)}, acks
    assert len(cab.wait_pulses(6)) == 6


def test_offline_cabinet_and_cancel_pages(browser, world):
    from selenium.webdriver.common.by import By
    relay, fake = world["relay"], world["fake"]
    d = browser
    d.get(relay.url + "/pay/dark")
    assert text(d, "#status") == "This cabinet is offline right now"
    assert "Nothing has been charged" in text(d, "#down")
    assert d.find_elements(By.CSS_SELECTOR, "button.offer") == []
    shot(d, "05-offline-cabinet.png")

    d.get(relay.url + "/pay/cab1")
    click(d, "#offer-1")
    wait(d, lambda d: d.current_url.startswith(fake.url + "/pay/"), "the fake Stripe checkout")
    sid = d.current_url.rsplit("/", 1)[1]
    click(d, "#cancel")
    wait(d, lambda d: "/cancel?cabinet=cab1" in d.current_url, "the cancel page")
    assert text(d, "#message h1") == "Payment cancelled" and "Nothing was charged" in text(d, "#message")
    shot(d, "06-cancel.png")
    click(d, "#retry")
    wait(d, lambda d: d.current_url == relay.url + "/pay/cab1", "back on the pay page")
    with open_ledger(world["db"]) as led:
        assert led.get_payment(sid) is None
    assert fake.webhooks == []

    d.get(relay.url + "/pay/promo")
    assert "Happy hour" in text(d, ".promo") and "+1 bonus credit" in text(d, ".promo")
    assert text(d, "#offer-3 .plays").startswith("4 plays") and "$2.50" in text(d, "#offer-3 .amount")
    shot(d, "08-promotion.png")

    d.get(relay.url + "/pay/no-such-cab")
    assert "We don't know this cabinet" in text(d, "#message")
    shot(d, "07-unknown-cabinet.png")

    # The cabinet drops off while the player is on Stripe's page: /paid says plainly what happens next.
    d.get(relay.url + "/pay/cab1")
    click(d, "#offer-1")
    wait(d, lambda d: d.current_url.startswith(fake.url + "/pay/"), "the fake Stripe checkout")
    world["cab"].stop()
    with open_ledger(world["db"]) as led:
        stack.wait_until(lambda: not led.get_cabinet("cab1")["online"], 20, what="cab1 offline at the relay")
    click(d, "#pay")
    wait(d, lambda d: "/paid?session_id=" in d.current_url, "back on /paid")
    state = d.find_element(By.ID, "state")
    wait(d, lambda d: state.get_attribute("data-state") == "unreachable", "the unreachable message")
    assert "The cabinet is offline" in text(d, "#title")
    assert "will reach the cabinet automatically as soon as it is back online" in text(d, "#message")
    shot(d, "09-paid-cabinet-unreachable.png")

