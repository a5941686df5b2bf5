# Per-cabinet pulse timing (signed, retained config), signed test pulses, and the inhibit line:
# exact widths on the fake pin with a fake clock; what is in flash at each step.
import json

import config
import machine
import fwmsgs
from cabinet import Cabinet
from coin import Coin
from journal import Journal
from fwutil import EPOCH, KEY, LEDGER, SECRET, board, clock, exists, pulses, read_json, scratch

TS = 1764165000
INHIBIT = 26


def boot(root, c, inhibit=False, **kw):
    b = config.check_board(board(inhibit_pin=INHIBIT if inhibit else None, **kw))
    coin = Coin(25, True, b["width_ms"], b["gap_ms"], c.ticks_ms, c.sleep_ms)
    line = None
    if inhibit:
        # the firmware's own wiring: Signal(Pin(IN, PULL_UP), invert=active low)
        line = machine.Signal(machine.Pin(INHIBIT, machine.Pin.IN, machine.Pin.PULL_UP),
                              invert=True).value
    return Cabinet("cab1", SECRET, Journal(root), coin, None, b, line)


def cfg(ver, width, gap, cpc=1, key=KEY, cab="cab1"):
    return fwmsgs.config(key, cab, ver, width, gap, cpc, TS)


def credit(seq, n, session):
    return fwmsgs.credit(KEY, "cab1", LEDGER, seq, n, n, session, TS, EPOCH)


def widths(c):
    return [(p[1], p[2]) for p in pulses(machine.pins[25])]


def test_config_sets_the_pulse_timing_and_survives_a_reboot():
    root = scratch()
    c = clock()
    cab = boot(root, c)
    assert cab.handle_config(cfg(5, 120, 500, 2)) == "applied"
    assert read_json(root + "cfg.json") == {"ver": 5, "width_ms": 120, "gap_ms": 500, "cpc": 2,
                                            "test": 0}
    c.advance(1000)
    cab.handle(credit(1, 3, "cs_a"))
    assert [w for w, _ in widths(c)] == [120, 120, 120]
    assert [g for _, g in widths(c)][1:] == [500, 500]
    # reboot: the override is read back from flash, no message needed
    c2 = clock()
    cab2 = boot(root, c2)
    assert (cab2.coin.width_ms, cab2.coin.gap_ms, cab2.cfg["ver"]) == (120, 500, 5)
    # zeros mean "the board's defaults again"
    assert cab2.handle_config(cfg(6, 0, 0)) == "applied"
    assert (cab2.coin.width_ms, cab2.coin.gap_ms) == (100, 150)


def test_older_or_same_config_version_is_ignored():
    root = scratch()
    c = clock()
    cab = boot(root, c)
    cab.handle_config(cfg(5, 120, 500))
    saves = read_json(root + "cfg.json")
    for ver in (5, 4, 1):
        assert cab.handle_config(cfg(ver, 30, 30)) == "ignored", ver
    assert (cab.coin.width_ms, cab.coin.gap_ms, cab.cfg_error) == (120, 500, "")
    assert read_json(root + "cfg.json") == saves


def test_bad_configs_are_refused_with_a_reason_and_change_nothing():
    rows = [
        (cfg(7, 10, 500), "7 out_of_range: width_ms 10 not in 20..500 (test-board)"),
        (cfg(7, 120, 2001), "7 out_of_range: gap_ms 2001 not in 20..2000 (test-board)"),
        (cfg(7, 120, 500, key=b"another-secret-0123456789"), "7 bad_signature"),
        (cfg(7, 120, 500, cab="cab2"), "7 wrong_cabinet"),
        (cfg(7, 120, 500, cpc=0), "7 malformed"),
        (b"not json", "0 malformed"),
    ]
    for payload, error in rows:
        root = scratch()
        c = clock()
        cab = boot(root, c)
        cab.handle_config(cfg(5, 120, 500))
        assert cab.handle_config(payload) == "rejected", error
        assert cab.cfg_error == error
        assert (cab.coin.width_ms, cab.coin.gap_ms, cab.cfg["ver"]) == (120, 500, 5), error
        assert read_json(root + "cfg.json")["ver"] == 5
    # the next good one clears the error
    assert cab.handle_config(cfg(8, 90, 200)) == "applied" and cab.cfg_error == ""


