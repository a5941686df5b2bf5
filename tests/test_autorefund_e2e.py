"""Automatic refunds against real parts: mosquitto, the relay process, the simulated cabinet (real
firmware), the fake Stripe. Oracles: pulses on the simulated coin line and refunds in the fake
Stripe, never the relay's ledger (docs/protocol.md, Expiry)."""
import time

import pytest

from relay.ledger import open_ledger
from tools.lab import stack
from tools.lab.broker import Mosquitto
from tools.lab.fake_stripe import FakeStripe

WHSEC = "whsec_test_autorefund"
KEY = "sk_test_autorefund_0123456789"
# a credit expires 4 s after payment and is refunded 2 s after that; checks twice a second
ENV = {"ARCADE_ACK_TIMEOUT": "1", "ARCADE_ACK_TIMEOUT_MAX": "2", "ARCADE_RESCAN": "0.5", "ARCADE_MQTT_KEEPALIVE": "2",
       "ARCADE_REFUND_AFTER": "4s", "ARCADE_REFUND_MARGIN": "2s", "ARCADE_CLOCK_SKEW": "2s",
       "ARCADE_REFUND_EVERY": "0.5", "STRIPE_API_KEY": KEY}
WAIT = 40.0


@pytest.fixture
def world(tmp_path):
    broker = Mosquitto(tmp_path / "mosquitto", autosave_interval=1).start()
    fake = FakeStripe(webhook_secret=WHSEC, api_key=KEY).start()
    db = str(tmp_path / "arcade.db")
    with open_ledger(db) as ledger:
        secret = ledger.add_cabinet("cab1", price_cents=100, coins_per_credit=2)
    relay = stack.Relay(tmp_path, db, broker.url, WHSEC, extra_env=dict(ENV, STRIPE_API_BASE=fake.url))
    fake.webhook_url = None
    made = []

    def cabinet(clock_unset=False):
        c = stack.Cabinet(tmp_path, "cab1", secret, broker.url, keepalive=2, state_dir=tmp_path / "flash",
                          extra_args=["--pulse-ms", "40", "--gap-ms", "40"],
                          extra_env={"ARCADE_SIM_CLOCK": "unset"} if clock_unset else None)
        made.append(c)
        return c.start()
    try:
        relay.start()
        fake.webhook_url = relay.webhook_url
        yield {"broker": broker, "fake": fake, "db": db, "relay": relay, "cabinet": cabinet}
    finally:
        for c in made:
            c.stop()
        relay.stop()
        fake.stop()
        broker.stop()
    assert "Traceback" not in relay.log_path.read_text(), "the relay logged a crash"


def pay(fake):
    s = fake.add_session(amount=100, metadata={"cabinet_id": "cab1"})
    fake.pay(s["id"])
    return s["id"]


def refunds_of(fake, sid):
    pi = fake.sessions[sid]["payment_intent"]
    return [r for r in fake.refunds.values() if r["payment_intent"] == pi]


def online_with_clock(world, cab, clock_set=True):
    """The relay has the cabinet's verified status saying whether its clock is set."""
    cab.wait_connected()
    cab.wait_for(lambda ls: any(x.get("event") == "status" for x in ls), WAIT, "a status")

    def seen():
        with open_ledger(world["db"]) as led:
            st = (led.get_cabinet("cab1") or {}).get("status") or {}
            return "clock" in st and led.cabinet_clock_set("cab1") == clock_set
    stack.wait_until(seen, WAIT, 0.1, "the cabinet's status at the relay")


def test_refund_before_the_cabinet_returns_then_it_refuses_the_queued_copy(world):
    fake = world["fake"]
    cab = world["cabinet"]()
    online_with_clock(world, cab)
    cab.stop()                                  # the cabinet dies (its session and queue stay on the broker)
    sid = pay(fake)
    stack.wait_until(lambda: refunds_of(fake, sid), WAIT, 0.2, "the automatic refund in Stripe")
    back = world["cabinet"]()                   # it comes back after the refund, holding nothing applied
    back.wait_connected()
    # the broker still had the copy (or the relay sent it): the cabinet refuses it by its signed exp
    ack = back.wait_for(lambda ls: [x for x in ls if x.get("event") == "ack" and x.get("reason") == "expired"],
                        WAIT, "the cabinet refusing the expired copy")
    assert ack[0]["result"] == "rejected" and ack[0]["pulses"] == 0
    assert back.pulses() == [] and cab.pulses() == [], "a refunded credit never pulses"
    assert len(refunds_of(fake, sid)) == 1
    # the cabinet is not blocked: the next payment is played, not refunded
    sid2 = pay(fake)
    back.wait_pulses(2)
    assert {p["session"] for p in back.pulses()} == {sid2} and refunds_of(fake, sid2) == []
    assert len(refunds_of(fake, sid)) == 1


def test_a_cabinet_whose_clock_is_unset_gets_no_expiry_and_no_automatic_refund(world):
    fake = world["fake"]
    cab = world["cabinet"](clock_unset=True)
    online_with_clock(world, cab, clock_set=False)
    cab.stop()
    sid = pay(fake)
    # well past when an expiring credit would have been refunded (4 s + 2 s)
    with open_ledger(world["db"]) as led:
        stack.wait_until(lambda: (led.get_payment(sid) or {}).get("published_at"), WAIT, 0.1, "the publish")
    time.sleep(8)
    assert refunds_of(fake, sid) == []
    back = world["cabinet"](clock_unset=True)
    back.wait_pulses(2)                         # the credit is played when the cabinet returns
    assert {p["session"] for p in back.pulses()} == {sid}
    assert refunds_of(fake, sid) == [], "a credit without expiry is never refunded automatically"


def test_an_applied_credit_whose_ack_is_lost_is_not_refunded(world):
    fake = world["fake"]
    cab = world["cabinet"]()
    online_with_clock(world, cab)
    world["broker"].stop()                      # the cabinet applies what it has, the ack can't go out
    world["broker"].start()
    sid = pay(fake)
    cab.wait_pulses(2)
    # the ack reaches the relay (from flash, or the resent credit's duplicate) before exp + margin
    with open_ledger(world["db"]) as led:
        stack.wait_until(lambda: (led.get_payment(sid) or {}).get("state") in ("applied", "duplicate"), WAIT, 0.1,
                         "the ack")
    time.sleep(7)                               # past exp + margin
    assert refunds_of(fake, sid) == [] and len(cab.pulses()) == 2
