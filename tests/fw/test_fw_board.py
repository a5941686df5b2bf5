# What a real ESP32 does that a kind simulation does not (issue 11): ticks that wrap, a watchdog
# that resets, a peer that hangs up mid-CONNACK, reset loops, flash that fails, a WiFi driver that
# rejoins by itself, a board of the wrong chip, an inhibit coil that flaps. Each test failed on the
# firmware before the fix. The oracles are the fakes' own records: pin edges, WDT feeds, connect()
# calls, RTC memory; never the firmware's journal.
import time

import machine
import network
import fwmsgs
import resets
import safemode
import app as fwapp
import config
import boardcheck
from coin import Coin
from fwutil import EPOCH, KEY, LEDGER, FakeSock, board, clock, puback, scratch, write_json
from fwutil import config as good_config
from umqtt.simple import MQTTException

DAY = 24 * 3600 * 1000
_REAL = getattr(fwapp.simple.socket, "mod", fwapp.simple.socket)   # the socket module umqtt had


def _app(root, c, net=None, crashes=0, **kw):
    """An App on `root`; with `net`, umqtt's socket module is `net` (wrapped by the App as it
    wraps the real one). Put it back with _unnet()."""
    write_json(root + "board.json", board(**kw))
    b = config.check_board(board(**kw))
    events = []
    fwapp.simple.socket = net if net is not None else _REAL
    a = fwapp.App(config.check_config(good_config()), b,
                  Coin(25, True, 100, 150, c.ticks_ms, c.sleep_ms), root,
                  lambda e, d: events.append((e, d)), crashes)
    if net is None:
        fwapp.simple.socket = _REAL
    return a, events


def _unnet():
    fwapp.simple.socket = _REAL


def _rising(pin_id):
    """A list that counts rising edges on pin_id across every Pin object (a reboot makes new ones)."""
    edges = []
    machine.watchers.append(lambda p, t, v: p.id == pin_id and v == 1 and edges.append(t))
    return edges


# -- 2. tick wrap ------------------------------------------------------------------------------

def test_a_credit_after_a_week_closed_pulses_without_waiting_days():
    # ticks_ms wraps every 2^30 ms: after 6.2-12.4 idle days ticks_diff(now, idle_since) is
    # negative and the old gap computation slept for days inside the MQTT callback
    for idle in (7 * DAY, 10 * DAY, (1 << 29) + 1, (1 << 30) - 1):
        c = clock(1000)
        coin = Coin(25, True, 100, 150, c.ticks_ms, c.sleep_ms)
        c.advance(idle)
        coin.pulse()
        assert c.sleeps == [100], (idle, c.sleeps[:3])
        coin.pulse()
        assert c.sleeps == [100, 150, 100], "the gap between pulses is still kept"


def test_pulses_across_the_tick_wrap_keep_their_gap():
    c = clock((1 << 30) - 120)       # the counter wraps during the first pulse
    coin = Coin(25, True, 100, 150, c.ticks_ms, c.sleep_ms)
    for _ in range(3):
        coin.pulse()
    assert c.sleeps == [150, 100, 150, 100, 150, 100]


# -- 3. watchdog across DNS, connect, CONNACK, SUBACKs, PUBACK -----------------------------------

class SlowNet:
    """A socket module on a poor link: each step takes `ms` of the fake clock (DNS, TCP connect, and
    every packet from the broker), as a board sees it. The broker's packets are scripted."""

    def __init__(self, c, ms, packets):
        self.c = c
        self.ms = ms
        self.packets = list(packets)
        self.socks = []

    def getaddrinfo(self, host, port, *a):
        self.c.advance(self.ms)
        return [(2, 1, 0, "", ("10.0.0.1", port))]

    def socket(self, *a):
        net = self
        s = FakeSock()
        s.setsockopt = lambda *a: None

        def connect(addr):
            net.c.advance(net.ms)
        s.connect = connect
        read = s.read

        def slow_read(n):
            if not s.incoming and net.packets:
                net.c.advance(net.ms)          # the broker's next packet takes this long to come
                s.feed(net.packets.pop(0))
            return read(n)
        s.read = slow_read
        self.socks.append(s)
        return s


def _broker_packets():
    # CONNACK, four SUBACKs (config, test, credit, ota: pids 1..4), the PUBACK for the status (pid 5)
    return [b"\x20\x02\x00\x00", b"\x90\x03\x00\x01\x01", b"\x90\x03\x00\x02\x01",
            b"\x90\x03\x00\x03\x01", b"\x90\x03\x00\x04\x01", puback(5)]


