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

    def cabinet(clock_unset=False, url=None):
        c = stack.Cabinet(tmp_path, "cab1", secret, url or broker.url, keepalive=2, state_dir=tmp_path / "flash",
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


def exp_of(world, sid):
    with open_ledger(world["db"]) as led:
        return stack.wait_until(lambda: (led.get_payment(sid) or {}).get("published_at") and
                                led._rows("SELECT exp FROM payments WHERE session_id = ?", (sid,))[0]["exp"],
                                WAIT, 0.1, "the credit published with its exp")


@pytest.mark.parametrize("order", ["cabinet-returns-after", "broker-restarted-meanwhile", "reconnects-at-exp"])
def test_a_refunded_credit_never_pulses(world, order):
    """The cabinet dies, a player pays; the credit (published with exp) is refunded at exp + margin.
    cabinet-returns-after: the cabinet comes back after the refund; broker-restarted-meanwhile: the broker
    restarts (its persistence kept) around the refund, then the cabinet returns; reconnects-at-exp: the
    cabinet reconnects the moment exp passes, racing the refund. Every order: 0 pulses, 1 refund."""
    fake, broker = world["fake"], world["broker"]
    cab = world["cabinet"]()
    online_with_clock(world, cab)
    cab.stop()                                  # the cabinet dies (its session and queue stay on the broker)
    sid = pay(fake)
    exp = exp_of(world, sid)
    assert exp > 0, "a cabinet whose clock is set gets credits that expire"
    if order == "broker-restarted-meanwhile":
        broker.stop()
        stack.wait_until(lambda: refunds_of(fake, sid), WAIT, 0.2, "the automatic refund in Stripe")
        broker.start()
    elif order == "reconnects-at-exp":
        stack.wait_until(lambda: time.time() >= exp, WAIT, 0.05, "exp")
    else:
        stack.wait_until(lambda: refunds_of(fake, sid), WAIT, 0.2, "the automatic refund in Stripe")
    back = world["cabinet"]()
    back.wait_connected()
    stack.wait_until(lambda: refunds_of(fake, sid), WAIT, 0.2, "the automatic refund in Stripe")
    # the cabinet is not blocked: the next payment is played, not refunded. The broker delivers in order,
    # so by its pulses any copy of the refunded credit still queued has reached the cabinet
    sid2 = pay(fake)
    back.wait_pulses(2)
    assert {p["session"] for p in back.pulses()} == {sid2} and cab.pulses() == [], "a refunded credit never pulses"
    assert len(refunds_of(fake, sid)) == 1 and refunds_of(fake, sid2) == []
    first = [a for a in back.events("ack") if a["seq"] == 1]
    assert all((a["result"], a["reason"], a["pulses"]) == ("rejected", "expired", 0) for a in first), first
    if order != "reconnects-at-exp":
        # back after exp: the broker dropped every queued copy (MQTT 5 message expiry; the relay never
        # publishes at or after exp), so the cabinet did not even see it
        assert first == [], "the broker delivered a copy after its message expiry"


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


def test_an_applied_credit_whose_ack_is_lost_past_exp_is_refunded_after_play_and_said_so(world, tmp_path):
    """The stated limit (docs/protocol.md, Expiry): the cabinet applies the credit before exp and its
    link dies before the ack gets out, for longer than exp + margin. The relay can't tell this from a
    dead cabinet and refunds; the ack the cabinet kept in flash arrives later and the refund is
    recorded as after play. The coins went in once, the money back once: nothing doubled."""
    from tools.lab.tcpproxy import TcpProxy
    fake = world["fake"]
    proxy = TcpProxy(world["broker"].port).start()
    try:
        cab = world["cabinet"](url=proxy.url)
        online_with_clock(world, cab)
        sid = pay(fake)
        cab.wait_for(lambda ls: any(x.get("event") == "pulse_on" for x in ls), WAIT, "the first pulse")
        proxy.blackhole(new=True)               # the link dies mid-train: the ack can't get out
        cab.wait_pulses(2)
        stack.wait_until(lambda: refunds_of(fake, sid), WAIT, 0.2, "the automatic refund in Stripe")
        proxy.resume()
        with open_ledger(world["db"]) as led:
            stack.wait_until(lambda: (led.get_refund(sid) or {}).get("after_play"), WAIT, 0.1,
                             "the late ack recorded as refunded after play")
        assert len(cab.pulses()) == 2 and len(refunds_of(fake, sid)) == 1
    finally:
        proxy.stop()


def test_a_cabinet_that_lost_its_clock_gets_the_credit_again_without_expiry(world):
    """Published with exp (the clock was set), the cabinet reboots without NTP and refuses it (expired,
    its clock is unset). Before exp the relay signs it again without exp and it is played, never refunded;
    should the machine be so slow that exp passes first, it is refunded and never played. Never both."""
    fake = world["fake"]
    cab = world["cabinet"]()
    online_with_clock(world, cab)
    cab.stop()
    sid = pay(fake)
    assert exp_of(world, sid) > 0
    back = world["cabinet"](clock_unset=True)
    back.wait_for(lambda ls: [x for x in ls if x.get("event") == "ack" and x["seq"] == 1], WAIT, "its answer")
    outcome = stack.wait_until(lambda: ("played" if len(back.pulses()) >= 2 else None) or
                               ("refunded" if refunds_of(fake, sid) else None), WAIT, 0.1, "played or refunded")
    if outcome == "played":
        with open_ledger(world["db"]) as led:
            assert led._rows("SELECT exp FROM payments WHERE session_id = ?", (sid,))[0]["exp"] == 0
        time.sleep(7)                           # past exp + margin: still not refunded
        assert refunds_of(fake, sid) == [] and len(back.pulses()) == 2
    else:
        assert back.pulses() == []
