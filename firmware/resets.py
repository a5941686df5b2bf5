# Consecutive crash resets, counted in RTC memory (machine.RTC().memory(): survives a reset, not a
# power cut). boot.py counts every reset that was neither a power-on nor a soft reset (Ctrl-D):
# machine.reset() after an uncaught exception, a watchdog reset, a panic. The app reports it in its
# status (`crashes`, handed down by main.py) and clears it (RTC memory emptied) once it has been up
# and connected for 5 minutes. Loaded by boot.py's work and dropped again: it stays off the heap.
import machine

_TAG = b"AP"


def _rtc():
    try:
        return machine.RTC()
    except Exception:
        return None


def count():
    r = _rtc()
    if r is None:
        return 0
    m = r.memory()
    return m[2] if len(m) == 3 and m[:2] == _TAG else 0


def store(n):
    r = _rtc()
    if r is not None:
        r.memory(_TAG + bytes((n if n < 255 else 255,)))


def at_boot():
    """Update the count for the reset that just happened; returns it."""
    cause = machine.reset_cause()
    n = count()
    if cause == machine.PWRON_RESET:
        n = 0
    elif cause != machine.SOFT_RESET:
        n += 1
    store(n)
    return n
