# Hostile credit payloads at the cabinet's message handling (issue 10): never an exception, never a
# pulse from a forged, tampered, replayed or out-of-range message; a good one pulses exactly its count.
# Runs under CPython and MicroPython (tests/test_micropython.py); `make fuzz` runs many more cases.
from cabinet import Cabinet
from coin import Coin
from journal import Journal
import fuzzmsg
import machine
from fwutil import SECRET, clock, scratch

CASES = 120


def cabinet_and_pin():
    c = clock()
    coin = Coin(25, True, 100, 150, c.ticks_ms, c.sleep_ms)
    return Cabinet("cab1", SECRET, Journal(scratch()), coin, None), machine.pins[25]


def test_hostile_credit_payloads_pulse_only_for_good_credits():
    cab, pin = cabinet_and_pin()
    kinds, seen, allowed = fuzzmsg.run(CASES, 7, cab, pin)
    assert seen == allowed and allowed > 0
    assert len(kinds) >= 8, kinds
