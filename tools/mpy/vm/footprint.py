# Heap footprint of the firmware on MicroPython (run by tools/mpy/vm/run.mjs; `make footprint`).
#
# Imports what the device imports (app -> protocol, config, coin, cabinet, journal, umqtt.simple),
# builds the App from a checked config and board profile, then feeds it N signed credits the way the
# broker does: a QoS 1 PUBLISH read by umqtt.simple's check_msg() -> the firmware's callback ->
# journal + pulses on the fake pin with a fake clock -> PUBACK; then the App's own _flush() publishes
# the signed ack and waits for its PUBACK. The "broker" is an in-memory socket that answers PUBACK
# and PINGRESP. Heap is gc.mem_alloc() after gc.collect(). The fakes for machine/network (built into
# the device's firmware, not on its heap) are imported before the baseline so they are not counted
# as firmware. Last line: FOOTPRINT {json} for tools/mpy/footprint_report.py.
# With `-- --display KIND --block JSON --qr SIDE` the board has a screen (the profile's display object) on a fake
# panel (tools/hostsim/panels.py, counted with the fakes) and a SIDE x SIDE QR bitmap in its flash; the
# screen then draws after every pulse and on attract, as on the cabinet.
#
# The WebAssembly port only collects garbage between calls from JavaScript (gc.collect() inside a
# call just marks a collection pending), so the work is a generator, STEPS, that run.mjs resumes once
# per call: each `gc.collect(); yield` is a real collection, and what is measured after it is what
# is reachable, as it would be on the device after gc.collect().
#
# The peak: right before each of those collections gc.mem_alloc() is what is live plus all the garbage
# made since the last one; the run collects after every credit, so the largest of these is the most
# the firmware held at once while handling one credit, counted as if nothing were collected inside it
# (an upper bound: a board collects whenever its heap is full). Reported as "peak".
import gc
import json
import os
import sys


CREDITS = 100
PULSES = 2              # per credit
STEADY_FROM = 40        # credits: by then `recent` (32 sessions) is full and the journal at its size

def _arg(name, default=None):
    a = sys.argv
    for i in range(len(a) - 1):
        if a[i] == name:
            return a[i + 1]
    return default


