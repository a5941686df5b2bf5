# Boot hardening. boot.py: coin line idle first, then the safe-mode pin (board.json `safe_pin`):
# held within `safe_window_ms` of boot -> main.py does not start the app, so a bad config can be
# fixed over USB. main.py: an uncaught exception is written to crash.log (bounded) and the board
# resets; the WDT started by the app is only the last resort.
import os
import sys
import time
import machine
from micropython import const

_LOG_MAX = const(4096)      # crash.log rolls over to crash.old past this: at most ~8 KB of flash
_POLL_MS = const(20)

active = False              # set by boot(), read by main.py (same interpreter, same module)


def held(board, ticks_ms=None, sleep_ms=None):
    """True when the safe-mode pin reads active at any time within the boot window."""
    pin = board.get("safe_pin")
    if pin is None:
        return False
    ticks_ms = ticks_ms or time.ticks_ms
    sleep_ms = sleep_ms or time.sleep_ms
    low = board["safe_active"] == "low"
    p = machine.Pin(pin, machine.Pin.IN, machine.Pin.PULL_UP if low else machine.Pin.PULL_DOWN)
    start = ticks_ms()
    while True:
        if p.value() == (0 if low else 1):
            return True
        if time.ticks_diff(ticks_ms(), start) >= board["safe_window_ms"]:
            return False
        sleep_ms(_POLL_MS)


def boot(root="", ticks_ms=None, sleep_ms=None):
    """boot.py's work. Returns the board profile, or None when it could not be read."""
    global active
    try:
        import config
        from coin import Coin
        b = config.load_board(root)
        Coin(b["coin_pin"], b["active"] == "high", b["width_ms"], b["gap_ms"])
    except Exception as e:   # never stop the board from reaching the REPL
        print("boot: coin line not set:", e)
        return None
    active = held(b, ticks_ms, sleep_ms)
    if active:
        print("SAFE MODE: safe-mode pin held at boot; main.py will not start the app. "
              "Fix config.json over USB (mpremote), then reset.")
    return b


def log(e, root=""):
    """Append the exception to crash.log, keeping the file bounded."""
    path = root + "crash.log"
    try:
        if os.stat(path)[6] > _LOG_MAX:
            os.rename(path, root + "crash.old")
    except OSError:
        pass
    try:
        with open(path, "a") as f:
            f.write("--- uncaught at ticks %d\n" % time.ticks_ms())
            pe = getattr(sys, "print_exception", None)
            if pe is not None:
                pe(e, f)
            else:
                f.write("%r\n" % (e,))
    except OSError:
        pass


def run(root="", emit=None):
    """main.py's work: the app; an uncaught exception is logged and the board reset."""
    if active:
        return 2
    try:
        import app
        return app.main(root, emit)
    except KeyboardInterrupt:
        raise                  # Ctrl-C over USB: stay at the REPL
    except Exception as e:
        print("uncaught:", repr(e), "- logged to crash.log, resetting")
        log(e, root)
        machine.reset()
