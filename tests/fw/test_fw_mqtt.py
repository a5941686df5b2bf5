# The unchanged umqtt.simple 1.3.4 driven through the firmware's guards, over a scripted socket.
import json
import time

import machine
import fwmsgs
import protocol
import app as fwapp
import config
from coin import Coin
from fwutil import (EPOCH, KEY, LEDGER, FakeSock, board, clock, mqtt_publish, puback, pulses, scratch,
                    write_json)
from fwutil import config as good_config
from umqtt.simple import MQTTClient


def test_pid_wraps_before_65535():
    c = MQTTClient(b"cab1", "localhost")
    c.sock = fwapp.DeadlineSocket(FakeSock(puback(1)), 5)
    c.pid = 65535
    fwapp.guard_pid(c)
    c.publish(b"t", b"m", False, 1)
    out = c.sock.sock.out
    # PUBLISH qos1: header, len, topic(2+1), pid, payload
    assert out[0] == 0x32 and out[5:7] == b"\x00\x01", "the packet id wrapped to 1"
    assert c.pid == 1
    c.pid = 65534
    fwapp.guard_pid(c)
    assert c.pid == 65534, "65535 itself is still a valid id"


def test_deadline_socket_means_blocking_with_a_timeout():
    raw = FakeSock(b"\xd0\x00")
    s = fwapp.DeadlineSocket(raw, 7)
    assert raw.timeout == 7
    s.setblocking(False)
    assert raw.blocking is False
    s.setblocking(True)
    assert raw.timeout == 7 and raw.blocking
    assert s.read(2) == b"\xd0\x00"
    raw.feed(b"\x30")
    try:
        s.read(4)        # EOF mid-packet: an error, not a short buffer for umqtt to index
        assert False
    except OSError:
        pass
    raw.setblocking(False)
    assert s.read(1) is None, "non-blocking with no data"


def _app(root):
    c = clock()
    write_json(root + "board.json", board())
    b = config.check_board(board())
    coin = Coin(25, True, 100, 150, c.ticks_ms, c.sleep_ms)
    events = []
    cfg = config.check_config(good_config())
    a = fwapp.App(cfg, b, coin, root, lambda e, d: events.append((e, d)))
    return a, events


def test_credit_arriving_during_the_puback_wait_is_handled_and_acked_later():
    root = scratch()
    a, events = _app(root)
    credit = fwmsgs.credit(KEY, "cab1", LEDGER, 1, 1, 2, "cs_during", 1764165000, EPOCH)
    forged = fwmsgs.credit(b"x" * 20, "cab1", LEDGER, 2, 1, 2, "cs_forged", 1764165000, EPOCH)
    raw = FakeSock()
    a.client.sock = fwapp.DeadlineSocket(raw, 5)
    # we publish a (pending) ack with pid 1; before its PUBACK the broker delivers a forged
    # credit (pid 7) and a good one (pid 8); umqtt calls our callback from inside publish()
    a.cabinet.state["ack"] = [LEDGER, 0, 0]
    first = a.cabinet.pending_ack()
    raw.feed(mqtt_publish(b"arcade/cab1/credit", forged, pid=7)
             + mqtt_publish(b"arcade/cab1/credit", credit, pid=8) + puback(1))

    def more(b):   # the broker answers each later ack (its payload is the last write) with PUBACK
        if b.startswith(b'{"t":"ack"') and a.client.pid > 1:
            raw.feed(puback(a.client.pid))

    raw.on_write = more
    a._flush()
    out = bytes(raw.out)
    assert b"\x40\x02\x00\x07" in out and b"\x40\x02\x00\x08" in out, "both credits PUBACKed"
    assert [p[1] for p in pulses(machine.pins[25])] == [100, 100]
    acks = [json.loads(d) for e, d in events if e == "ack"]
    assert [(x["seq"], x["result"], x["reason"]) for x in acks] == \
        [(0, "applied", ""), (1, "applied", ""), (0, "rejected", "bad_signature")]
    assert all(fwmsgs.check_ack(json.dumps(x), KEY) for x in acks)
    assert acks[0]["seq"] == json.loads(first)["seq"]
    assert a.cabinet.state["ack"] is None and a.outbox == []
    # the acks were published on the ack topic, never from inside the callback: the
    # credit's PUBACK (written when the callback returned) precedes the ack for it
    assert out.index(b"\x40\x02\x00\x08") < out.index(b'"seq":1,"session":"cs_during","result":"applied"')


