# Prints MicroPython's 8x8 framebuf font as hex, one line per character 32..127 (8 column bytes, LSB at
# the top), for the host's framebuf stand-in (tools/mpy/font.py writes it to build/font8x8.bin).
import framebuf

buf = bytearray(8)
fb = framebuf.FrameBuffer(buf, 8, 8, framebuf.MONO_VLSB)
for o in range(32, 128):
    fb.fill(0)
    fb.text(chr(o), 0, 0, 1)
    print("GLYPH %d %s" % (o, "".join("%02x" % b for b in buf)))
print("CONSTS %d %d %d %d" % (framebuf.MONO_VLSB, framebuf.RGB565, framebuf.MONO_HLSB, framebuf.MONO_HMSB))
