# Boot hardening. boot.py: coin line idle first (unless board.json is for another chip: then the
# pin is never driven), then the safe-mode pin (board.json `safe_pin`): held within
# `safe_window_ms` of boot -> main.py does not start the app, so a bad config can be fixed over USB.
# main.py: an uncaught exception is written to crash.log (bounded) and the board resets; the WDT
# started by the app is only the last resort. Reset loops: after CRASHES consecutive crash resets
# (resets.py) main.py backs off before starting the app again, blinking the LED, REPL reachable.
import os
import sys
import time
import machine
from micropython import const

_LOG_MAX = const(4096)      # crash.log rolls over to crash.old past this: at most ~8 KB of flash
_POLL_MS = const(20)
CRASHES = const(3)          # consecutive crash resets before main.py backs off
_BACKOFF_MS = const(60000)  # the first back-off; doubles with each further crash, up to an hour
_BACKOFF_MAX = const(3600000)

active = False              # set by boot(), read by main.py (same interpreter, same module)
crashes = 0                 # consecutive crash resets before this boot (boot() reads RTC memory)
_board = None
_clock = (None, None)


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


def boot(root="", ticks_ms=None, sleep_ms=None, fresh=False):
    """boot.py's work. Returns the board profile, or None when it could not be read. `fresh`: an
    update is on probation or was just rolled back (otaboot.py): its crash resets are counted by
    otaboot, so the reset-loop back-off starts from zero (it must not delay a rollback)."""
    global active, crashes, _board, _clock
    try:
        import resets
        crashes = resets.at_boot()
        if fresh:
            resets.store(0)
            crashes = 0
    except Exception as e:
        print("boot: reset count not read:", e)
    sys.modules.pop("resets", None)
    _clock = (ticks_ms, sleep_ms)
    try:
        import config
        from coin import Coin
        b = config.load_board(root)      # refuses a profile for another chip: no pin driven
        Coin(b["coin_pin"], b["active"] == "high", b["width_ms"], b["gap_ms"])
    except Exception as e:   # never stop the board from reaching the REPL
        print("boot: coin line not set:", e)
        return None
    _board = b
    active = held(b, ticks_ms, sleep_ms)
    if active and b.get("display") is not None:
        try:
            import display
            display.safe(b, root)
        except Exception as e:   # the screen is a courtesy; safe mode must not depend on it
            print("boot: display:", e)
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


def backoff(n, sleep_ms=None):
    """After CRASHES consecutive crash resets: wait (1 min, doubling, at most 1 h) before the app
    runs again, blinking the LED (3 short flashes a second) if the board has one. No watchdog runs
    yet, and Ctrl-C lands at the REPL. Returns the ms waited."""
    if n < CRASHES:
        return 0
    sleep_ms = sleep_ms or time.sleep_ms
    ms = _BACKOFF_MS << min(n - CRASHES, 6)
    if ms > _BACKOFF_MAX:
        ms = _BACKOFF_MAX
    print("RESET LOOP: %d crash resets in a row (see crash.log); waiting %d s before starting the "
          "app again. Ctrl-C for the REPL." % (n, ms // 1000))
    led = None
    b = _board
    if b is not None and b.get("led_pin") is not None:
        led = machine.Signal(machine.Pin(b["led_pin"], machine.Pin.OUT),
                             invert=b["led_active"] == "low")
    left = ms
    while left > 0:
        for v in (1, 0, 1, 0, 1, 0):
            if led is not None:
                led.value(v)
            sleep_ms(100)
        sleep_ms(400)
        left -= 1000
    return ms


def run(root="", emit=None):
    """main.py's work: the app; an uncaught exception is logged and the board reset."""
    if active:
        return 2
    try:
        backoff(crashes, _clock[1])
        import app
        return app.main(root, emit, crashes)
    except KeyboardInterrupt:
        raise                  # Ctrl-C over USB: stay at the REPL
    except Exception as e:
        print("uncaught:", repr(e), "- logged to crash.log, resetting")
        log(e, root)
        machine.reset()
