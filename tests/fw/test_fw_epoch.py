# No replay whatever happens to the flash (docs/protocol.md): a journal's epoch is drawn when the
# cabinet boots with no usable journal, and only credits signed for it apply.
import json
import os

import machine
import fwmsgs
from cabinet import Cabinet
from coin import Coin
from journal import Journal
from fwutil import KEY, LEDGER, SECRET, clock, epochs, read_json, scratch, write_json

TS = 1764165000


def boot(root, c, secret=SECRET):
    return Cabinet("cab1", secret, Journal(root), Coin(25, True, 100, 150, c.ticks_ms, c.sleep_ms))


def pin_edges():
    return len(machine.pins[25].history)


def _captured(root, c):
    cab = boot(root, c)
    out = []
    for seq in (1, 2, 3):
        p = fwmsgs.credit(KEY, "cab1", LEDGER, seq, 1, 2, "cs_cap_%d" % seq, TS, cab.state["epoch"])
        assert cab.handle(p)[0] == "applied"
        out.append(p)
    return cab, out


def _replay(cab, captured, reason):
    before = pin_edges()
    for p in captured:
        result, ack = cab.handle(p)
        a = json.loads(ack)
        assert (result, a["reason"], a["pulses"]) == ("rejected", reason, 0), (result, a)
        assert fwmsgs.check_ack(ack, cab.key)
    assert pin_edges() == before, "a replayed credit pulsed"


def test_replays_after_flash_loss_pulse_nothing():
    epochs(real=True)
    try:
        c = clock()
        root = scratch()
        cab, captured = _captured(root, c)
        first = cab.state["epoch"]
        assert len(first) == 16 and read_json(root + "state.json")["epoch"] == first
        # (a) state.json deleted
        os.remove(root + "state.json")
        cab = boot(root, c)
        assert cab.journal.note == "fresh" and cab.state["epoch"] != first
        _replay(cab, captured, "wrong_epoch")
        # (b) state.json corrupted
        with open(root + "state.json", "w") as f:
            f.write('{"v": 1, "ledg')
        second = cab.state["epoch"]
        cab = boot(root, c)
        assert cab.journal.note.startswith("corrupt") and cab.state["epoch"] not in (first, second)
        _replay(cab, captured, "wrong_epoch")
        # (c) flash erased, board re-provisioned: a new secret (and a fresh journal)
        for name in os.listdir(root[:-1]):
            os.remove(root + name)
        cab = boot(root, c, "7" * 64)
        _replay(cab, captured, "bad_signature")
        # (d) a new board, provisioned: its own flash and secret
        cab = boot(scratch(), c, "8" * 64)
        _replay(cab, captured, "bad_signature")
    finally:
        epochs()


def test_the_epoch_is_kept_while_the_journal_is_and_a_credit_for_it_applies():
    c = clock()
    root = scratch()
    epochs("a" * 16, "b" * 16)
    cab = boot(root, c)
    assert cab.state["epoch"] == "a" * 16
    cab = boot(root, c)                      # an ordinary reboot keeps the journal and its epoch
    assert cab.state["epoch"] == "a" * 16
    result, ack = cab.handle(fwmsgs.credit(KEY, "cab1", LEDGER, 1, 1, 1, "cs_x", TS, "b" * 16))
    a = json.loads(ack)
    # names the verified credit and says which epoch to sign for: the relay signs it again
    assert (result, a["reason"], a["seq"], a["session"], a["epoch"]) == ("rejected", "wrong_epoch", 1, "cs_x",
                                                                         "a" * 16)
    assert cab.handle(fwmsgs.credit(KEY, "cab1", LEDGER, 1, 1, 1, "cs_x", TS, "a" * 16))[0] == "applied"
    epochs()


def test_a_journal_from_before_epochs_keeps_its_ledger_and_gets_an_epoch():
    c = clock()
    root = scratch()
    write_json(root + "state.json", {"v": 1, "ledger": LEDGER, "last": 7, "recent": ["cs_old"], "cur": None,
                                     "total": 9, "ack": None})
    cab = boot(root, c)
    s = read_json(root + "state.json")
    assert (s["ledger"], s["last"], s["recent"], s["epoch"]) == (LEDGER, 7, ["cs_old"], cab.state["epoch"])
    assert cab.state["epoch"]
