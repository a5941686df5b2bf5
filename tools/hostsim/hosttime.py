# Give CPython's time module MicroPython's ticks API (no-op on MicroPython).
# ticks wrap at 2**30 like on the ESP32, so firmware that forgets ticks_diff breaks here too.
# start(ms) puts the counter anywhere (`arcade simulate --ticks-start`), e.g. just before the wrap,
# as on a board that has been up for 12.4 days.
import time

_PERIOD = 1 << 30
_MASK = _PERIOD - 1
_HALF = _PERIOD >> 1
_offset = 0


def _ticks_ms():
    return (time.monotonic_ns() // 1000000 + _offset) & _MASK


def _ticks_diff(a, b):
    return ((a - b + _HALF) & _MASK) - _HALF


def _ticks_add(a, d):
    return (a + d) & _MASK


def _sleep_ms(ms):
    if ms > 0:
        time.sleep(ms / 1000)


def start(ms):
    """Make ticks_ms() read `ms` now (mod 2**30) and count on from there."""
    global _offset
    _offset = (ms - time.monotonic_ns() // 1000000) & _MASK


def patch():
    if not hasattr(time, "ticks_ms"):
        time.ticks_ms = _ticks_ms
        time.ticks_diff = _ticks_diff
        time.ticks_add = _ticks_add
        time.sleep_ms = _sleep_ms


patch()
