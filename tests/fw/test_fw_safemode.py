# boot.py/main.py hardening: coin line idle first, the safe-mode pin, crash log + reset.
import os

import app
import machine
import safemode
from fwutil import board, clock, exists, scratch, write_json


def _boot(root, c, **kw):
    write_json(root + "board.json", board(**kw))
    safemode.active = False
    return safemode.boot(root, c.ticks_ms, c.sleep_ms)


def test_boot_drives_the_coin_line_idle_before_anything_else():
    for active, idle in (("high", 0), ("low", 1)):
        root = scratch()
        c = clock()
        b = _boot(root, c, active=active)
        assert b["coin_pin"] == 25
        h = machine.pins[25].history
        assert machine.pins[25].mode == machine.Pin.OUT
        assert [v for _, v in h] == [idle], "idle from the first edge, never a pulse"
        assert not safemode.active, "no safe_pin in the profile: never safe mode"


def test_safe_pin_held_within_the_window_skips_the_app():
    rows = [(None, False), (0, True), (900, True), (1001, False)]   # ms after boot it is pressed
    for pressed_at, want in rows:
        root = scratch()
        c = clock()
        start = c.now
        if pressed_at is not None:
            machine.sources[0] = lambda: 0 if c.now - start >= pressed_at else 1
        _boot(root, c, safe_pin=0, safe_window_ms=1000)
        assert safemode.active is want, pressed_at
        assert c.now - start <= 1000 + 20, "the window is bounded"
        started = []
        orig = app.main
        app.main = lambda root, emit, crashes: started.append(root) or 0
        try:
            rc = safemode.run(root)
        finally:
            app.main = orig
        assert (rc == 2) is want and (started == []) is want, pressed_at
    safemode.active = False


def test_uncaught_exception_is_logged_and_the_board_resets():
    root = scratch()
    clock()
    safemode.active = False
    orig = app.main

    def boom(root, emit, crashes):
        raise RuntimeError("something the loop did not expect")

    app.main = boom
    try:
        try:
            safemode.run(root)
            assert False, "must reset"
        except machine.ResetCalled:
            pass
    finally:
        app.main = orig
    assert len(machine.resets) == 1
    with open(root + "crash.log") as f:
        text = f.read()
    assert "something the loop did not expect" in text and text.startswith("--- uncaught")


def test_crash_log_stays_bounded():
    root = scratch()
    for i in range(200):
        safemode.log(ValueError("crash number %d " % i + "x" * 100), root)
    assert exists(root + "crash.old")
    assert os.stat(root + "crash.log")[6] <= 4096 + 1024
    assert os.stat(root + "crash.old")[6] <= 4096 + 1024
    with open(root + "crash.log") as f:
        assert "crash number 199" in f.read()


def test_keyboard_interrupt_reaches_the_repl_without_reset():
    root = scratch()
    clock()
    safemode.active = False
    orig = app.main

    def ctrl_c(root, emit, crashes):
        raise KeyboardInterrupt

    app.main = ctrl_c
    try:
        try:
            safemode.run(root)
            assert False
        except KeyboardInterrupt:
            pass
    finally:
        app.main = orig
    assert machine.resets == [] and not exists(root + "crash.log")
