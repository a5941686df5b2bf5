"""CPython stand-in for MicroPython's built-in `framebuf`, so the firmware's display code runs on this host
(tests, `arcade simulate`). MicroPython has the real module (the MicroPython test run uses it).

Written for this project from the documented behaviour (docs.micropython.org, framebuf): the buffer
layouts MONO_VLSB, MONO_HLSB, MONO_HMSB and RGB565 (16-bit, stored little-endian as on the ESP32), the
drawing methods the firmware uses, clipping at the edges, and blit() with a key colour and a palette.
text() draws MicroPython's own 8x8 font: build/font8x8.bin, rendered by the real framebuf at `make setup`
(tools/mpy/font.py), so a host screen is pixel-identical to the board's.
"""
from pathlib import Path

MONO_VLSB = 0
MVLSB = 0
RGB565 = 1
GS4_HMSB = 2
MONO_HLSB = 3
MONO_HMSB = 4
GS2_HMSB = 5
GS8 = 6

FONT = Path(__file__).resolve().parents[2] / "build" / "font8x8.bin"
_font = None


def _glyphs():
    global _font
    if _font is None:
        try:
            data = FONT.read_bytes()
        except OSError:
            raise RuntimeError("%s is missing: run `make setup` (it renders MicroPython's 8x8 font with "
                               "the MicroPython VM for the host's framebuf stand-in)" % FONT)
        if len(data) != 96 * 8:
            raise RuntimeError("%s is %d bytes, not 768: run `make setup` again" % (FONT, len(data)))
        _font = data
    return _font


class FrameBuffer:
    def __init__(self, buf, width, height, format, stride=None):
        if format not in (MONO_VLSB, MONO_HLSB, MONO_HMSB, RGB565):
            raise ValueError("invalid format (this stand-in has MONO_VLSB, MONO_HLSB, MONO_HMSB, RGB565)")
        if width < 1 or height < 1:
            raise ValueError("invalid size")
        self.buf = memoryview(buf).cast("B")
        if self.buf.readonly:
            raise TypeError("buffer is read-only")
        self.width, self.height, self.format = width, height, format
        self.stride = stride if stride is not None else width
        if format == MONO_VLSB:
            need = ((height + 7) // 8) * self.stride
        elif format in (MONO_HLSB, MONO_HMSB):
            self.stride = (self.stride + 7) & ~7
            need = self.stride // 8 * height
        else:
            need = self.stride * height * 2
        if len(self.buf) < need:
            raise ValueError("buffer too small")

    # -- one pixel, no clipping
    def _get(self, x, y):
        f, b = self.format, self.buf
        if f == MONO_VLSB:
            return (b[(y >> 3) * self.stride + x] >> (y & 7)) & 1
        if f == MONO_HLSB:
            return (b[(y * self.stride + x) >> 3] >> (7 - (x & 7))) & 1
        if f == MONO_HMSB:
            return (b[(y * self.stride + x) >> 3] >> (x & 7)) & 1
        i = (y * self.stride + x) * 2
        return b[i] | b[i + 1] << 8

    def _set(self, x, y, c):
        f, b = self.format, self.buf
        if f == MONO_VLSB:
            i, m = (y >> 3) * self.stride + x, 1 << (y & 7)
        elif f == MONO_HLSB:
            i, m = (y * self.stride + x) >> 3, 0x80 >> (x & 7)
        elif f == MONO_HMSB:
            i, m = (y * self.stride + x) >> 3, 1 << (x & 7)
        else:
            i = (y * self.stride + x) * 2
            b[i], b[i + 1] = c & 0xFF, (c >> 8) & 0xFF
            return
        b[i] = (b[i] | m) if c & 1 else (b[i] & ~m & 0xFF)

    # -- the documented methods
    def pixel(self, x, y, c=None):
        if not (0 <= x < self.width and 0 <= y < self.height):
            return None if c is None else None
        if c is None:
            return self._get(x, y)
        self._set(x, y, c)

    def fill_rect(self, x, y, w, h, c):
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, self.width), min(y + h, self.height)
        for yy in range(y0, y1):
            for xx in range(x0, x1):
                self._set(xx, yy, c)

    def fill(self, c):
        self.fill_rect(0, 0, self.width, self.height, c)

    def hline(self, x, y, w, c):
        self.fill_rect(x, y, w, 1, c)

    def vline(self, x, y, h, c):
        self.fill_rect(x, y, 1, h, c)

    def rect(self, x, y, w, h, c, f=False):
        if f:
            self.fill_rect(x, y, w, h, c)
            return
        self.fill_rect(x, y, w, 1, c)
        self.fill_rect(x, y + h - 1, w, 1, c)
        self.fill_rect(x, y, 1, h, c)
        self.fill_rect(x + w - 1, y, 1, h, c)

    def line(self, x1, y1, x2, y2, c):
        # Bresenham, both ends included
        dx, dy = abs(x2 - x1), -abs(y2 - y1)
        sx, sy = (1 if x1 < x2 else -1), (1 if y1 < y2 else -1)
        err = dx + dy
        while True:
            self.pixel(x1, y1, c)
            if x1 == x2 and y1 == y2:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x1 += sx
            if e2 <= dx:
                err += dx
                y1 += sy

    def text(self, s, x, y, c=1):
        font = _glyphs()
        for ch in s:
            o = ord(ch)
            if o < 32 or o > 127:
                o = 127
            g = font[(o - 32) * 8:(o - 31) * 8]
            for col in range(8):
                bits = g[col]
                for row in range(8):
                    if bits >> row & 1:
                        self.pixel(x + col, y + row, c)
            x += 8

    def blit(self, src, x, y, key=-1, palette=None):
        if isinstance(src, tuple):
            buf, w, h, fmt = src[:4]
            src = FrameBuffer(buf, w, h, fmt, *src[4:])
        for sy in range(src.height):
            dy = y + sy
            if not 0 <= dy < self.height:
                continue
            for sx in range(src.width):
                dx = x + sx
                if not 0 <= dx < self.width:
                    continue
                c = src._get(sx, sy)
                if palette is not None:
                    c = palette._get(c, 0)
                if c != key:
                    self._set(dx, dy, c)

    def scroll(self, xstep, ystep):
        raise NotImplementedError("scroll is not used by the firmware")


FrameBuffer1 = FrameBuffer
