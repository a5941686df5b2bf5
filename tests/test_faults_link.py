"""Fault 5 of issue 3: a half-open link. tools/lab/tcpproxy sits between the cabinet and mosquitto and
between the relay and mosquitto; it blackholes a link without closing it (nothing gets through,
no FIN, no reset), as a dead WiFi or NAT path does. The end that can only learn it from silence
must give up within two keepalive periods and dial again, and a payment made while the link was
dead, and one after, each pulse once.

Times are read from the proxy's own record (when the blackhole began, when an end closed its
side, when a new connection came in), so the test process's scheduling does not blur them.
"""
from collections import Counter

import pytest

from relay.ledger import open_ledger
from tools.lab import stack
from tools.lab import trigger
from tools.lab.broker import Mosquitto
from tools.lab.tcpproxy import TcpProxy

WHSEC = "whsec_test_faults_link"
KEEPALIVE = 2
RELAY_ENV = {"ARCADE_ACK_TIMEOUT": "1", "ARCADE_ACK_TIMEOUT_MAX": "2", "ARCADE_RESCAN": "0.5",
             "ARCADE_MQTT_KEEPALIVE": str(KEEPALIVE)}
WAIT = 30.0


@pytest.fixture
def world(tmp_path):
    broker = Mosquitto(tmp_path / "mosquitto").start()
    proxies = {who: TcpProxy(broker.port).start() for who in ("cab", "relay")}
    db = str(tmp_path / "arcade.db")
    with open_ledger(db) as ledger:
        secret = ledger.add_cabinet("cab1", price_cents=100, coins_per_credit=2)
    relay = stack.Relay(tmp_path, db, proxies["relay"].url, WHSEC, extra_env=RELAY_ENV)
    cab = stack.Cabinet(tmp_path, "cab1", secret, proxies["cab"].url, keepalive=KEEPALIVE,
                        extra_args=["--pulse-ms", "30", "--gap-ms", "30"])
    try:
        relay.start()
        cab.start()
        cab.wait_connected()
        stack.wait_until(lambda: relay.health().get("broker") == "ok", WAIT, 0.1, "relay on the broker")
        yield {"db": db, "relay": relay, "cab": cab, "proxies": proxies}
    finally:
        cab.stop()
        relay.stop()
        for p in proxies.values():
            p.stop()
        broker.stop()


def pay(world):
    sid, _, statuses = trigger.send(world["relay"].webhook_url, WHSEC, "cab1", 100)
    assert statuses[0][0] == 200
    return sid


def check_books(world, sessions):
    """Each payment final in the ledger and exactly its 2 pulses on the coin line."""
    def settled():
        with open_ledger(world["db"]) as ledger:
            rows = [ledger.get_payment(s) for s in sessions]
        done = all(r["state"] in ("applied", "duplicate", "rejected") for r in rows)
        return done and len(world["cab"].pulses()) >= 2 * len(sessions) and rows
    rows = stack.wait_until(settled, WAIT, 0.1, "every payment settled")
    assert all(r["state"] in ("applied", "duplicate") for r in rows), rows     # duplicate: its ack was lost
    counts = Counter(p["session"] for p in world["cab"].pulses())
    assert counts == Counter({s: 2 for s in sessions}), counts


def give_up_and_redial(proxy, began, link):
    """Wait until the blackholed `link`'s client end gives up and a new link opens; returns
    (seconds to give up, seconds to the new connection), both from the start of the blackhole."""
    def seen(p):
        ends = [e[0] for e in p.events if e[1] == "end" and e[2] == link and e[3] == "client"]
        opens = [e[0] for e in p.events if e[1] == "open" and e[2] > link]
        return ends and opens and (ends[0] - began, opens[0] - began)
    return proxy.wait_for(seen, 4 * KEEPALIVE + 10, "the client giving up on link %d and dialling again" % link)


def test_cabinet_link_blackholed_is_noticed_redialled_and_credits_pulse_once(world):
    proxy, cab = world["proxies"]["cab"], world["cab"]
    first = pay(world)
    check_books(world, [first])
    link = proxy.opened
    connects = len(cab.events("connected"))
    proxy.blackhole()
    began = [e[0] for e in proxy.events if e[1] == "blackhole"][-1]
    during = pay(world)                 # the broker sends it down the dead link: held, never delivered
    gave_up, redialled = give_up_and_redial(proxy, began, link)
    print("cabinet: gave up %.2f s after the blackhole, new connection at %.2f s (keepalive %d s)"
          % (gave_up, redialled, KEEPALIVE))
    assert gave_up <= 2 * KEEPALIVE, "noticed within two keepalive periods"
    lost = cab.wait_for(lambda ls: [x for x in ls if x.get("event") == "disconnected"], WAIT, "the disconnect line")
    assert "110" in lost[0]["error"] or "timed out" in lost[0]["error"], lost
    cab.wait_connected(WAIT, connects + 1)
    after = pay(world)
    check_books(world, [first, during, after])
    # the dead link heals late: what it held (pings, the old copy of the credit) arrives at ends
    # that have moved on; nothing pulses again
    proxy.resume()
    last = pay(world)
    check_books(world, [first, during, after, last])


def test_relay_link_blackholed_is_noticed_redialled_and_credits_pulse_once(world):
    proxy, relay = world["proxies"]["relay"], world["relay"]
    first = pay(world)
    check_books(world, [first])
    link = proxy.opened
    proxy.blackhole()
    began = [e[0] for e in proxy.events if e[1] == "blackhole"][-1]
    during = pay(world)                 # committed, published into the hole: no PUBACK, no delivery
    gave_up, redialled = give_up_and_redial(proxy, began, link)
    print("relay: gave up %.2f s after the blackhole, new connection at %.2f s (keepalive %d s)"
          % (gave_up, redialled, KEEPALIVE))
    # paho pings after a keepalive with nothing received and gives up a keepalive after that; it
    # checks once per turn of its loop (at least every second), so each step may come up to 1 s late
    assert gave_up <= 2 * KEEPALIVE + 2
    stack.wait_until(lambda: relay.health().get("broker") == "ok", WAIT, 0.1, "relay back on the broker")
    after = pay(world)
    check_books(world, [first, during, after])
    proxy.resume()
    last = pay(world)
    check_books(world, [first, during, after, last])
    assert "disconnected from the broker" in relay.log_path.read_text(), "the relay said it lost the link"