def test_watchdog_is_fed_across_every_blocking_step_of_a_connect():
    # 9 s per step on a poor link: 72 s from DNS to the status PUBACK. Unfed, the 30 s WDT resets
    # the board mid-connect (and again, and again) instead of the firmware backing off.
    c = clock()
    root = scratch()
    net = SlowNet(c, 9000, _broker_packets())
    a, events = _app(root, c, net)
    try:
        a.wdt = machine.WDT(timeout=30000)
        a._wifi()
        a._connect()
    finally:
        _unnet()
    assert ("connected", None) in events and not net.packets, "the whole connect ran"
    assert a.wdt.starved() < 30000, "unfed for %d ms: the board would have reset" % a.wdt.starved()


# -- 4. short CONNACK ----------------------------------------------------------------------------

def test_a_peer_that_hangs_up_before_the_connack_is_a_lost_link():
    # a plain client on a TLS port, a broker at max_connections: EOF before 4 bytes. umqtt indexes
    # the short read: IndexError escaped App.run (not a link error) -> reset loop
    for reply in (b"", b"\x20", b"\x20\x02"):
        c = clock()
        root = scratch()
        net = SlowNet(c, 10, [reply] if reply else [])
        a, events = _app(root, c, net)
        try:
            a._wifi()
            try:
                a._connect()
                assert False, "connected to a peer that hung up"
            except (OSError, MQTTException, AssertionError):
                pass                     # what App.run retries with backoff
        finally:
            _unnet()
        a._close()
        assert net.socks[0].closed, "the socket is closed before the retry"


# -- 5. reset loops --------------------------------------------------------------------------------

def test_crash_resets_are_counted_in_rtc_memory_and_power_on_clears_them():
    clock()
    rows = [(machine.PWRON_RESET, 0), (machine.HARD_RESET, 1), (machine.HARD_RESET, 2),
            (machine.SOFT_RESET, 2), (machine.WDT_RESET, 3), (machine.PWRON_RESET, 0)]
    for cause, want in rows:
        machine.cause[0] = cause
        assert resets.at_boot() == want, (cause, want)
        assert resets.count() == want
    assert len(machine.rtc_memory) <= 16, "RTC memory is small: a few bytes"


def test_after_three_crash_resets_in_a_row_main_backs_off_then_reports_it():
    root = scratch()
    c = clock()
    write_json(root + "board.json", board(led_pin=2))
    started = []
    handed = []
    orig = fwapp.main

    def crash(root, emit, crashes):
        started.append(c.now)
        handed.append(crashes)
        raise RuntimeError("a bug the loop did not expect")

    fwapp.main = crash
    try:
        machine.cause[0] = machine.PWRON_RESET
        for n in range(5):           # five boots, each ending in a crash reset
            safemode.active = False
            safemode.boot(root, c.ticks_ms, c.sleep_ms)
            before = c.now
            try:
                safemode.run(root)
                assert False, "must reset"
            except machine.ResetCalled:
                machine.cause[0] = machine.HARD_RESET      # what machine.reset() leaves
            waited = started[-1] - before
            if n < 3:
                assert waited < 5000, (n, waited)
            else:
                assert waited >= 60000, "crash %d: started again after %d ms" % (n, waited)
        assert safemode.crashes == 4 and handed == [0, 1, 2, 3, 4], handed
        assert len(machine.pins[2].history) > 10, "the LED blinks while it waits"
    finally:
        fwapp.main = orig
        safemode.active = False
    # the next status says so (main.py hands the count to the app); connected long enough, cleared
    a, _ = _app(root, c, crashes=4)
    a._wifi()
    raw = FakeSock()
    a.client.sock = fwapp.DeadlineSocket(raw, 5)
    raw.on_write = lambda d: d.startswith(b'{"t":') and raw.feed(puback(a.client.pid))
    a._status(True)
    out = bytes(raw.out)
    assert b'"crashes":4' in out, out
    a._step()
    assert resets.count() == 4, "not cleared at once"
    a.up_ms = 300000                 # 5 minutes up and connected
    a.up_at = time.ticks_ms()
    a._step()
    assert resets.count() == 0


# -- 6. flash write failure never wedges ------------------------------------------------------------

def _as_the_board_does(root, c, app, topic, msg):
    """Deliver like App.run + main.py: a link error -> the same App, the broker redelivers; any
    other exception -> logged and reset: a new App on the same flash (boot() recovers)."""
    for _ in range(3):
        try:
            app._on_msg(topic, msg)
            return app
        except (OSError, MQTTException, AssertionError):
            pass
        except Exception:
            app, _ = _app(root, c)
            app.boot()
    return app


