# Fake display controllers wired to the fake buses in machine.py: an SSD1306 or SH1106 on I2C and an
# ST7789 on SPI. Each decodes the byte stream as the chip's datasheet says into its own display RAM, and
# `glass(x, y)` answers what the viewer sees at that pixel (after the controller's remapping, with the
# panel mounted as the board profile's rotation says). A command the chip does not have, pixel data before
# the chip is set up, or a write while held in reset raises PanelMisuse. So tests read the screen from the
# panel, not from the firmware's framebuffer. Written in the MicroPython subset (the VM run uses it too).
import machine


class PanelMisuse(Exception):
    pass


def attach(d):
    """The fake panel for a board profile's checked `display` object, wired to its pins."""
    if d["driver"] == "st7789":
        p = ST7789(d["pins"], d["width"], d["height"], d["rotation"])
    else:
        p = OLED(d["driver"], d["pins"], d.get("addr", 0x3C), d["width"], d["height"], d["rotation"])
    machine.devices.append(p)
    return p


# (command, number of argument bytes) for the OLED controllers
_OLED_ARGS = {0x81: 1, 0xA8: 1, 0xD3: 1, 0xD5: 1, 0xD9: 1, 0xDA: 1, 0xDB: 1}
_SSD1306_ONLY = {0x20: 1, 0x21: 2, 0x22: 2, 0x8D: 1}
_SH1106_ONLY = {0xAD: 1}


class OLED:
    bus = "i2c"

    def __init__(self, kind, pins, addr, width, height, rotation=0):
        if kind not in ("ssd1306", "sh1106"):
            raise ValueError(kind)
        self.kind = kind
        self.sda, self.scl, self.addr = pins["sda"], pins["scl"], addr
        self.width, self.height, self.rotation = width, height, rotation
        self.cols = 128 if kind == "ssd1306" else 132
        self.ram = bytearray(self.cols * 8)
        self.on = False
        self.pump = kind == "sh1106"     # the SH1106's DC-DC is on at reset; the SSD1306 needs 0x8D 0x14
        self.seg_remap = self.com_remap = self.inverse = False
        self.mode = 2                    # page addressing after reset
        self.col_lo, self.col_hi, self.page_lo, self.page_hi = 0, self.cols - 1, 0, 7
        self.col = self.page = 0
        self.pending = None              # (command, args so far, args wanted)
        self.last_page = -1
        self.frames = 0                  # data bytes written
        self.log = []                    # every command byte, in order
        self.on_frame = None             # fn(panel) after a transaction that wrote the bottom page

    def write(self, data):
        i = 0
        n = len(data)
        while i < n:
            ctl = data[i]
            i += 1
            if ctl & 0x3F:
                raise PanelMisuse("bad I2C control byte 0x%02x" % ctl)
            if ctl & 0x80:               # Co=1: one byte, then another control byte
                if i >= n:
                    raise PanelMisuse("control byte 0x%02x with nothing after it" % ctl)
                self._byte(data[i], ctl & 0x40)
                i += 1
                continue
            while i < n:                 # Co=0: the rest of the transaction
                self._byte(data[i], ctl & 0x40)
                i += 1
            if ctl & 0x40 and self.on_frame is not None and self.last_page == self.height // 8 - 1:
                self.on_frame(self)

    def _byte(self, b, is_data):
        if is_data:
            self._data(b)
        else:
            self._cmd(b)

    def _cmd(self, b):
        self.log.append(b)
        if self.pending is not None:
            c, args, want = self.pending
            args.append(b)
            if len(args) == want:
                self.pending = None
                self._apply(c, args)
            return
        extra = _SSD1306_ONLY if self.kind == "ssd1306" else _SH1106_ONLY
        want = _OLED_ARGS.get(b, extra.get(b, 0))
        if want:
            self.pending = (b, [], want)
            return
        if b <= 0x0F:
            self.col = (self.col & 0xF0) | b
        elif b <= 0x1F:
            self.col = (self.col & 0x0F) | ((b & 0x0F) << 4)
        elif 0x40 <= b <= 0x7F:
            if b != 0x40:
                raise PanelMisuse("display start line %d: the firmware draws from line 0" % (b - 0x40))
        elif b in (0xA0, 0xA1):
            self.seg_remap = b == 0xA1
        elif b in (0xA4, 0xA5):
            if b == 0xA5:
                raise PanelMisuse("0xA5 lights every pixel whatever the RAM holds")
        elif b in (0xA6, 0xA7):
            self.inverse = b == 0xA7
        elif b in (0xAE, 0xAF):
            self.on = b == 0xAF
        elif 0xB0 <= b <= 0xB7:
            self.page = b - 0xB0
        elif b in (0xC0, 0xC8):
            self.com_remap = b == 0xC8
        elif self.kind == "sh1106" and 0x30 <= b <= 0x33:
            pass                         # pump voltage
        else:
            raise PanelMisuse("%s has no command 0x%02x" % (self.kind, b))

    def _apply(self, c, a):
        if c == 0x20:
            if a[0] > 2:
                raise PanelMisuse("addressing mode %d" % a[0])
            self.mode = a[0]
        elif c == 0x21:
            self.col_lo, self.col_hi = a[0] & 0x7F, a[1] & 0x7F
            self.col = self.col_lo
        elif c == 0x22:
            self.page_lo, self.page_hi = a[0] & 7, a[1] & 7
            self.page = self.page_lo
        elif c == 0x8D:
            self.pump = bool(a[0] & 0x04)
        elif c == 0xAD:
            self.pump = bool(a[0] & 0x01)
        elif c == 0xA8 and a[0] + 1 != self.height:
            raise PanelMisuse("multiplex ratio %d on a panel %d rows high" % (a[0] + 1, self.height))

    def _data(self, b):
        if self.pending is not None:
            raise PanelMisuse("pixel data while command 0x%02x waits for its arguments" % self.pending[0])
        if self.col >= self.cols:
            raise PanelMisuse("column %d is past the RAM" % self.col)
        self.ram[self.page * self.cols + self.col] = b
        self.last_page = self.page
        self.frames += 1
        if self.mode == 0:               # horizontal: wrap to the next page
            if self.col >= self.col_hi:
                self.col = self.col_lo
                self.page = self.page_lo if self.page >= self.page_hi else self.page + 1
            else:
                self.col += 1
        else:                            # page mode: the column advances, the page stays
            self.col = self.col + 1 if self.col < self.cols - 1 else self.col

    def lit(self, x, y):
        """Is the glass pixel (x, y) lit, as mounted (the profile's rotation undone)?"""
        if not (self.on and self.pump):
            return False
        w, h = self.width, self.height
        if self.rotation == 180:
            x, y = w - 1 - x, h - 1 - y
        off = 2 if self.kind == "sh1106" else 0
        col = off + (x if self.seg_remap else w - 1 - x)
        row = y if self.com_remap else h - 1 - y
        v = (self.ram[(row >> 3) * self.cols + col] >> (row & 7)) & 1
        return bool(v ^ self.inverse)

    def glass(self, x, y):
        """(r, g, b) the viewer sees: a white OLED."""
        return (255, 255, 255) if self.lit(x, y) else (0, 0, 0)

    def size(self):
        return self.width, self.height


