# Exact pulse widths and gaps with a fake clock; idle level first; active-low boards.
import machine
from coin import Coin
from fwutil import clock, pulses


def test_line_idle_first_then_exact_widths_and_gaps():
    c = clock(1000)
    coin = Coin(25, True, 100, 150, c.ticks_ms, c.sleep_ms)
    pin = machine.pins[25]
    assert pin.mode == machine.Pin.OUT
    assert pin.history == [(1000, 0)], "idle (low) before anything else"
    for _ in range(3):
        coin.pulse()
    assert pin.history == [(1000, 0), (1150, 1), (1250, 0), (1400, 1), (1500, 0), (1650, 1), (1750, 0)]
    assert pulses(pin) == [(1150, 100, 150), (1400, 100, 150), (1650, 100, 150)]
    assert coin.count == 3


def test_active_low_board_inverts_the_line():
    c = clock(0)
    coin = Coin(26, False, 120, 200, c.ticks_ms, c.sleep_ms)
    pin = machine.pins[26]
    assert pin.history == [(0, 1)], "idle is high on an active-low line"
    coin.pulse()
    coin.pulse()
    assert pin.history == [(0, 1), (200, 0), (320, 1), (520, 0), (640, 1)]
    assert coin.line.value() == 0 and pin.value() == 1


def test_time_already_idle_counts_toward_the_gap():
    c = clock(0)
    coin = Coin(25, True, 100, 150, c.ticks_ms, c.sleep_ms)
    coin.pulse()
    c.advance(400)     # e.g. waiting for the next credit
    coin.pulse()
    pin = machine.pins[25]
    assert [p[0] for p in pulses(pin)] == [150, 650], "no extra gap once the line was idle long enough"
    c.advance(60)
    coin.pulse()
    assert pulses(pin)[2] == (900, 100, 150), "only the missing 90 ms are waited"


def test_line_goes_idle_when_a_pulse_is_interrupted():
    c = clock(0)

    class Stop(Exception):
        pass

    def sleep(ms):
        c.sleep_ms(ms)
        if machine.pins[25].value() == 1:
            raise Stop()

    coin = Coin(25, True, 100, 150, c.ticks_ms, sleep)
    try:
        coin.pulse()
        assert False, "expected the interruption"
    except Stop:
        pass
    assert machine.pins[25].value() == 0
    assert coin.count == 0


def test_input_pin_refuses_writes():
    clock(0)
    p = machine.Pin(34, machine.Pin.IN)
    try:
        p.value(1)
        assert False, "writing an input must raise"
    except machine.PinMisuse:
        pass
    p.drive(1)
    assert p.value() == 1
