# The cabinet's screen (firmware/display.py and the disp_* drivers) on fake panels that decode the I2C/SPI
# byte stream (tools/hostsim/panels.py): what the glass shows, when it is drawn relative to the coin line,
# and that a missing display changes nothing else. Runs on CPython (framebuf stand-in) and MicroPython.
import json
import sys

import fwmsgs
import machine
import panels
import app as fwapp
import config
from coin import Coin
from fwutil import EPOCH, KEY, LEDGER, FakeSock, board, clock, puback, pulses, scratch, vectors, write_json
from fwutil import config as good_config

OLED = {"driver": "ssd1306", "bus": "i2c", "width": 128, "height": 64, "rotation": 0,
        "pins": {"sda": 21, "scl": 22}}
TFT = {"driver": "st7789", "bus": "spi", "width": 135, "height": 240, "rotation": 0,
       "pins": {"sck": 18, "mosi": 23, "cs": 32, "dc": 33, "rst": 4, "bl": 13}}
# a 24 x 24 "QR": a pattern no screen text makes (1 = dark module, as in a PBM)
QR_N = 24


def _qr_bit(x, y):
    return 1 if (x * 7 + y * 3) % 5 < 2 or (x < 7 and y < 7) else 0


def _pbm(root):
    out = bytearray(b"P4\n%d %d\n" % (QR_N, QR_N))
    for y in range(QR_N):
        for i in range(0, QR_N, 8):
            byte = 0
            for b in range(8):
                byte |= _qr_bit(i + b, y) << (7 - b)
            out.append(byte)
    with open(root + "qr.pbm", "wb") as f:
        f.write(out)


def _app(d, attach=True, **kw):
    root = scratch()
    c = clock()
    b = config.check_board(board(display=d, **kw))
    panel = panels.attach(b["display"]) if attach else None
    _pbm(root)
    coin = Coin(25, True, 100, 150, c.ticks_ms, c.sleep_ms)
    events = []
    cfg = config.check_config(good_config(screen={"qr": "qr.pbm", "price": "from $0.84 a play",
                                                        "promo": "2 for 1 until 8pm"}))
    a = fwapp.App(cfg, b, coin, root, lambda e, d_: events.append((e, d_)))
    a.wlan.active(True)
    a.wlan.connect("arcade-wifi", "wifi-pass-123")     # the loop drops the link while WiFi is down
    raw = FakeSock()
    a.client.sock = fwapp.DeadlineSocket(raw, 5)
    raw.on_write = lambda data: data.startswith(b'{"t":') and raw.feed(puback(a.client.pid))
    return a, panel, c, events, raw


