# Prints what a fake panel's glass shows for each screen, one line per screen: "GLASS <kind> <state> <hex>"
# (lit pixels as a bit string packed in hex, row by row). tests/test_display.py runs it under MicroPython
# (the real framebuf) and compares with the same screens drawn on CPython (the framebuf stand-in).
import sys

import display
import machine
import panels

KINDS = {
    "ssd1306": {"driver": "ssd1306", "bus": "i2c", "width": 128, "height": 64, "rotation": 0, "addr": 60,
                "freq": 400000, "pins": {"sda": 21, "scl": 22}},
    "st7789-135x240": {"driver": "st7789", "bus": "spi", "width": 135, "height": 240, "rotation": 90,
                       "freq": 26000000, "pins": {"sck": 18, "mosi": 23, "cs": 32, "dc": 33, "rst": 4,
                                                  "bl": 13}},
}
SCREENS = ((display.ATTRACT, ()), (display.PAY, (2, 6, 3)), (display.DONE, (3,)), (display.OFFLINE, ()))


def glass_hex(panel):
    w, h = panel.size()
    out = []
    acc = 0
    n = 0
    for y in range(h):
        for x in range(w):
            acc = (acc << 1) | (1 if panel.glass(x, y) != (0, 0, 0) else 0)
            n += 1
            if n == 8:
                out.append("%02x" % acc)
                acc = n = 0
    if n:
        out.append("%02x" % (acc << (8 - n)))
    return "".join(out)


def dump(root, kind, content):
    machine.clear()
    d = KINDS[kind]
    panel = panels.attach(d)
    s = display.Screen(d, root, content)
    lines = []
    for st, args in SCREENS:
        s.show(st, *args)
        lines.append("GLASS %s %d %s" % (kind, st, glass_hex(panel)))
    return lines


if __name__ == "__main__":
    root, qr = sys.argv[1], sys.argv[2]
    with open(root + "qr.pbm", "wb") as f:
        f.write(bytes(int(qr[i:i + 2], 16) for i in range(0, len(qr), 2)))
    for kind in sorted(KINDS):
        for line in dump(root, kind, {"qr": "qr.pbm", "price": "from $0.84 a play", "promo": "2 for 1"}):
            print(line)
