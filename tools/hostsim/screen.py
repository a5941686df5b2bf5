"""The cabinet's screen on this host: the QR bitmap `arcade provision` writes for the board, the display
kinds and their wiring per board, and PNG pictures of a simulated panel (`arcade simulate --screen`).

The QR is sized by the firmware's own layout (firmware/display.py `qr_box`): the largest whole number of
pixels per module, with a quiet zone of 4 modules (2 when 4 would cost a size step), that fits the square
the attract screen keeps for it. It is written as a binary PBM (P4), whose rows are the layout of
MicroPython's framebuf.MONO_HLSB, so the board blits it without decoding anything.
"""
import importlib.util
import sys
from pathlib import Path

import segno

from tools.hostsim import framebuf as _framebuf
from tools.hostsim import micropython as _micropython
from tools.hostsim.boards import FIRMWARE, ProvisionError, fw_config

QR_NAME = "qr.pbm"
# --display KIND: driver and native size
KINDS = {
    "ssd1306": ("ssd1306", 128, 64),
    "sh1106": ("sh1106", 128, 64),
    "st7789-240x240": ("st7789", 240, 240),
    "st7789-135x240": ("st7789", 135, 240),
}
# Suggested wiring per board profile (docs/hardware.md, "A screen"): GPIOs the profile leaves free that
# are not strapping, flash, USB or console pins of the chip.
WIRING = {
    "esp32-devkitc": {"i2c": {"sda": 21, "scl": 22},
                      "spi": {"sck": 18, "mosi": 23, "cs": 32, "dc": 33, "rst": 4, "bl": 13}},
    "esp32-c3": {"i2c": {"sda": 5, "scl": 6},
                 "spi": {"sck": 4, "mosi": 6, "cs": 7, "dc": 5, "rst": 0, "bl": None}},
    "esp32-s3-devkitc": {"i2c": {"sda": 8, "scl": 9},
                         "spi": {"sck": 12, "mosi": 11, "cs": 10, "dc": 13, "rst": 14, "bl": 15}},
}


def display_block(board, kind):
    """The board profile's `display` object for `--display KIND[@ROTATION]` with the suggested wiring."""
    name, _, rot = kind.partition("@")
    if name not in KINDS:
        raise ProvisionError("unknown display %r: choose one of %s (add @90, @180 or @270 to rotate)"
                             % (kind, ", ".join(sorted(KINDS))))
    try:
        rotation = int(rot) if rot else 0
    except ValueError:
        raise ProvisionError("display rotation %r is not a number: use e.g. %s@180" % (rot, name))
    driver, w, h = KINDS[name]
    bus = "spi" if driver == "st7789" else "i2c"
    wiring = WIRING.get(board)
    if wiring is None:
        raise ProvisionError("no suggested display wiring for board %r: add a `display` object to "
                             "boards/%s.json (docs/hardware.md, \"A screen\")" % (board, board))
    return {"driver": driver, "bus": bus, "width": w, "height": h, "rotation": rotation,
            "pins": dict(wiring[bus])}


def fw_display():
    """firmware/display.py, loaded on this host with the framebuf stand-in (one code path for the layout)."""
    sys.modules.setdefault("framebuf", _framebuf)
    sys.modules.setdefault("micropython", _micropython)
    fw_config()                              # firmware/ on the path (display imports its drivers by name)
    mod = sys.modules.get("display")
    path = str(FIRMWARE / "display.py")
    if mod is not None and getattr(mod, "__file__", None) == path:
        return mod
    spec = importlib.util.spec_from_file_location("display", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def logical_size(d):
    w, h = d["width"], d["height"]
    return (h, w) if d.get("rotation", 0) in (90, 270) else (w, h)


def qr_layout(url, side):
    """(modules, border, scale) for the largest QR of `url` that fits `side` pixels."""
    qr = segno.make(url, error="l", micro=False, boost_error=True)
    n = qr.symbol_size(scale=1, border=0)[0]
    best = None
    for border in (4, 2):
        scale = side // (n + 2 * border)
        if scale >= 1 and (best is None or scale > best[2]):
            best = (qr, border, scale)
    if best is None:
        raise ProvisionError("the pay URL %s needs a %d-module QR code, more than the %d pixels the screen "
                             "has for it: use a shorter ARCADE_PUBLIC_URL or a larger display" % (url, n, side))
    return best


def qr_pbm(url, d):
    """The binary PBM of the pay-page QR for the checked `display` object d (1 = dark module)."""
    w, h = logical_size(d)
    side = fw_display().qr_box(w, h)[2]
    qr, border, scale = qr_layout(url, side)
    rows = [[1 if dark else 0 for dark in row] for row in qr.matrix_iter(scale=scale, border=border)]
    n = len(rows)
    out = bytearray(b"P4\n%d %d\n" % (n, n))
    for row in rows:
        for i in range(0, n, 8):
            byte = 0
            for bit, v in enumerate(row[i:i + 8]):
                byte |= v << (7 - bit)
            out.append(byte)
    return bytes(out)


def read_pbm(data):
    """(width, height, rows of 0/1) from a binary PBM."""
    parts = data.split(b"\n", 2)
    if parts[0] != b"P4":
        raise ValueError("not a binary PBM")
    w, h = (int(x) for x in parts[1].split())
    body = parts[2]
    stride = (w + 7) // 8
    return w, h, [[(body[y * stride + x // 8] >> (7 - x % 8)) & 1 for x in range(w)] for y in range(h)]


def png(panel, path, scale=4):
    """A PNG of what the viewer sees on `panel` (tools/hostsim/panels.py), each pixel scale x scale,
    written atomically (a reader never sees half a file)."""
    from PIL import Image
    w, h = panel.size()
    img = Image.new("RGB", (w, h))
    img.putdata([panel.glass(x, y) for y in range(h) for x in range(w)])
    if scale > 1:
        img = img.resize((w * scale, h * scale), Image.NEAREST)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    img.save(tmp, "PNG")
    tmp.replace(path)
    return path
