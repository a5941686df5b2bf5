# Exactly-once apply logic: dedupe rules, journal contents at every step, recovery after a cut.
import json

import machine
import fwmsgs
from cabinet import Cabinet
from coin import Coin
from journal import Journal
from fwutil import EPOCH, KEY, LEDGER, LEDGER2, SECRET, clock, pulses, read_json, scratch

TS = 1764165000


class Cut(Exception):
    """Power lost here."""


def boot(root, c, tick=None):
    coin = Coin(25, True, 100, 150, c.ticks_ms, c.sleep_ms)
    return Cabinet("cab1", SECRET, Journal(root), coin, tick)


def credit(seq, pulses_, session, ledger=LEDGER, credits=1):
    return fwmsgs.credit(KEY, "cab1", ledger, seq, credits, pulses_, session, TS, EPOCH)


def ack_of(payload):
    assert fwmsgs.check_ack(payload, KEY), "ack must be signed with the cabinet's secret"
    return json.loads(payload)


def test_applied_credit_journals_before_each_pulse():
    root = scratch()
    c = clock()
    cab = boot(root, c)
    seen = []

    def on_edge(pin, t, v):
        if v == 1:   # a pulse starts: what is in flash right now?
            seen.append(read_json(root + "state.json")["cur"])

    machine.watchers.append(on_edge)
    result, ack = cab.handle(credit(7, 3, "cs_a", credits=3))
    assert result == "applied"
    assert [s["done"] for s in seen] == [0, 1, 2], "done=k is in flash before pulse k+1"
    assert all(s["seq"] == 7 and s["pulses"] == 3 and s["session"] == "cs_a" for s in seen)
    assert [p[1] for p in pulses(machine.pins[25])] == [100, 100, 100]
    a = ack_of(ack)
    assert (a["result"], a["reason"], a["seq"], a["pulses"], a["last"], a["ledger"], a["session"]) == \
        ("applied", "", 7, 3, 7, LEDGER, "cs_a")
    st = read_json(root + "state.json")
    assert st["cur"] is None and st["ledger"] == LEDGER and st["last"] == 7
    assert st["recent"] == ["cs_a"] and st["total"] == 3
    assert st["ack"] == [LEDGER, 7, 3, "cs_a"], "the applied ack stays in flash until PUBACKed"
    assert cab.pending_ack() == ack
    cab.ack_sent(ack)
    assert read_json(root + "state.json")["ack"] is None and cab.pending_ack() is None


def test_same_session_again_is_a_duplicate_without_pulse():
    root = scratch()
    c = clock()
    cab = boot(root, c)
    cab.handle(credit(1, 2, "cs_a"))
    n = len(machine.pins[25].history)
    saves = cab.journal.saves
    result, ack = cab.handle(credit(1, 2, "cs_a"))
    a = ack_of(ack)
    assert result == "duplicate" and (a["result"], a["pulses"], a["last"], a["seq"]) == ("duplicate", 0, 1, 1)
    assert len(machine.pins[25].history) == n, "no pulse"
    assert cab.journal.saves == saves, "nothing written"
    # also under another ledger and seq (a wiped relay re-delivering an old payment)
    result, ack = cab.handle(credit(1, 2, "cs_a", ledger=LEDGER2))
    assert result == "duplicate" and len(machine.pins[25].history) == n


def test_used_seq_of_the_same_ledger_is_stale():
    root = scratch()
    c = clock()
    cab = boot(root, c)
    cab.handle(credit(5, 1, "cs_a"))
    n = len(machine.pins[25].history)
    for seq in (5, 4, 1):
        result, ack = cab.handle(credit(seq, 1, "cs_other"))
        a = ack_of(ack)
        assert result == "rejected" and a["reason"] == "stale_seq" and a["last"] == 5 and a["seq"] == seq
    assert len(machine.pins[25].history) == n
    assert cab.handle(credit(6, 1, "cs_other"))[0] == "applied"
    assert read_json(root + "state.json")["last"] == 6


def test_fresh_cabinet_adopts_the_ledger_of_its_first_credit():
    root = scratch()
    c = clock()
    cab = boot(root, c)
    assert cab.state["ledger"] == "" and cab.journal.note == "fresh"
    result, ack = cab.handle(credit(120, 1, "cs_first"))
    assert result == "applied" and ack_of(ack)["last"] == 120
    st = read_json(root + "state.json")
    assert (st["ledger"], st["last"]) == (LEDGER, 120)


def test_new_ledger_restarting_at_seq_1_is_applied_not_swallowed():
    root = scratch()
    c = clock()
    cab = boot(root, c)
    cab.handle(credit(120, 1, "cs_old"))
    result, ack = cab.handle(credit(1, 2, "cs_new", ledger=LEDGER2))
    a = ack_of(ack)
    assert result == "applied" and (a["ledger"], a["seq"], a["last"], a["pulses"]) == (LEDGER2, 1, 1, 2)
    st = read_json(root + "state.json")
    assert (st["ledger"], st["last"], st["recent"], st["total"]) == (LEDGER2, 1, ["cs_old", "cs_new"], 3)
    assert cab.handle(credit(1, 1, "cs_other", ledger=LEDGER2))[0] == "rejected"


