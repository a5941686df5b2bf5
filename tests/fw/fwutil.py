# Helpers shared by the firmware tests (MicroPython-compatible: no pytest, no pathlib).
import json
import os

import machine
import protocol
from fakeclock import FakeClock
from mqttwire import publish as mqtt_publish, puback  # noqa: F401 (re-exported for the tests)

_HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
_made = []

SECRET = "5e1f0c2a9b7d4e6f8a1b3c5d7e9f0a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f"
KEY = SECRET.encode()
LEDGER = "0123456789abcdef0123456789abcdef"
LEDGER2 = "fedcba9876543210fedcba9876543210"
EPOCH = "0f1e2d3c4b5a6978"        # the epoch a cabinet with no journal draws in these tests

_real_new_epoch = protocol.new_epoch
_queue = []
_random = [False]


if not hasattr(os, "urandom"):    # an ESP32 and CPython have a hardware/OS RNG; the WebAssembly VM doesn't
    import random
    os.urandom = lambda n: bytes([random.getrandbits(8) for _ in range(n)])


def _new_epoch():
    if _random[0]:
        return _real_new_epoch()
    return _queue.pop(0) if _queue else EPOCH


protocol.new_epoch = _new_epoch


def epochs(*queue, real=False):
    """The next epochs drawn (then EPOCH again), or real random ones with real=True."""
    _queue[:] = list(queue)
    _random[0] = real


def vectors():
    with open(_HERE + "/../vectors.json") as f:
        return json.load(f)


def _rm(d):
    for name in os.listdir(d):
        try:
            os.remove(d + "/" + name)
        except OSError:          # a directory (update slots): empty it, then remove it
            _rm(d + "/" + name)
            os.rmdir(d + "/" + name)


def scratch():
    """A new empty directory; returns it with a trailing slash (the firmware's `root`)."""
    try:
        import tempfile
        d = tempfile.mkdtemp(prefix="arcade-fw-")
    except ImportError:
        d = "/tmp/arcade-fw-%d" % len(_made)
        try:
            os.mkdir(d)
        except OSError:
            _rm(d)
    _made.append(d)
    return d + "/"


def cleanup():
    import network
    network.reset()
    while _made:
        d = _made.pop()
        try:
            _rm(d)
            os.rmdir(d)
        except OSError:
            pass


def clock(start=1000):
    """Fresh fake hardware: forget old pins, timestamps from a FakeClock."""
    machine.clear()
    c = FakeClock(start)
    machine.set_clock(c.ticks_ms)
    return c


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_json(path, obj):
    with open(path, "w") as f:
        f.write(json.dumps(obj))


def exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def board(**kw):
    b = {"name": "test-board", "chip": "esp32", "coin_pin": 25, "active": "high", "width_ms": 100, "gap_ms": 150,
         "width_ms_range": [20, 500], "gap_ms_range": [20, 2000], "led_pin": None,
         "unsafe_pins": [0, 2, 5, 12, 15, 6, 7, 8, 9, 10, 11, 34, 35, 36, 37, 38, 39]}
    for k in kw:
        b[k] = kw[k]
    return b


def config(**kw):
    c = {"wifi_ssid": "arcade-wifi", "wifi_password": "wifi-pass-123", "broker":
         "mqtt://cab:mqtt-pass-456@broker.example:1883", "cabinet": "cab1", "secret": SECRET,
         "board": "test-board"}
    for k in kw:
        c[k] = kw[k]
    return c


def pulses(pin):
    """[(t_on, width, gap_before)] from a pin's history (active high)."""
    out = []
    h = pin.history
    last_off = h[0][0]
    for i in range(1, len(h)):
        t, v = h[i]
        if v == 1:
            on = t
        else:
            out.append((on, t - on, on - last_off))
            last_off = t
    return out


class FakeSock:
    """Scripted bytes in, recorded bytes out: what umqtt.simple reads and writes."""

    def __init__(self, incoming=b""):
        self.incoming = bytearray(incoming)
        self.out = bytearray()
        self.blocking = True
        self.timeout = None
        self.closed = False
        self.on_write = None

    def feed(self, data):
        self.incoming += data

    def read(self, n):
        if not self.incoming:
            return b"" if self.blocking else None
        b = bytes(self.incoming[:n])
        self.incoming = self.incoming[n:]
        return b

    def write(self, buf, n=None):
        b = bytes(buf) if n is None else bytes(buf[:n])
        self.out += b
        if self.on_write:
            self.on_write(b)
        return len(b)

    def setblocking(self, flag):
        self.blocking = bool(flag)
        if flag:
            self.timeout = None

    def settimeout(self, t):
        self.timeout = t
        self.blocking = t is None or t > 0

    def close(self):
        self.closed = True