def test_a_failed_journal_write_never_leaves_the_cabinet_holding_credits():
    # before: save() failed mid-credit, `cur` stayed set in RAM, and every later credit was
    # "held" (no pulse, no ack) until someone power-cycled the board
    root = scratch()
    c = clock()
    edges = _rising(25)
    a, _ = _app(root, c)
    save = a.cabinet.journal.save
    calls = []

    def flaky(state):
        calls.append(1)
        if len(calls) == 2:          # after pulse 1 of 2: the flash refuses (ENOSPC, EIO)
            raise OSError(28)
        save(state)

    a.cabinet.journal.save = flaky
    one = fwmsgs.credit(KEY, "cab1", LEDGER, 1, 1, 2, "cs_one", 1764165000, EPOCH)
    two = fwmsgs.credit(KEY, "cab1", LEDGER, 2, 1, 1, "cs_two", 1764165000, EPOCH)
    a = _as_the_board_does(root, c, a, a.t_credit, one)   # redelivered: the broker had no PUBACK
    a = _as_the_board_does(root, c, a, a.t_credit, two)
    assert len(edges) == 3, "2 + 1 pulses, none lost, none twice: %d" % len(edges)
    assert a.cabinet.state["cur"] is None and a.cabinet.state["last"] == 2


def test_a_failed_config_write_leaves_ram_as_flash():
    root = scratch()
    c = clock()
    a, _ = _app(root, c)

    def full(cfg):
        raise OSError(28)

    a.cabinet.journal.save_cfg = full
    msg = fwmsgs.config(KEY, "cab1", 1764165000, 120, 300, 2, 1764165000)
    a = _as_the_board_does(root, c, a, a.t_config, msg)
    assert a.cabinet.cfg == a.cabinet.journal.load_cfg(), "RAM ahead of flash"


# -- 7. WiFi through status() -------------------------------------------------------------------------

def test_wifi_connect_is_asked_once_and_201_202_are_reported():
    for down, want in (({"up": False}, 201), ({"password": "other"}, 202)):
        network.reset()
        c = clock()
        root = scratch()
        a, events = _app(root, c)
        for k in down:
            network.ap[k] = down[k]
        for _ in range(3):            # three loop turns with the AP away or refusing the password
            try:
                a._wifi()
                assert False, "WiFi up without an AP"
            except OSError:
                pass                  # retried with backoff; never "Wifi Internal Error"
        assert network.connects == ["arcade-wifi"], "connect() asked once; the driver rejoins"
        assert [d for e, d in events if e == "wifi"] == [want]
        network.reset()
        network.connects.append("arcade-wifi")   # (the driver's own rejoin: no new connect())
        a.wlan._requested = True
        a._wifi()
        assert a.info()["wifi"] == want, "the next status says why it was down"
    network.reset()


def test_the_mqtt_link_is_dropped_as_soon_as_wifi_is_down():
    network.reset()
    c = clock()
    a, _ = _app(scratch(), c)
    a._wifi()
    raw = FakeSock()
    a.client.sock = fwapp.DeadlineSocket(raw, 5)
    raw.on_write = lambda d: d.startswith(b'{"t":') and raw.feed(puback(a.client.pid))
    a._step()
    network.ap["up"] = False
    try:
        a._step()
        assert False, "kept the link on a WiFi that is gone"
    except OSError:
        pass
    network.reset()


# -- 9. a profile for another chip ------------------------------------------------------------------

def test_a_c3_profile_on_a_classic_esp32_never_drives_its_coin_pin():
    root = scratch()
    clock()
    write_json(root + "board.json", board(chip="esp32c3", coin_pin=10, unsafe_pins=[]))
    try:
        config.load_board(root, "Generic ESP32 module with ESP32")
        assert False, "accepted a C3 profile on an ESP32"
    except config.ConfigError as e:
        assert "ESP32" in str(e) and "esp32c3" in str(e)
    assert 10 not in machine.pins, "GPIO10 (SPI flash on a classic ESP32) was touched"
    b = config.load_board(root, "ESP32C3 module with ESP32C3")
    assert b["coin_pin"] == 10
    for m, chip in (("Generic ESP32S3 module with ESP32S3", "esp32s3"), ("JavaScript with Emscripten", ""),
                    ("Generic ESP32 module with ESP32", "esp32"), ("", "")):
        assert boardcheck.chip(m) == chip, m


# -- 10. inhibit debounce -------------------------------------------------------------------------------

def test_a_flapping_inhibit_line_reads_inhibited_until_quiet_for_50_ms():
    c = clock()
    a, _ = _app(scratch(), c, inhibit_pin=26)
    pin = machine.pins[26]
    cab = a.cabinet
    assert not cab.inhibited()
    for _ in range(5):               # a half-wave 50 Hz coil: 10 ms on, 10 ms off
        pin.drive(0)
        assert cab.inhibited()
        c.advance(10)
        pin.drive(1)
        assert cab.inhibited(), "an off half-cycle is not a cleared line"
        c.advance(10)
    c.advance(39)
    assert cab.inhibited()
    c.advance(1)                     # 50 ms since the last edge
    assert not cab.inhibited()
    c.advance(DAY * 7)               # a week later (ticks wrapped) still clear
    assert not cab.inhibited()
