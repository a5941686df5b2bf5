# SH1106 OLED (128x64 shown of its 132-column RAM) on I2C, written for this project from the SH1106
# datasheet. It has no horizontal addressing mode: show() writes each of the 8 pages with page addressing,
# 2 columns in (the glass shows RAM columns 2..129).
import framebuf
from disp_ssd1306 import Panel as _Base

FMT = framebuf.MONO_VLSB


class Panel(_Base):
    def init(self, flip):
        # off; clock; multiplex; no offset; start line 0; DC-DC on; segment/COM direction; COM pins;
        # contrast; pre-charge; VCOMH; follow RAM; not inverted; on
        self._cmd(0xAE, 0xD5, 0x80, 0xA8, self.h - 1, 0xD3, 0x00, 0x40, 0xAD, 0x8B,
                  0xA0 if flip else 0xA1, 0xC0 if flip else 0xC8, 0xDA, 0x12, 0x81, 0x80, 0xD9, 0x22,
                  0xDB, 0x35, 0xA4, 0xA6, 0xAF)

    def begin(self, ink):
        pass

    def push(self, fb, buf, n):
        mv = memoryview(buf)
        w = self.w
        for page in range(self.h // 8):
            self._cmd(0xB0 | page, 0x02, 0x10)      # page, column 2 (low nibble, high nibble)
            self.i2c.writevto(self.addr, (b"\x40", mv[page * w:(page + 1) * w]))
