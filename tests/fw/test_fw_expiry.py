# Signed expiry (docs/protocol.md, Expiry): a credit with exp is started only while the board's
# NTP-set clock says now < exp; at or after exp, or on an unset clock, it is rejected/expired with
# no pulse, so the relay can refund it once exp (plus a margin) has passed. A credit applied before
# exp and sent again after it is still a duplicate: the relay learns the play was given.
import json

import machine
import fwmsgs
import protocol
from cabinet import Cabinet
from coin import Coin
from journal import Journal
from fwutil import EPOCH, KEY, LEDGER, SECRET, clock, read_json, scratch

TS = 1764165000
EXP = TS + 900
_real_clock = protocol.clock


def at(t):
    """The board's clock reads `t` (Unix seconds; 0 = unset) for what follows."""
    protocol.clock = lambda: t


def boot(root, c):
    return Cabinet("cab1", SECRET, Journal(root), Coin(25, True, 100, 150, c.ticks_ms, c.sleep_ms))


def edges():
    return len(machine.pins[25].history)


def credit(seq, session, exp):
    return fwmsgs.credit(KEY, "cab1", LEDGER, seq, 1, 2, session, TS, EPOCH, exp)


def handled(cab, payload):
    result, ack = cab.handle(payload)
    a = json.loads(ack)
    return result, a["reason"], a["pulses"], a["seq"], a["session"]


def test_before_exp_applies_at_or_after_exp_never_starts():
    root = scratch()
    c = clock()
    cab = boot(root, c)
    try:
        at(EXP - 1)
        assert handled(cab, credit(1, "cs_in_time", EXP))[:3] == ("applied", "", 2)
        before = edges()
        at(EXP)
        assert handled(cab, credit(2, "cs_at_exp", EXP)) == ("rejected", "expired", 0, 2, "cs_at_exp")
        at(EXP + 3600)
        assert handled(cab, credit(3, "cs_late", EXP)) == ("rejected", "expired", 0, 3, "cs_late")
        assert edges() == before, "an expired credit puts nothing on the coin line"
        st = read_json(root + "state.json")
        assert st["last"] == 1 and st["cur"] is None and st["recent"] == ["cs_in_time"]
    finally:
        protocol.clock = _real_clock


def test_an_unset_clock_refuses_a_credit_with_exp_and_takes_one_without():
    root = scratch()
    c = clock()
    cab = boot(root, c)
    try:
        at(0)
        before = edges()
        assert handled(cab, credit(1, "cs_exp", EXP))[:3] == ("rejected", "expired", 0)
        assert edges() == before
        # the relay signs it again without exp (and never refunds it automatically): it applies
        assert handled(cab, credit(1, "cs_exp", 0))[:3] == ("applied", "", 2)
    finally:
        protocol.clock = _real_clock


def test_applied_before_exp_then_resent_after_is_a_duplicate_not_expired():
    root = scratch()
    c = clock()
    cab = boot(root, c)
    try:
        at(EXP - 10)
        p = credit(1, "cs_played", EXP)
        assert handled(cab, p)[0] == "applied"
        before = edges()
        at(EXP + 600)          # the ack was lost; the relay's copy arrives after exp
        assert handled(cab, p)[:3] == ("duplicate", "", 0)
        at(0)                  # and after a reboot with no NTP
        assert handled(cab, p)[:3] == ("duplicate", "", 0)
        assert edges() == before
    finally:
        protocol.clock = _real_clock


def test_exp_cannot_be_moved_by_whoever_relays_the_credit():
    root = scratch()
    c = clock()
    cab = boot(root, c)
    try:
        at(EXP + 5)
        before = edges()
        m = json.loads(credit(1, "cs_moved", EXP))
        m["exp"] = EXP + 3600      # a broker or the network pushing exp later
        assert cab.handle(json.dumps(m).encode())[0] == "rejected"
        m["exp"] = 0
        assert cab.handle(json.dumps(m).encode())[0] == "rejected"
        assert edges() == before
    finally:
        protocol.clock = _real_clock


def test_the_clock_reads_unix_seconds_or_0():
    t = _real_clock()
    assert t == 0 or t >= 1704067200