def test_test_pulse_is_driven_once_and_never_replayed():
    root = scratch()
    c = clock()
    cab = boot(root, c)
    seen = []
    machine.watchers.append(lambda pin, t, v: v == 1 and pin.id == 25 and seen.append(
        read_json(root + "cfg.json")["test"]))
    assert cab.handle_test(fwmsgs.test(KEY, "cab1", 100, 2, TS)) == "pulsed"
    assert seen == [100, 100], "n is in flash before the first pulse"
    assert [w for w, _ in widths(c)] == [100, 100]
    assert cab.state["total"] == 0, "test pulses are not credits"
    for n in (100, 99):
        assert cab.handle_test(fwmsgs.test(KEY, "cab1", n, 1, TS)) == "rejected"
        assert cab.test_error == "%d stale" % n
    assert cab.handle_test(fwmsgs.test(b"forged-key-0123456789", "cab1", 200, 1, TS)) == "rejected"
    assert cab.test_error == "200 bad_signature"
    assert len(seen) == 2
    # after a reboot the stored n still refuses the replay
    cab2 = boot(root, clock())
    assert cab2.handle_test(fwmsgs.test(KEY, "cab1", 100, 1, TS)) == "rejected"
    assert cab2.handle_test(fwmsgs.test(KEY, "cab1", 101, 1, TS)) == "pulsed"


def test_inhibited_credit_is_held_in_flash_then_pulsed_when_the_line_clears():
    root = scratch()
    c = clock()
    cab = boot(root, c, inhibit=True)
    line = machine.pins[INHIBIT]
    assert not cab.inhibited(), "unwired (pulled up, active low): not inhibited"
    line.drive(0)
    assert cab.inhibited()
    result, ack = cab.handle(credit(7, 3, "cs_a"))
    assert (result, ack) == ("held", None)
    assert len(machine.pins[25].history) == 1, "no pulse into the void"
    st = read_json(root + "state.json")
    assert st["cur"]["held"] == 1 and st["cur"]["done"] == 0 and st["last"] == 0
    assert cab.held() == 7
    # the relay redelivers it, or sends another: no answer, nothing changes
    assert cab.handle(credit(7, 3, "cs_a")) == ("held", None)
    assert cab.handle(credit(8, 1, "cs_b")) == ("held", None)
    assert cab.handle_test(fwmsgs.test(KEY, "cab1", 5, 1, TS)) == "rejected"
    assert cab.test_error == "5 inhibited"
    assert cab.resume() is None, "still inhibited"
    line.drive(1)
    ack = cab.resume()
    a = json.loads(ack)
    assert (a["result"], a["seq"], a["pulses"], a["last"]) == ("applied", 7, 3, 7)
    assert [w for w, _ in widths(c)] == [100, 100, 100]
    assert cab.held() == 0 and read_json(root + "state.json")["cur"] is None
    assert cab.handle(credit(8, 1, "cs_b"))[0] == "applied"


def test_inhibit_mid_train_stops_between_pulses_and_a_cut_while_held_loses_nothing():
    root = scratch()
    c = clock()
    cab = boot(root, c, inhibit=True)
    line = machine.pins[INHIBIT]

    def on_edge(pin, t, v):
        if pin.id == 25 and v == 0 and len(pulses(pin)) == 2:
            line.drive(0)         # the game blocks coins after the second pulse

    machine.watchers.append(on_edge)
    assert cab.handle(credit(3, 5, "cs_a")) == ("held", None)
    assert len(pulses(machine.pins[25])) == 2
    st = read_json(root + "state.json")
    assert (st["cur"]["done"], st["cur"]["held"]) == (2, 1)
    # power cut while held: no pulse was on the line, so none is counted as done
    del machine.watchers[:]
    c2 = clock()
    cab2 = boot(root, c2, inhibit=True)
    machine.pins[INHIBIT].drive(0)
    assert cab2.recover() == 3 and cab2.held() == 3
    assert len(machine.pins[25].history) == 1, "still held after boot"
    machine.pins[INHIBIT].drive(1)
    a = json.loads(cab2.resume())
    assert (a["result"], a["pulses"], a["last"]) == ("applied", 5, 3)
    assert len(pulses(machine.pins[25])) == 3, "2 before the cut + 3 after = 5"
    assert read_json(root + "state.json")["total"] == 5


def test_cfg_json_written_atomically():
    root = scratch()
    cab = boot(root, clock())
    cab.handle_config(cfg(1, 50, 60))
    assert exists(root + "cfg.json") and not exists(root + "cfg.tmp")
