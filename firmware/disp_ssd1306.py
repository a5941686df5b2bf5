# SSD1306 OLED (128x64 or 128x32) on I2C, written for this project from the SSD1306 datasheet.
# The screen's framebuffer is MONO_VLSB: one byte = 8 rows of one column, which is the controller's own
# RAM layout, so show() sends the buffer as it is (horizontal addressing, one I2C transaction).
import framebuf
from machine import I2C, Pin

FMT = framebuf.MONO_VLSB


class Panel:
    def __init__(self, d):
        p = d["pins"]
        self.w, self.h = d["width"], d["height"]
        self.band = self.h
        self.addr = d["addr"]
        self.i2c = I2C(0, scl=Pin(p["scl"]), sda=Pin(p["sda"]), freq=d["freq"])
        if self.addr not in self.i2c.scan():
            raise OSError("no display answers at I2C 0x%02x (SDA GPIO %d, SCL GPIO %d)"
                          % (self.addr, p["sda"], p["scl"]))
        self._c2 = bytearray(2)
        self._c2[0] = 0x80
        self.init(d["rotation"] == 180)

    def _cmd(self, *cs):
        for c in cs:
            self._c2[1] = c
            self.i2c.writeto(self.addr, self._c2)

    def init(self, flip):
        # off; clock; multiplex = rows; no offset; start line 0; charge pump on (3.3 V modules);
        # horizontal addressing; segment/COM direction (180: both reversed); COM pins; contrast;
        # pre-charge; VCOMH; follow RAM; not inverted; on
        self._cmd(0xAE, 0xD5, 0x80, 0xA8, self.h - 1, 0xD3, 0x00, 0x40, 0x8D, 0x14, 0x20, 0x00,
                  0xA0 if flip else 0xA1, 0xC0 if flip else 0xC8, 0xDA, 0x12 if self.h == 64 else 0x02,
                  0x81, 0xCF, 0xD9, 0xF1, 0xDB, 0x40, 0xA4, 0xA6, 0xAF)

    # the screen is one band: begin, one push of the whole buffer, end
    def begin(self, ink):
        self._cmd(0x21, 0, self.w - 1, 0x22, 0, self.h // 8 - 1)

    def push(self, fb, buf, n):
        self.i2c.writevto(self.addr, (b"\x40", buf))

    def end(self):
        pass