def frame(screen):
    """The whole picture the screen shows now, drawn by its own _layout/_paint in one full-size framebuffer
    (the screen itself only ever holds one band)."""
    import framebuf
    w, h = screen.w, screen.h
    full = framebuf.FrameBuffer(bytearray(((w + 7) // 8) * h), w, h, framebuf.MONO_HLSB)
    saved = screen.fb, screen.oy, screen.bh
    screen.fb, screen.oy, screen.bh = full, 0, h
    try:
        screen.src = screen._qr() if screen.shown[0] == 1 else None
        screen._layout(*screen.shown)
        screen._paint()
    finally:
        screen.fb, screen.oy, screen.bh = saved
        screen.src = screen.items = None
    return full


def _glass_is_fb(panel, screen):
    fb = frame(screen)
    w, h = panel.size()
    for y in range(h):
        for x in range(w):
            lit = panel.glass(x, y) != (0, 0, 0)
            if lit != bool(fb.pixel(x, y)):
                return (x, y)
    return None


def test_no_display_in_the_profile_loads_nothing():
    sys.modules.pop("display", None)
    root = scratch()
    c = clock()
    coin = Coin(25, True, 100, 150, c.ticks_ms, c.sleep_ms)
    a = fwapp.App(config.check_config(good_config()), config.check_board(board()), coin, root,
                  lambda e, d: None)
    assert a.screen is None and "display" not in sys.modules
    assert "display" not in a.info() and coin.after is None


def test_attract_shows_the_provisioned_qr_pixel_for_pixel():
    a, panel, c, events, raw = _app(OLED)
    s = a.screen
    assert s.error == "" and panel.on and panel.pump
    a._step()
    assert s.shown[0] == 2, "before the first connect: coins only"
    s.link(True)
    assert s.shown[0] == 1
    # the QR box is the left 64 x 64; the 24 px bitmap is centred in it; light modules are lit
    x0, y0 = (64 - QR_N) // 2, (64 - QR_N) // 2
    for y in range(QR_N):
        for x in range(QR_N):
            assert panel.lit(x0 + x, y0 + y) == (not _qr_bit(x, y)), (x, y)
    assert _glass_is_fb(panel, s) is None


def test_a_credit_is_drawn_between_pulses_never_during_one():
    a, panel, c, events, raw = _app(OLED)
    s = a.screen
    s.link(True)
    seen = []
    panel.on_frame = lambda p: seen.append((machine.pins[25].value(), p.frames))
    states = []
    orig = s.show

    def record(st, a_=0, b_=0, c_=0):
        orig(st, a_, b_, c_)
        states.append((st, a_, b_, c_))
    s.show = record
    a._on_msg(a.t_credit, fwmsgs.credit(KEY, "cab1", LEDGER, 1, 3, 6, "cs_disp", 1764165000, EPOCH))
    assert [p[1] for p in pulses(machine.pins[25])] == [100] * 6
    assert states == [(5, k, 6, 3) for k in range(1, 6)] + [(6, 3, 0, 0)], states
    assert len(seen) == 6 and all(level == 0 for level, _ in seen), "drawn only with the coin line idle"
    assert _glass_is_fb(panel, s) is None, "the glass shows the last screen"
    # each pulse is 100 ms and each gap at least 150 ms whatever the drawing cost
    assert all(gap >= 150 for _, _, gap in pulses(machine.pins[25])[1:])
    a._flush()
    a._step()
    assert s.shown[0] == 6, "Press START stays"
    c.advance(14999)
    a._step()
    assert s.shown[0] == 6
    c.advance(2)
    a._step()
    assert s.shown[0] == 1, "back to attract after 15 s"


def test_inhibit_busy_held_and_offline_screens():
    a, panel, c, events, raw = _app(OLED, inhibit_pin=26)
    s = a.screen
    s.link(True)
    machine.pins[26].drive(0)
    a._step()
    assert s.shown[0] == 3, "game busy"
    a._on_msg(a.t_credit, fwmsgs.credit(KEY, "cab1", LEDGER, 2, 2, 2, "cs_held", 1764165000, EPOCH))
    a._step()
    assert s.shown == (4, 2, 0, 0), "paid, held for the game"
    machine.pins[26].drive(1)
    c.advance(50)                       # the inhibit line's debounce (firmware/inhibit.py)
    a._step()
    assert [p[1] for p in pulses(machine.pins[25])] == [100, 100]
    assert s.shown[0] == 6
    c.advance(15001)
    a._step()
    assert s.shown[0] == 1
    s.link(False)
    assert s.shown[0] == 2 and _glass_is_fb(panel, s) is None


def test_a_missing_display_is_reported_and_payments_go_on():
    a, panel, c, events, raw = _app(OLED, attach=False)
    s = a.screen
    assert s.panel is None and "no display answers at I2C 0x3c" in s.error, s.error
    a._on_msg(a.t_credit, fwmsgs.credit(KEY, "cab1", LEDGER, 1, 1, 2, "cs_nodisp", 1764165000, EPOCH))
    assert [p[1] for p in pulses(machine.pins[25])] == [100, 100]
    a._flush()
    a._status(True)
    out = bytes(raw.out)
    i = out.rfind(b'{"t":"status"')
    st = json.loads(out[i:out.find(b"}", i) + 1])
    assert st["display"].startswith("ssd1306: ") and "0x3c" in st["display"]


def test_a_display_failing_mid_draw_is_dropped_not_fatal():
    a, panel, c, events, raw = _app(OLED)
    s = a.screen
    s.link(True)

    def broken(data):
        raise OSError(116)      # ETIMEDOUT on the bus
    panel.write = broken
    a._on_msg(a.t_credit, fwmsgs.credit(KEY, "cab1", LEDGER, 1, 1, 2, "cs_brk", 1764165000, EPOCH))
    assert [p[1] for p in pulses(machine.pins[25])] == [100, 100]
    assert s.panel is None and s.error == "draw: OSError 116"
    assert a.info()["display"] == "draw: OSError 116"


def test_sh1106_page_writes_and_rotation():
    for rot in (0, 180):
        d = dict(OLED)
        d["driver"] = "sh1106"
        d["rotation"] = rot
        a, panel, c, events, raw = _app(d)
        assert a.screen.error == "" and 0x20 not in panel.log, "no SSD1306-only command"
        a.screen.link(True)
        assert _glass_is_fb(panel, a.screen) is None, rot


def test_st7789_glass_matches_the_frame_in_colour():
    for rot in (0, 90):
        d = dict(TFT)
        d["rotation"] = rot
        a, panel, c, events, raw = _app(d)
        s = a.screen
        assert s.error == "", s.error
        assert (s.w, s.h) == ((135, 240) if rot == 0 else (240, 135))
        s.link(False)
        assert panel.size() == (s.w, s.h)
        red = None
        w, h = panel.size()
        fb = frame(s)
        for y in range(h):
            for x in range(w):
                g = panel.glass(x, y)
                if fb.pixel(x, y):
                    assert g == (255, 0, 0), (x, y, g)
                    red = (x, y)
                else:
                    assert g == (0, 0, 0), (x, y, g)
        assert red is not None, "the offline screen is red text"


def test_safe_mode_says_so_on_the_screen():
    import safemode
    root = scratch()
    c = clock()
    write_json(root + "board.json", board(safe_pin=0, display=OLED))
    panel = panels.attach(config.check_board(board(safe_pin=0, display=OLED))["display"])
    machine.sources[0] = lambda: 0
    safemode.active = False
    safemode.boot(root, c.ticks_ms, c.sleep_ms)
    assert safemode.active
    assert panel.frames > 0 and panel.on
    lit = 0
    for y in range(64):
        for x in range(128):
            lit += panel.lit(x, y)
    assert lit > 100, "SAFE MODE text on the glass"
    safemode.active = False


def _said(screen):
    """The text the screen shows now (its own layout of the state it last drew)."""
    screen.src = screen._qr() if screen.shown[0] == 1 else None
    try:
        screen._layout(*screen.shown)
        return " ".join(t for t, _x, _y, _k in screen.items)    # lines wrap on a narrow panel
    finally:
        screen.src = screen.items = None


def test_the_signed_config_s_price_and_promotion_lines_replace_the_provisioned_ones():
    a, panel, c, events, raw = _app(TFT)
    s = a.screen
    s.link(True)
    a._step()
    assert "from $0.84 a play" in _said(s) and "2 for 1 until 8pm" in _said(s), "provisioned lines"
    a._on_msg(a.t_config, fwmsgs.config(KEY, "cab1", 10, 0, 0, 1, 10, "from $1.25 a play", "20% off until 17:00"))
    a._step()
    assert "from $1.25 a play" in _said(s) and "20% off until 17:00" in _said(s)
    assert "from $0.84 a play" not in _said(s) and _glass_is_fb(panel, s) is None
    with open(a.cabinet.journal.root + "cfg.json") as f:
        stored = json.load(f)
    assert (stored["price"], stored["promo"]) == ("from $1.25 a play", "20% off until 17:00")
    # the happy hour closes: an empty promotion line from the relay means none on now
    a._on_msg(a.t_config, fwmsgs.config(KEY, "cab1", 11, 0, 0, 1, 11, "from $1.25 a play", ""))
    a._step()
    said = _said(s)
    assert "from $1.25 a play" in said and "off" not in said and "for 1" not in said, said
    # forged (another key) and stale (an older version, even well signed): nothing changes at all
    before = _said(s)
    for bad in (fwmsgs.config(b"x" * 64, "cab1", 12, 0, 0, 1, 12, "from $0.01 a play", "FREE PLAY"),
                fwmsgs.config(KEY, "cab1", 10, 0, 0, 1, 10, "from $0.01 a play", "FREE PLAY")):
        a._on_msg(a.t_config, bad)
        a._step()
        assert _said(s) == before and a.cabinet.cfg["ver"] == 11
    # lines tampered, signed for another version, non-ASCII, too long: the timing applies, the lines
    # on the screen stay
    good = json.loads(fwmsgs.config(KEY, "cab1", 13, 0, 0, 1, 13, "from $0.01 a play", "FREE PLAY"))
    moved = json.loads(fwmsgs.config(KEY, "cab1", 14, 0, 0, 1, 14))
    moved.update(price=good["price"], promo=good["promo"], ssig=good["ssig"])
    for ver, bad in ((13, json.dumps(dict(good, promo="FREE PLAY ALL DAY")).encode()),
                     (14, json.dumps(moved).encode()),
                     (15, fwmsgs.config(KEY, "cab1", 15, 0, 0, 1, 15, "from \u20ac0.01 a play", "")),
                     (16, fwmsgs.config(KEY, "cab1", 16, 0, 0, 1, 16, "from $0.01 a play, a bargain", ""))):
        a._on_msg(a.t_config, bad)
        a._step()
        assert a.cabinet.cfg["ver"] == ver and _said(s) == before, ver
    # a config without lines (a relay from before them): the lines shown stay
    a._on_msg(a.t_config, fwmsgs.config(KEY, "cab1", 17, 0, 0, 1, 17))
    a._step()
    assert a.cabinet.cfg["ver"] == 17 and _said(s) == before


def test_the_screen_lines_of_every_config_vector():
    import scrfiles as scrlines
    v = vectors()
    key = v["secret"].encode()
    n = 0
    for c in v["configs"]:
        if "lines" not in c:
            continue
        n += 1
        m = c["message"]
        # the screen reads lines only from a config the cabinet applied (its timing signature holds)
        reason, parsed = fwapp.protocol.check_config(json.dumps(m).encode(), "cab1", key)
        got = scrlines.lines(parsed, key) if reason == "" else None
        assert (got is not None) == c["lines"], c["name"]
        if got is not None:
            assert got == (m["price"], m["promo"]), c["name"]
    assert n >= 6


def test_provisioned_lines_until_a_config_brings_some():
    a, panel, c, events, raw = _app(TFT)
    s = a.screen
    s.link(True)
    a._on_msg(a.t_config, fwmsgs.config(KEY, "cab1", 9, 0, 0, 1, 9))
    a._step()
    assert "from $0.84 a play" in _said(s) and "2 for 1 until 8pm" in _said(s)


def test_the_screen_lines_survive_a_reboot():
    a, panel, c, events, raw = _app(TFT)
    a._on_msg(a.t_config, fwmsgs.config(KEY, "cab1", 10, 0, 0, 1, 10, "from $1.25 a play", "Happy hour"))
    root = a.cabinet.journal.root
    b = fwapp.App(config.check_config(good_config(screen={"qr": "qr.pbm", "price": "old", "promo": "old"})),
                  a.cabinet.board, a.coin, root, lambda e, d_: None)
    assert b.cabinet.cfg["ver"] == 10
    b.screen.link(True)
    said = _said(b.screen)
    assert "from $1.25 a play" in said and "Happy hour" in said and "old" not in said