def test_rejected_credits_change_nothing():
    root = scratch()
    c = clock()
    cab = boot(root, c)
    cab.handle(credit(2, 1, "cs_a"))
    before = read_json(root + "state.json")
    n = len(machine.pins[25].history)
    forged = fwmsgs.credit(b"not-the-secret-at-all", "cab1", LEDGER, 3, 1, 1, "cs_forged", TS, EPOCH)
    # an unverified credit's ledger/seq/session are never echoed (signed) back: no signing oracle
    rows = [
        (forged, "bad_signature", "", 0, ""),
        (b"garbage", "malformed", "", 0, ""),
        (fwmsgs.credit(KEY, "cab2", LEDGER, 3, 1, 1, "cs_x", TS, EPOCH), "wrong_cabinet", LEDGER, 3, "cs_x"),
        (credit(3, 0, "cs_y"), "bad_pulses", LEDGER, 3, "cs_y"),
    ]
    for payload, reason, ledger, seq, session in rows:
        result, ack = cab.handle(payload)
        a = ack_of(ack)
        assert (result, a["result"], a["reason"], a["ledger"], a["seq"], a["session"], a["pulses"],
                a["last"]) == ("rejected", "rejected", reason, ledger, seq, session, 0, 2), reason
    assert read_json(root + "state.json") == before
    assert len(machine.pins[25].history) == n


def test_recent_keeps_the_last_32_sessions():
    root = scratch()
    c = clock()
    cab = boot(root, c)
    for i in range(1, 35):
        assert cab.handle(credit(i, 1, "cs_%d" % i))[0] == "applied"
    st = read_json(root + "state.json")
    assert st["recent"] == ["cs_%d" % i for i in range(3, 35)]
    assert st["total"] == 34


def _cut_at(k, edge):
    """Pulse train of 4 with power lost at pulse k's `edge` (1: it starts, 0: it ends)."""
    root = scratch()
    c = clock()
    cab = boot(root, c)
    counter = [0]

    def on_edge(pin, t, v):
        if v == 1:
            counter[0] += 1
        if v == edge and counter[0] == k:
            raise Cut()

    machine.watchers.append(on_edge)
    try:
        cab.handle(credit(9, 4, "cs_cut", credits=2))
        assert False, "the cut must interrupt the train"
    except Cut:
        pass
    del machine.watchers[:]
    before = len(pulses(machine.pins[25])) + (1 if edge == 1 else 0)   # started, incl. the cut one
    st = read_json(root + "state.json")
    assert st["cur"]["done"] == k - 1 and st["ack"] is None and st["last"] == 0
    # power back: a new boot on the same flash
    cab = boot(root, c)
    left = cab.recover()
    after = len(pulses(machine.pins[25]))
    return cab, root, before, left, after


def test_recovery_counts_the_pulse_in_flight_once():
    for k in (1, 2, 3, 4):
        for edge in (1, 0):
            cab, root, before, left, after = _cut_at(k, edge)
            assert before == k, (k, edge)
            assert left == 4 - k and after == 4 - k, (k, edge, left, after)
            assert before + after == 4, "the pulse in flight is counted once, never twice"
            st = read_json(root + "state.json")
            assert st["cur"] is None and st["last"] == 9 and st["recent"] == ["cs_cut"] and st["total"] == 4
            a = ack_of(cab.pending_ack())
            assert (a["result"], a["seq"], a["pulses"], a["last"]) == ("applied", 9, 4, 9), (k, edge)
            # the broker redelivers the credit after the cut: no second application
            assert cab.handle(credit(9, 4, "cs_cut", credits=2))[0] == "duplicate"
            assert len(pulses(machine.pins[25])) == after


def test_cut_after_journal_before_the_pulse_never_doubles():
    # the only price of "never twice": a cut between the journal write and the edge loses that coin
    root = scratch()
    c = clock()
    calls = [0]

    def tick():
        calls[0] += 1
        if calls[0] == 3:
            raise Cut()

    cab = boot(root, c, tick)
    try:
        cab.handle(credit(4, 4, "cs_t"))
        assert False
    except Cut:
        pass
    before = len(pulses(machine.pins[25]))
    cab = boot(root, c)
    assert cab.recover() == 1
    assert before + len(pulses(machine.pins[25])) == 3
    assert ack_of(cab.pending_ack())["pulses"] == 4


def test_cut_in_the_gap_before_a_pulse_loses_nothing():
    # the gap is waited out before done=k is journaled: a cut during it leaves pulse k+1 unjournaled
    root = scratch()
    c = clock()
    pin = []

    def sleep(ms):
        if len(pulses(pin[0])) == 1 and not pin[0].value():
            raise Cut()      # idle after pulse 1: the gap before pulse 2
        c.sleep_ms(ms)

    cab = Cabinet("cab1", SECRET, Journal(root), Coin(25, True, 100, 150, c.ticks_ms, sleep))
    pin.append(machine.pins[25])
    try:
        cab.handle(credit(5, 4, "cs_gap"))
        assert False, "the cut must interrupt the train"
    except Cut:
        pass
    before = len(pulses(machine.pins[25]))
    cab = boot(root, c)
    cab.recover()
    assert before == 1 and before + len(pulses(machine.pins[25])) == 4, "no coin lost in the gap"


def test_boot_without_a_cut_recovers_nothing():
    root = scratch()
    c = clock()
    cab = boot(root, c)
    cab.handle(credit(1, 1, "cs_a"))
    cab = boot(root, c)
    assert cab.recover() is None
    assert cab.pending_ack() is not None, "an ack not yet PUBACKed survives a reboot"
    assert ack_of(cab.pending_ack())["seq"] == 1