# ST7789: commands and their argument bytes
_ST_ARGS = {0x01: 0, 0x10: 0, 0x11: 0, 0x13: 0, 0x20: 0, 0x21: 0, 0x28: 0, 0x29: 0, 0x2A: 4, 0x2B: 4,
            0x2C: -1, 0x36: 1, 0x3A: 1}
# the visible part of the controller's 240x320 RAM: (first column, first row) per panel size
_ST_WINDOW = {(240, 240): (0, 0), (135, 240): (52, 40)}


class ST7789:
    bus = "spi"

    def __init__(self, pins, width, height, rotation=0):
        self.sck, self.mosi, self.cs, self.dc = pins["sck"], pins["mosi"], pins["cs"], pins["dc"]
        self.rst = pins.get("rst")
        self.width, self.height, self.rotation = width, height, rotation
        self.ram = bytearray(240 * 320 * 2)
        self._reset()
        self.frames = 0                 # RAMWR commands
        self.decode = True              # False: count pixel bytes only (the footprint run's speed)
        self.log = []
        self.on_frame = None            # fn(panel) when a RAMWR has filled its window

    def _reset(self):
        self.sleeping = True
        self.on = False
        self.inverted = False
        self.colmod = 0x66
        self.madctl = 0
        self.xs, self.xe, self.ys, self.ye = 0, 239, 0, 319
        self.cmd = None
        self.args = []
        self.x = self.y = 0
        self.half = None

    def write(self, data, dc):
        if self.rst is not None:
            p = machine.pins.get(self.rst)
            if p is None or p.mode != machine.Pin.OUT or p.value() == 0:
                raise PanelMisuse("SPI write while the ST7789's reset line is low or undriven")
        if not dc:
            for b in data:
                self._command(b)
            return
        if self.cmd is None:
            raise PanelMisuse("data with no command before it")
        if self.cmd == 0x2C:
            if self.decode:
                self._pixels(data)
            return
        for b in data:
            self.args.append(b)
        want = _ST_ARGS[self.cmd]
        if len(self.args) > want:
            raise PanelMisuse("command 0x%02x takes %d argument bytes, got %d" % (self.cmd, want, len(self.args)))
        if len(self.args) == want:
            self._apply(self.cmd, self.args)

    def _command(self, b):
        if b not in _ST_ARGS:
            raise PanelMisuse("the ST7789 driver sent 0x%02x, a command this project does not use" % b)
        if self.cmd is not None and 0 < _ST_ARGS[self.cmd] != len(self.args):
            raise PanelMisuse("command 0x%02x cut short (%d argument bytes)" % (self.cmd, len(self.args)))
        self.log.append(b)
        self.cmd, self.args = b, []
        if b == 0x01:
            self._reset()
            self.cmd = 0x01
        elif b == 0x11:
            self.sleeping = False
        elif b == 0x10:
            self.sleeping = True
        elif b == 0x21:
            self.inverted = True
        elif b == 0x20:
            self.inverted = False
        elif b == 0x29:
            self.on = True
        elif b == 0x28:
            self.on = False
        elif b == 0x2C:
            if self.colmod & 0x07 != 0x05:
                raise PanelMisuse("RAMWR before COLMOD set 16-bit colour (0x3A 0x55)")
            self.x, self.y, self.half = self.xs, self.ys, None
            self.frames += 1

    def _apply(self, c, a):
        if c == 0x2A:
            self.xs, self.xe = a[0] << 8 | a[1], a[2] << 8 | a[3]
        elif c == 0x2B:
            self.ys, self.ye = a[0] << 8 | a[1], a[2] << 8 | a[3]
        elif c == 0x36:
            self.madctl = a[0]
        elif c == 0x3A:
            self.colmod = a[0]

    def _phys(self, x, y):
        m = self.madctl
        if m & 0x20:                    # MV: rows and columns exchanged
            x, y = y, x
        if m & 0x40:                    # MX
            x = 239 - x
        if m & 0x80:                    # MY
            y = 319 - y
        return x, y

    def _pixels(self, data):
        i = 0
        if self.half is not None:
            data = bytes((self.half,)) + bytes(data)
            self.half = None
        n = len(data)
        while i + 1 < n:
            if self.y > self.ye:
                raise PanelMisuse("more pixel data than the CASET/RASET window holds")
            px, py = self._phys(self.x, self.y)
            if not (0 <= px < 240 and 0 <= py < 320):
                raise PanelMisuse("pixel (%d, %d) lands outside the controller's RAM" % (self.x, self.y))
            j = (py * 240 + px) * 2
            self.ram[j] = data[i]
            self.ram[j + 1] = data[i + 1]
            i += 2
            if self.x >= self.xe:
                self.x = self.xs
                self.y += 1
                if self.y > self.ye and self.on_frame is not None:
                    self.on_frame(self)
            else:
                self.x += 1
        if i < n:
            self.half = data[i]

    def size(self):
        """The image as the viewer sees it (rotation undone): (width, height)."""
        if self.rotation in (90, 270):
            return self.height, self.width
        return self.width, self.height

    def glass(self, x, y):
        """(r, g, b) the viewer sees at (x, y) of the upright image."""
        if self.sleeping or not self.on:
            return (0, 0, 0)
        w, h = self.width, self.height
        r = self.rotation
        # upright viewer's (x, y) -> the panel's own (unrotated) pixel
        if r == 90:
            x, y = w - 1 - y, x
        elif r == 180:
            x, y = w - 1 - x, h - 1 - y
        elif r == 270:
            x, y = y, h - 1 - x
        c0, r0 = _ST_WINDOW[(w, h)]
        j = ((r0 + y) * 240 + c0 + x) * 2
        v = self.ram[j] << 8 | self.ram[j + 1]
        if not self.inverted:           # IPS panels show the opposite colour without INVON
            v ^= 0xFFFF
        return ((v >> 11) * 255 // 31, ((v >> 5) & 0x3F) * 255 // 63, (v & 0x1F) * 255 // 31)