def test_app_topics_will_and_client_id():
    root = scratch()
    a, events = _app(root)
    c = a.client
    assert c.client_id == b"cab1" and c.keepalive == 30
    a._will()                           # what each connect does first
    assert (c.lw_topic, c.lw_qos, c.lw_retain) == (b"arcade/cab1/status", 1, True)
    will = json.loads(c.lw_msg)
    assert (will["online"], will["epoch"], will["boot"], will["n"]) == \
        (False, a.cabinet.state["epoch"], a.cabinet.state["boots"], 0x100000)
    a._will()                           # the next connection: numbered above the last will
    assert json.loads(c.lw_msg)["n"] == 0x200000 and a.sn == 0x100000
    assert (a.t_credit, a.t_ack) == (b"arcade/cab1/credit", b"arcade/cab1/ack")
    assert (c.user, c.pswd, c.server, c.port) == (b"cab", b"mqtt-pass-456", "broker.example", 1883)


def test_loop_holds_while_inhibited_feeds_the_wdt_and_publishes_status_on_change():
    root = scratch()
    c = clock()
    b = config.check_board(board(inhibit_pin=26))
    coin = Coin(25, True, 100, 150, c.ticks_ms, c.sleep_ms)
    events = []
    a = fwapp.App(config.check_config(good_config()), b, coin, root,
                  lambda e, d: events.append((e, d)))
    a.wdt = machine.WDT(timeout=30000)
    a._wifi()                                      # the loop runs with WiFi up
    raw = FakeSock()
    a.client.sock = fwapp.DeadlineSocket(raw, 5)
    # the broker PUBACKs each QoS 1 publish once its payload (the last write) is in
    raw.on_write = lambda data: data.startswith(b'{"t":') and raw.feed(puback(a.client.pid))

    def statuses():
        out = bytes(raw.out)
        found = []
        i = out.find(b'{"t":"status"')
        while i >= 0:
            j = out.find(b"}", i)
            found.append(json.loads(out[i:j + 1]))
            i = out.find(b'{"t":"status"', j)
        return found

    machine.pins[26].drive(0)                      # the game refuses coins
    a._on_msg(a.t_credit, fwmsgs.credit(KEY, "cab1", LEDGER, 4, 1, 2, "cs_held", 1764165000, EPOCH))
    assert a.outbox == [] and ("held", 4) in events
    a._step()
    a._step()
    st = statuses()
    assert len(st) == 1, "published once, on the change"
    assert (st[0]["inhibited"], st[0]["held"], st[0]["last"], st[0]["total"]) == (True, 4, 0, 0)
    assert len(machine.pins[25].history) == 1, "no pulse while inhibited"
    assert len(a.wdt.feeds) >= 2, "the loop feeds the WDT while it waits"
    assert b'{"t":"ack"' not in bytes(raw.out)
    machine.pins[26].drive(1)                      # cleared
    a._step()
    assert len(machine.pins[25].history) == 1, "not before the line has been quiet for 50 ms"
    c.advance(50)                                  # the debounce time (firmware/inhibit.py)
    a._step()
    assert [p[1] for p in pulses(machine.pins[25])] == [100, 100]
    out = bytes(raw.out)
    ack = json.loads(out[out.find(b'{"t":"ack"'):out.find(b"}", out.find(b'{"t":"ack"')) + 1])
    assert (ack["result"], ack["seq"], ack["pulses"]) == ("applied", 4, 2)
    st = statuses()
    assert len(st) == 2
    assert (st[1]["inhibited"], st[1]["held"], st[1]["last"], st[1]["total"]) == (False, 0, 4, 2)
    assert st[1]["fw"] == protocol.FW and st[1]["rssi"] == -50 and st[1]["uptime"] >= 0
    assert out.index(b'{"t":"ack"') < out.rindex(b'{"t":"status"'), "ack first, then the status"


def test_uptime_counts_ticks_not_the_wall_clock():
    # NTP may set the wall clock from 2000 to today after boot: uptime must come from ticks
    root = scratch()
    a, _ = _app(root)
    a.up_at = time.ticks_add(time.ticks_ms(), -5000)        # 5 s of ticks since the last turn
    first = a.info()["uptime"]
    assert 5 <= first < 60
    a.up_at = time.ticks_add(time.ticks_ms(), -2000)
    assert a.info()["uptime"] >= first + 2                  # accumulates across turns
