"""`arcade demo --web` in a real browser (Debian's headless chromium under selenium): the guide's test cards,
an expired session, and a cabinet unplugged while its player pays.

The demo runs in this process (tools/lab/webdemo.WebDemo: mosquitto, `arcade relay`, two `arcade simulate`
cabinets behind their TcpProxy links, the fake Stripe), with short pulses and keepalives. One tab shows the
demo page, the other plays the phone. Oracles independent of the code under test: the coin pulses are the
simulators' own pulse lines (the simulated pin), the webhooks are what the fake Stripe sent and the relay
answered. Screenshots go to test-artifacts/browser/demo-*.png.
"""
import pytest
from headless import chrome, shot, text, wait
from test_qr import zbar

from tools.lab.webdemo import WebDemo

FAST_RELAY = {"ARCADE_ACK_TIMEOUT": "1", "ARCADE_ACK_TIMEOUT_MAX": "2", "ARCADE_RESCAN": "0.5",
              "ARCADE_MQTT_KEEPALIVE": "5"}
WAIT = 40


@pytest.fixture
def demo(tmp_path):
    d = WebDemo(tmp_path / "demo", keepalive=2, pulse_ms=30, gap_ms=30, relay_env=FAST_RELAY)
    try:
        yield d.start()
    finally:
        d.stop()


def pulses_for(demo, cab, session):
    return [p for p in demo.cabinets[cab].pulses() if p["session"] == session]


def webhooks(demo, session):
    return [(evt["type"], status) for evt, status in demo.fake.webhooks if evt["data"]["object"]["id"] == session]


def checkout(d, demo, cab, offer):
    """On the phone tab: the cabinet's pay page, one offer, on to the fake Stripe; returns the session id."""
    d.get(demo.pay_url(cab))
    d.find_element("css selector", "#offer-%s" % offer).click()
    wait(d, lambda d: d.current_url.startswith(demo.fake.url + "/pay/cs_test_"), "the fake Stripe checkout")
    return d.current_url.rsplit("/", 1)[1]


def pay_with(d, number):
    """Type a card on the checkout page and press Pay; returns once the next page has loaded."""
    field = d.find_element("css selector", "#card")
    field.clear()
    field.send_keys(number)
    d.execute_script("window.__before_pay = true")
    d.find_element("css selector", "#pay").click()
    wait(d, lambda d: d.execute_script("return document.readyState === 'complete' && !window.__before_pay"),
         "the page after Pay")


def test_three_cards_expiry_and_an_unplugged_cabinet(tmp_path, demo):
    with chrome(tmp_path, phone=False) as d:
        d.get(demo.url + "/demo")
        page = d.current_window_handle
        wait(d, lambda d: text(d, "#live") == "live", "the demo page polling")
        for cab in ("pacman", "galaga"):
            wait(d, lambda d: text(d, "#relay-" + cab) == "online at the relay", cab + " online")
        assert "Happy hour" not in text(d, "#cab-pacman") and "happy hour" in text(d, "#cab-galaga")
        shot(d, "demo-01-page.png")
        # the cabinet's code on the page, as chromium drew it, opens its pay page
        d.find_element("css selector", "#cab-galaga .pay img").screenshot(str(tmp_path / "qr.png"))
        assert zbar(tmp_path / "qr.png") == [demo.pay_url("galaga")]
        d.switch_to.new_window("tab")
        phone = d.current_window_handle

        # One session, three cards: the two declines keep the player on Stripe's page, nothing is sent.
        sid = checkout(d, demo, "pacman", "3")                 # 3 plays, $2.50: 6 coins
        for number, message, name in (("4000 0000 0000 0002", "Your card was declined.", "declined"),
                                      ("4000 0000 0000 9995", "Your card has insufficient funds.", "insufficient")):
            pay_with(d, number)
            assert text(d, "#card-error") == message
            assert d.current_url == "%s/pay/%s" % (demo.fake.url, sid)     # still on the checkout page
            assert webhooks(demo, sid) == [] and pulses_for(demo, "pacman", sid) == []
            shot(d, "demo-02-card-%s.png" % name)
        pay_with(d, "4242 4242 4242 4242")
        wait(d, lambda d: d.current_url.startswith(demo.url + "/paid?session_id=" + sid), "back on /paid")
        wait(d, lambda d: d.find_element("id", "state").get_attribute("data-state") == "applied", "credits added",
             WAIT)
        assert text(d, "#title") == "Credits added \u2713"
        shot(d, "demo-03-paid.png")
        assert webhooks(demo, sid) == [("checkout.session.completed", 200)]
        assert [p["n"] for p in pulses_for(demo, "pacman", sid)] == [1, 2, 3, 4, 5, 6]
        assert [(a["last4"], a["outcome"]) for a in demo.fake.attempts] == [
            ("0002", "generic_decline"), ("9995", "insufficient_funds"), ("4242", "succeeded")]
        d.switch_to.window(page)
        wait(d, lambda d: (text(d, "#coins-pacman"), text(d, "#credits-pacman")) == ("6", "3"), "the lamp's 6 coins")
        shot(d, "demo-04-lamp-counted.png")

        # "Let it expire": checkout.session.expired reaches the relay, nothing is credited.
        d.switch_to.window(phone)
        sid = checkout(d, demo, "galaga", "1")
        d.find_element("css selector", "#expire").click()
        wait(d, lambda d: d.find_elements("css selector", "#expired"), "the expired page")
        assert webhooks(demo, sid) == [("checkout.session.expired", 200)]
        d.get(demo.url + "/paid?session_id=" + sid)
        assert text(d, "#title") == "The payment did not go through"
        assert demo.cabinets["galaga"].pulses() == []
        shot(d, "demo-05-expired.png")

        # Unplugged between choosing and paying: paid while offline, credited once when plugged back in.
        sid = checkout(d, demo, "galaga", "5")                 # 5 plays + 1 happy-hour bonus: 6 coins
        d.switch_to.window(page)
        d.find_element("id", "unplug-galaga").click()
        wait(d, lambda d: text(d, "#relay-galaga") == "offline at the relay", "galaga offline at the relay", WAIT)
        assert text(d, "#link-galaga") == "network unplugged"
        shot(d, "demo-06-unplugged.png")
        d.switch_to.window(phone)
        pay_with(d, "4242 4242 4242 4242")
        wait(d, lambda d: d.find_element("id", "state").get_attribute("data-state") == "unreachable",
             "the paid-but-offline message")
        assert webhooks(demo, sid) == [("checkout.session.completed", 200)]
        assert pulses_for(demo, "galaga", sid) == []
        shot(d, "demo-07-paid-while-unplugged.png")
        d.switch_to.window(page)
        d.find_element("id", "plug-galaga").click()
        wait(d, lambda d: text(d, "#coins-galaga") == "6", "the lamp's 6 coins after plugging in", WAIT)
        shot(d, "demo-08-plugged-back.png")
        d.switch_to.window(phone)
        wait(d, lambda d: d.find_element("id", "state").get_attribute("data-state") == "applied", "credits added",
             WAIT)
        cab = demo.cabinets["galaga"]
        cab.proc.wait_for(lambda ls: any(x.get("event") == "ack" and x["result"] == "applied" and x["pulses"] == 6
                                         for x in ls), WAIT, "the applied ack")
        assert [p["n"] for p in pulses_for(demo, "galaga", sid)] == [1, 2, 3, 4, 5, 6], "credited once"
        assert len(cab.pulses()) == 6
