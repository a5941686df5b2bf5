# ST7789 colour TFT (240x240 or 135x240) on SPI, written for this project from the ST7789 datasheet.
# The screen is drawn 1 bit per pixel, a band of _BAND rows at a time (firmware/display.py), and each
# band is turned into colour by framebuf's blit() with a 2-colour palette (native code) and sent: neither
# the colour frame (112 KB for 240x240) nor the 1-bit one (7.2 KB) ever exists in RAM.
import time
import framebuf
from machine import SPI, Pin
from micropython import const

FMT = framebuf.MONO_HLSB
_BAND = const(2)        # rows per SPI write: 240 x 2 x 2 = 960 B (4 rows cost 960 B more heap: the TFT must fit 56 KB)
# MADCTL per rotation, and where the panel's window sits in the controller's 240x320 RAM
_MADCTL = {0: 0x00, 90: 0x60, 180: 0xC0, 270: 0xA0}
_OFFSET = {(240, 0): (0, 0), (240, 90): (0, 0), (240, 180): (0, 80), (240, 270): (80, 0),
           (135, 0): (52, 40), (135, 90): (40, 53), (135, 180): (53, 40), (135, 270): (40, 52)}


def _swap(c):
    # framebuf keeps RGB565 little-endian; the ST7789 wants the high byte first
    return ((c & 0xFF) << 8) | (c >> 8)


class Panel:
    def __init__(self, d):
        p = d["pins"]
        r = d["rotation"]
        w, h = d["width"], d["height"]
        self.xo, self.yo = _OFFSET[(w, r)]
        if r in (90, 270):
            w, h = h, w
        self.w, self.h = w, h
        self.cs = Pin(p["cs"], Pin.OUT, value=1)
        self.dc = Pin(p["dc"], Pin.OUT, value=0)
        self.spi = SPI(1, baudrate=d["freq"], polarity=1, phase=1, sck=Pin(p["sck"]),
                       mosi=Pin(p["mosi"]), miso=None)
        if p.get("rst") is not None:
            rst = Pin(p["rst"], Pin.OUT, value=1)
            time.sleep_ms(1)
            rst(0)
            time.sleep_ms(10)
            rst(1)
            time.sleep_ms(120)
        self._cmd(0x01)                 # software reset
        time.sleep_ms(150)
        self._cmd(0x11)                 # out of sleep
        time.sleep_ms(120)
        self._cmd(0x3A, b"\x55")        # 16-bit colour
        self._cmd(0x36, bytes((_MADCTL[r],)))
        self._cmd(0x21)                 # inversion on: these IPS panels are built inverted
        self._cmd(0x13)                 # normal mode
        self._cmd(0x29)                 # display on
        if p.get("bl") is not None:
            Pin(p["bl"], Pin.OUT, value=1)
        self.band = _BAND
        self.band_rgb = bytearray(w * 2 * _BAND)
        self.bfb = framebuf.FrameBuffer(self.band_rgb, w, _BAND, framebuf.RGB565)
        self.mv = memoryview(self.band_rgb)
        self.pal = framebuf.FrameBuffer(bytearray(4), 2, 1, framebuf.RGB565)

    def _cmd(self, c, data=None):
        self.cs(0)
        self.dc(0)
        self.spi.write(bytes((c,)))
        if data:
            self.dc(1)
            self.spi.write(data)
        self.cs(1)

    # one RAMWR per screen; the screen draws each band of _BAND rows and pushes it here
    def begin(self, ink):
        w, h = self.w, self.h
        x, y = self.xo, self.yo
        self._cmd(0x2A, bytes((x >> 8, x & 0xFF, (x + w - 1) >> 8, (x + w - 1) & 0xFF)))
        self._cmd(0x2B, bytes((y >> 8, y & 0xFF, (y + h - 1) >> 8, (y + h - 1) & 0xFF)))
        self.pal.pixel(0, 0, 0)
        self.pal.pixel(1, 0, _swap(ink))
        self._cmd(0x2C)
        self.cs(0)
        self.dc(1)

    def push(self, fb, buf, n):
        self.bfb.blit(fb, 0, 0, -1, self.pal)
        self.spi.write(self.mv[:self.w * 2 * n])

    def end(self):
        self.cs(1)
