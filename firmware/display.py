# The cabinet's own screen (board.json `display`): imported only when a display is configured, so a board
# without one pays nothing. What it shows comes from what the firmware already knows: the link (attract
# with the pay-page QR, or "coins only"), the inhibit line ("game busy"), the credit being pulsed
# ("Paid - 3 credits", one step per pulse), "Press START" for _DONE_MS after the last pulse, safe mode.
# The QR is a 1-bit bitmap made by `arcade provision` (no QR encoder here): a binary PBM, whose rows are
# framebuf's MONO_HLSB layout. Drawing happens after a pulse (in the gap, which counts the time) or in the
# main loop, never while the coin line is active; a display that fails is reported in the status and
# otherwise ignored: payments never wait on it.
import sys
import time
import framebuf
from micropython import const

_DONE_MS = const(15000)         # "Press START" stays this long after the last pulse, then attract
_POLL_MS = const(1000)          # main-loop turn while a display is on (to end the "Press START" screen)
_LINE = const(40)               # longest price/promotion line kept (characters)

BOOT = const(0)
ATTRACT = const(1)
OFFLINE = const(2)
BUSY = const(3)
HELD = const(4)
PAY = const(5)
DONE = const(6)
SAFE = const(7)
TEST = const(8)
# RGB565 ink per screen (a colour panel; the OLEDs are one colour)
_INK = (0xFFFF, 0xFFFF, 0xF800, 0xFD20, 0xFD20, 0x07E0, 0x07E0, 0xF800, 0xFFFF)
_TICK = "\x01"                  # drawn as a check mark


def _scale(w, h):
    return 1 if w * h <= 8192 else 2


def qr_box(w, h):
    """(x, y, side): the square the attract screen keeps for the QR on a w x h screen. The host sizes
    the bitmap to fit it (tools/hostsim/screen.py)."""
    if w > h:
        return 0, 0, h
    side = min(w, h - 3 * 10 * _scale(w, h) - 4)
    return (w - side) // 2, 0, side


def _why(e):
    a = e.args
    return "%s %s" % (type(e).__name__, a[0] if a else "")    # e.g. "OSError 19"


def _text_line(v):
    if not isinstance(v, str):
        return ""
    return v[:_LINE]


def _wrap(t, n):
    out = []
    line = ""
    for word in t.split(" "):
        while len(word) > n:
            if line:
                out.append(line)
                line = ""
            out.append(word[:n])
            word = word[n:]
        if not line:
            line = word
        elif len(line) + 1 + len(word) <= n:
            line += " " + word
        else:
            out.append(line)
            line = word
    if line:
        out.append(line)
    return out