def _qr(path, n):
    # a SIDE x SIDE binary PBM, as `arcade provision` writes (its content does not change the heap)
    with open(path, "wb") as f:
        f.write(b"P4\n%d %d\n" % (n, n))
        row = bytes(0x5A for _ in range((n + 7) // 8))
        for _ in range(n):
            f.write(row)
ROOT = "/tmp/footprint/"
SECRET = "footprint-secret-0123456789"
LEDGER = "0123456789abcdef0123456789abcdef"


class LoopbackBroker:
    # The socket umqtt.simple reads and writes: a byte queue in, a parser of what comes out that
    # answers each QoS 1 PUBLISH with PUBACK and each PINGREQ with PINGRESP.
    def __init__(self):
        self.rx = bytearray()
        self.tx = bytearray()
        self.published = 0
        self.pubacks = 0        # PUBACKs the client sent for our QoS 1 deliveries

    def settimeout(self, t):
        pass

    def setblocking(self, flag):
        pass

    def close(self):
        pass

    def read(self, n):
        if not self.rx:
            return None
        b = bytes(self.rx[:n])
        self.rx = self.rx[n:]
        return b

    def write(self, buf, n=None):
        if n is None:
            n = len(buf)
        self.tx.extend(buf[:n])
        self._parse()
        return n

    def _parse(self):
        while len(self.tx) >= 2:
            size = 0
            shift = 0
            i = 1
            while True:
                if i >= len(self.tx):
                    return
                b = self.tx[i]
                size |= (b & 0x7F) << shift
                shift += 7
                i += 1
                if not b & 0x80:
                    break
            if len(self.tx) < i + size:
                return
            op = self.tx[0]
            body = self.tx[i:i + size]
            self.tx = self.tx[i + size:]
            if op & 0xF0 == 0x30:
                self.published += 1
                if op & 6:
                    tlen = body[0] << 8 | body[1]
                    self.rx.extend(b"\x40\x02" + bytes(body[2 + tlen:4 + tlen]))
            elif op == 0x40:
                self.pubacks += 1
            elif op == 0xC0:
                self.rx.extend(b"\xd0\x00")

    def deliver(self, topic, payload, pid):
        # a QoS 1 PUBLISH from the broker
        self.rx.extend(mqttwire.publish(topic, payload, 1, pid))


def rmtree(path):
    try:
        names = os.listdir(path)
    except OSError:
        return
    for n in names:
        os.remove(path + n)


_peak = [0]


def collect():
    a = gc.mem_alloc()
    if a > _peak[0]:
        _peak[0] = a
    gc.collect()


def _credit(protocol, key, seq, epoch):
    # the relay's job, written here (tools/hostsim/fwmsgs.py would put its code on the measured heap)
    # exp 0 (no expiry): the expiry check's code is loaded and measured; its bigint compare is not run
    session, ts = "cs_test_fp%05d" % seq, 1764165000 + seq
    sig = protocol.sign(key, protocol.canonical("credit", ("cab1", LEDGER, seq, 1, PULSES, session, ts, epoch, 0)))
    return ('{"t":"credit","cab":"cab1","ledger":"%s","seq":%d,"credits":1,"pulses":%d,"session":"%s",'
            '"ts":%d,"epoch":"%s","exp":0,"sig":"%s"}' % (LEDGER, seq, PULSES, session, ts, epoch, sig)).encode()


def steps():
    if not hasattr(os, "urandom"):      # the VM has no RNG; an ESP32 draws the journal's epoch from its own
        os.urandom = lambda n: bytes(n)
    collect()
    yield
    bare = gc.mem_alloc()   # interpreter + this script
    import machine
    import network  # noqa: F401
    from fakeclock import FakeClock
    global mqttwire
    import mqttwire
    kind = _arg("--display")
    disp = json.loads(_arg("--block")) if kind else None
    if disp is not None:
        # only then: importing a module before the firmware changes where the firmware's interned
        # names land (a larger qstr pool), which would count ~2 KB against a board without a screen
        import panels
    clock = FakeClock()
    machine.set_clock(clock.ticks_ms)
    try:
        os.mkdir(ROOT[:-1])
    except OSError:
        pass
    rmtree(ROOT)
    if disp is not None:
        _qr(ROOT + "qr.pbm", int(_arg("--qr", "37")))
        panel = panels.attach(dict(disp, rotation=0, addr=0x3C))
        # what the glass shows is tests/fw's job: here the buses only count, so the fakes' copies of
        # every transfer are not garbage counted against the firmware's peak
        machine.sink[0] = True
        # the fake's own RAM is allocated here, before the baseline: it is not counted as firmware
    gc.collect()
    yield
    _peak[0] = 0            # from here on: the firmware's peak
    base = gc.mem_alloc()

    import app as app_mod
    from coin import Coin
    collect()
    yield
    imported = gc.mem_alloc()

    b = {"name": "footprint", "chip": "esp32", "coin_pin": 25}
    c = {"cabinet": "cab1", "secret": SECRET, "wifi_ssid": "arcade",
         "broker": "mqtt://cab1:pw@broker.local:1883", "board": "footprint"}
    if disp is not None:
        b["display"] = disp
        c["screen"] = {"qr": "qr.pbm", "price": "from $0.84 a play", "promo": "2 for 1 until 8pm"}
    import config           # what app.main() reads the config with, dropped again below
    board = config.check_board(b)
    cfg = config.check_config(c)
    del b, c
    coin = Coin(board["coin_pin"], True, board["width_ms"], board["gap_ms"],
                ticks_ms=clock.ticks_ms, sleep_ms=clock.sleep_ms)
    app = app_mod.App(cfg, board, coin, ROOT, emit=lambda event, data: None)
    del cfg, board
    config = None           # app.main() drops config.py once the App is built: so does this
    sys.modules.pop("config", None)
    broker = LoopbackBroker()
    app.client.sock = app_mod.DeadlineSocket(broker, 10)
    if app.screen is not None:
        assert app.screen.error == "", app.screen.error
        app.screen.link(True)                    # attract: the QR read from flash and drawn
    collect()
    yield
    ready = gc.mem_alloc()

    import protocol
    key = SECRET.encode()
    topic = app.t_credit
    after = {1: 0, 10: 0, STEADY_FROM: 0, CREDITS: 0}   # all keys now: no dict growth later
    acks = 0
    for seq in range(1, CREDITS + 1):
        payload = _credit(protocol, key, seq, app.cabinet.state["epoch"])
        broker.deliver(topic, payload, seq)
        del payload
        gc.collect()            # the "broker's" garbage (signing, framing) is not the firmware's
        yield
        for _ in range(4):       # a PINGRESP (the App pings before pulsing) may come first
            if not broker.rx:
                break
            app.client.check_msg()
        assert app.cabinet.state["last"] == seq and broker.pubacks == seq, \
            "credit %d: last=%r pubacks=%d rx=%r outbox=%r" % (seq, app.cabinet.state["last"], broker.pubacks, bytes(broker.rx), app.outbox)
        before = broker.published
        app._flush()
        acks += broker.published - before
        # what the fakes record (pin history, clock sleeps) is host bookkeeping, not firmware
        for pin in machine.pins.values():
            del pin.history[:-1]
        for bus in machine.buses:
            del bus.history[:]
        if disp is not None:
            del panel.log[:]
        del clock.sleeps[:]
        collect()               # one credit's garbage at a time: the peak is per credit
        yield
        if seq in (1, 10, STEADY_FROM, CREDITS):
            after[seq] = gc.mem_alloc()

    mods = sorted(k for k in sys.modules if k in ("display", "disp_ssd1306", "disp_sh1106", "disp_st7789",
                                                  "app", "protocol", "config", "coin", "cabinet",
                                                  "journal", "umqtt.simple", "umqtt"))
    s = app.cabinet.state
    assert s["last"] == CREDITS and s["total"] == CREDITS * PULSES, s
    assert coin.count == CREDITS * PULSES, coin.count
    assert acks == CREDITS, acks
    steady = after[CREDITS]
    r = {
        "mpy": sys.implementation._mpy,
        "version": ".".join(str(v) for v in sys.implementation.version[:3]),
        "modules": [m + (".mpy" if str(getattr(sys.modules[m], "__file__", "")).endswith(".mpy")
                         else "") for m in mods if m in sys.modules],
        "credits": CREDITS, "pulses": coin.count, "acks": acks, "journal_saves": app.cabinet.journal.saves,
        "bare": bare, "fakes": base - bare, "baseline": base, "imported": imported, "ready": ready,
        "after_1": after[1], "after_10": after[10], "after_%d" % STEADY_FROM: after[STEADY_FROM],
        "steady": steady, "growth": steady - after[STEADY_FROM], "steady_from": STEADY_FROM,
        "firmware": steady - base, "peak": _peak[0] - base,
        "display": kind or "", "frames": 0 if disp is None else panel.frames,
    }
    print("heap in use (gc.mem_alloc after gc.collect), MicroPython %s:" % r["version"])
    print("  interpreter and this script                           %6d B" % bare)
    print("  + machine/network/clock fakes (built in on a device)  %6d B  (+%d)" % (base, base - bare))
    print("  after importing the firmware and umqtt.simple        %6d B  (+%d)" % (imported, imported - base))
    print("  App built (config, board, coin, journal, client)      %6d B  (+%d)" % (ready, ready - imported))
    for k in (1, 10, STEADY_FROM, CREDITS):
        print("  after %3d credits                                     %6d B" % (k, after[k]))
    print("  growth from credit %d to %d: %d B" % (STEADY_FROM, CREDITS, r["growth"]))
    print("  firmware share at steady state (after %d credits minus the baseline): %d B"
          % (CREDITS, r["firmware"]))
    print("  firmware share at its peak (live + one credit's garbage, minus the baseline): %d B"
          % r["peak"])
    print("FOOTPRINT " + json.dumps(r))


STEPS = steps()