class Screen:
    def __init__(self, d, root="", content=None):
        self.error = ""
        self.panel = None
        self.shown = None
        self.online = False
        self.done_at = None
        self.app = None
        self.ticks = time.ticks_ms      # the coin line's clock once attached (a fake one in tests)
        self.root = root
        c = content if isinstance(content, dict) else {}
        self.qr = c.get("qr") if isinstance(c.get("qr"), str) else None
        self.price = _text_line(c.get("price"))
        self.promo = _text_line(c.get("promo"))
        try:
            mod = __import__("disp_" + d["driver"])
            p = mod.Panel(d)
            # drawn a band of rows at a time (the whole screen on an OLED, 8 rows on the colour
            # panel: 240 B instead of a 7.2 KB frame); each band draws the whole scene, clipped
            w, h, bh = p.w, p.h, p.band
            if mod.FMT == framebuf.MONO_VLSB:
                n = w * ((bh + 7) // 8)
            else:
                n = ((w + 7) // 8) * bh
            self.buf = bytearray(n)
            self.fb = framebuf.FrameBuffer(self.buf, w, bh, mod.FMT)
            self.w, self.h, self.bh = w, h, bh
            self.oy = 0
            self.src = None
            self.qn = 0
            self.items = None
            self.bar = self.qxy = None
            self.glyph = framebuf.FrameBuffer(bytearray(8), 8, 8, framebuf.MONO_HLSB)
            inv = framebuf.FrameBuffer(bytearray(1), 2, 1, framebuf.MONO_HLSB)
            inv.pixel(0, 0, 1)          # PBM 0 (light module) -> lit, 1 (dark) -> unlit
            self.inv = inv
            self.panel = p
        except Exception as e:          # missing or broken display: report it, run without it
            self.error = "%s: %s" % (d["driver"], _why(e))

    # -- what the app calls
    def link(self, up):
        self.online = up
        self.update()

    def update(self):
        """From the main loop: the screen for the state now (drawn only when it changed)."""
        if self.panel is None or self.app is None:
            return
        cab = self.app.cabinet
        cur = cab.state["cur"]
        if cur is not None:             # only between pulse trains: a credit held by inhibit
            self.show(HELD, cur["credits"])
            return
        if self.done_at is not None:
            if time.ticks_diff(self.ticks(), self.done_at) < _DONE_MS:
                return
            self.done_at = None
        if not self.online:
            self.show(OFFLINE)
        elif cab.inhibited():
            self.show(BUSY)
        else:
            self.show(ATTRACT)

    def pulsed(self):
        """Coin.after: the line has just gone idle, the gap starts now (drawing counts towards it)."""
        if self.panel is None:
            return
        cur = self.app.cabinet.state["cur"]
        if cur is None:
            self.show(TEST, self.app.coin.count)
            return
        k = cur["done"] + 1             # the cabinet counts this pulse once Coin.pulse returns
        if k >= cur["pulses"]:
            self.done_at = self.ticks()
            self.show(DONE, cur["credits"])
        else:
            self.show(PAY, k, cur["pulses"], cur["credits"])

    def show(self, st, a=0, b=0, c=0):
        if self.panel is None:
            return
        key = (st, a, b, c)
        if key == self.shown:
            return
        p = self.panel
        try:
            if st == ATTRACT:
                self.src = self._qr()
            self._layout(st, a, b, c)   # once; each band only paints (little garbage per band)
            p.begin(_INK[st])
            oy = 0
            while oy < self.h:
                n = min(self.bh, self.h - oy)
                self.oy = oy
                self._paint()
                p.push(self.fb, self.buf, n)
                oy += n
            p.end()
            self.shown = key
        except Exception as e:
            self.error = "draw: %s" % _why(e)
            self.panel = None
        self.src = None
        self.items = None

    def config(self, payload):
        """Cabinet.handle_config once attached: the cabinet applies the config (timing, version,
        cfg.json) first; then its signed screen lines, if it brings some (firmware/scrfiles.py; a board
        without a screen never reads them)."""
        r = self.handle(payload)
        if r == "applied":
            _ext("take", self, payload)
        return r

    # -- drawing: _layout says where everything goes, _paint draws it into the band at self.oy
    def _paint(self):
        fb = self.fb
        oy = self.oy
        fb.fill(0)
        if self.qxy is not None:
            fb.blit(self.src, self.qxy[0], self.qxy[1] - oy, -1, self.inv)
        for t, x, y, k in self.items:
            self._text(t, x, y, k)
        if self.bar is not None:
            x, y, w, f, t = self.bar
            fb.rect(x, y - oy, w, t, 1)
            fb.fill_rect(x, y - oy, f, t, 1)

    def _layout(self, st, a, b, c):
        w, h = self.w, self.h
        s = _scale(w, h)
        src = self.src
        self.items = []
        self.bar = self.qxy = None
        if st == ATTRACT and src is not None:
            x, y, side = qr_box(w, h)
            n = self.qn
            if w > h:
                self.qxy = (x + (side - n) // 2, (h - n) // 2)
            else:
                self.qxy = ((w - n) // 2, y + (side - n) // 2)
            lines = ("Scan to play", self.price, self.promo)
            if w > h:
                self._lines(lines, side + 2, 0, w - side - 2, h, s, False)
            else:
                self._lines(lines, 0, side + 2, w, h - side - 2, s, False)
            return
        credits = "%d credit%s" % (a if st != PAY else c, "" if (a if st != PAY else c) == 1 else "s")
        if st == ATTRACT:
            lines = ("Scan the cabinet's code to play", self.price, self.promo)
        elif st == OFFLINE:
            lines = ("Coins only", "Card payments unavailable")
        elif st == BUSY:
            lines = ("Game busy", "Paid credits wait for the game")
        elif st == HELD:
            lines = ("Paid " + _TICK, credits, "waiting for the game")
        elif st == PAY:
            lines = ("Paid " + _TICK, credits, "coin %d of %d" % (a, b))
        elif st == DONE:
            lines = ("Press START", credits + " added")
        elif st == SAFE:
            lines = ("SAFE MODE", "Service: fix the config over USB")
        elif st == TEST:
            lines = ("Test pulse", "coin line check")
        else:
            lines = ("Starting", "connecting to the network")
        bottom = self._lines(lines, 0, 0, w, h - (6 * s if st == PAY else 0), s, True)
        if st == PAY:
            m = 4 * s
            self.bar = (m, min(bottom + 2 * s, h - 5 * s), w - 2 * m, (w - 2 * m) * a // b, 4 * s)

    def _lines(self, lines, x, y, w, h, s, big):
        """Centred text in the box (into self.items); the first line twice as large when `big` and it
        fits. Returns the y below the last line."""
        while True:
            rows = []
            total = 0
            for i, t in enumerate(lines):
                if not t:
                    continue
                # the headline on one line if it can; a line's longest word never split
                n = len(t) if (big and i == 0) else max(len(x) for x in t.split(" "))
                k = 2 * s if (big and i == 0) else s
                while k > 1 and n * 8 * k > w:
                    k -= 1
                for part in _wrap(t, w // (8 * k)):
                    rows.append((part, k))
                    total += 10 * k
            if total <= h + 2 * s or s == 1:
                break
            s = 1                       # a colour panel: smaller text rather than lines cut off
        ty = y + max(0, (h - total) // 2)
        for part, k in rows:
            if ty + 8 * k > y + h:
                break
            self.items.append((part, x + (w - len(part) * 8 * k) // 2, ty, k))
            ty += 10 * k
        return ty

    def _text(self, t, x, y, k):
        y -= self.oy
        if y + 9 * k < 0 or y >= self.bh:
            return                      # not in this band
        fb = self.fb
        g = self.glyph
        for ch in t:
            if ch == _TICK:
                for d in range(k + 1):
                    fb.line(x + k, y + 4 * k + d, x + 3 * k, y + 6 * k + d, 1)
                    fb.line(x + 3 * k, y + 6 * k + d, x + 7 * k, y + k + d, 1)
            elif k == 1:
                fb.text(ch, x, y, 1)
            else:
                g.fill(0)
                g.text(ch, 0, 0, 1)
                for gy in range(8):
                    for gx in range(8):
                        if g.pixel(gx, gy):
                            fb.fill_rect(x + gx * k, y + gy * k, k, k, 1)
            x += 8 * k

    def _qr(self):
        """The provisioned QR as a framebuffer, or None (and the reason in `error`)."""
        return _ext("qr", self, qr_box(self.w, self.h)[2])

def _ext(fn, *a):
    # firmware/scrfiles.py (the QR bitmap, the config's lines; it catches its own errors) is loaded for
    # this and dropped after: no heap kept between uses
    import scrfiles
    r = getattr(scrfiles, fn)(*a)
    del sys.modules["scrfiles"]
    return r


def attach(app, d, root=""):
    """App.__init__: the screen for board.json's `display`, driven by this app."""
    s = Screen(d, root, app.cfg.get("screen"))
    s.app = app
    s.ticks = app.coin.ticks_ms
    s.handle = app.cabinet.handle_config
    app.cabinet.handle_config = s.config
    if s.panel is not None:
        app.coin.after = s.pulsed
        if app.poll_cap > _POLL_MS:
            app.poll_cap = _POLL_MS
        s.show(BOOT)
    return s


def safe(board, root=""):
    """boot.py in safe mode: say so on the screen, if there is one that works."""
    s = Screen(board["display"], root)
    s.show(SAFE)
    return s
