# Host fake of MicroPython's `machine`: pins that record every level change
# against a clock (real ticks by default, a FakeClock in tests), refuse misuse,
# a WDT that records feeds (and says when a board would have reset: `starved`),
# RTC memory that survives a reset, and reset_cause(). Written in the MicroPython
# subset so the same fakes serve the WebAssembly MicroPython test run.
import time

try:
    import hosttime  # noqa: F401  (CPython: adds ticks_ms & co to time)
except ImportError:
    pass

_clock = None
pins = {}          # id -> the most recently constructed Pin with that id
sources = {}       # id -> fn() giving the level the outside world drives on that input
watchers = []      # fn(pin, t_ms, value) called after every level change
wdts = []
resets = []
rtc_memory = bytearray()   # machine.RTC().memory(): survives reset, lost at power-off
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
cause = [PWRON_RESET]      # what reset_cause() says (the simulator sets it after a simulated reset)
devices = []       # fake bus devices (tools/hostsim/panels.py): what is wired to I2C/SPI
buses = []         # every I2C/SPI constructed, with its history
sink = [False]     # True: bus writes only count (`frames`), copying and recording nothing (footprint)


def set_clock(fn):
    """Use fn() for timestamps (None: time.ticks_ms)."""
    global _clock
    _clock = fn


def now():
    if _clock is None:
        return time.ticks_ms()
    return _clock()


def clear():
    """Forget pins, watchers, WDTs and resets (between tests)."""
    pins.clear()
    sources.clear()
    del watchers[:]
    del wdts[:]
    del resets[:]
    del timers[:]
    rtc_memory[:] = b""
    cause[0] = PWRON_RESET
    del devices[:]
    del buses[:]
    sink[0] = False
    set_clock(None)


class PinMisuse(Exception):
    pass


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 2
    PULL_DOWN = 1
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, id, mode=-1, pull=-1, value=None):
        if not isinstance(id, int) or id < 0:
            raise ValueError("invalid pin")
        self.id = id
        self.mode = None
        self.pull = None
        self._v = 0
        self.history = []
        self._irq = None
        pins[id] = self
        self.init(mode, pull, value)

    def init(self, mode=-1, pull=-1, value=None):
        if pull != -1:
            self.pull = pull
        if value is not None:
            # like the real port: the output latch is set before the driver is enabled
            self._set(1 if value else 0, True)
        if mode != -1:
            if mode not in (Pin.IN, Pin.OUT, Pin.OPEN_DRAIN):
                raise ValueError("invalid pin mode")
            self.mode = mode
            if mode == Pin.IN and not self.history and self.pull in (Pin.PULL_UP, Pin.PULL_DOWN):
                # an undriven input reads what its pull resistor says
                self._set(1 if self.pull == Pin.PULL_UP else 0, True)
            if mode != Pin.IN and not self.history:
                self._set(self._v, True)

    def _set(self, v, force=False):
        if not force and self.mode == Pin.IN:
            raise PinMisuse("pin %d is an input: it cannot be written" % self.id)
        if self.history and self.history[-1][1] == v:
            return
        self._v = v
        t = now()
        self.history.append((t, v))
        for fn in watchers:
            fn(self, t, v)
        if self._irq is not None and self._irq[1] & (Pin.IRQ_RISING if v else Pin.IRQ_FALLING):
            self._irq[0](self)

    def irq(self, handler=None, trigger=3):
        """Like the ESP32 port: handler(pin) after each edge that matches trigger."""
        self._irq = (handler, trigger) if handler is not None else None

    def value(self, v=None):
        if v is None:
            src = sources.get(self.id)
            if src is not None and self.mode == Pin.IN:
                self._set(1 if src() else 0, True)
            return self._v
        self._set(1 if v else 0)

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self._set(1)

    def off(self):
        self._set(0)

    def drive(self, v):
        """Test helper: what the outside world drives on an input pin."""
        if self.mode != Pin.IN:
            raise PinMisuse("pin %d is not an input" % self.id)
        self._set(1 if v else 0, True)


class Signal:
    def __init__(self, pin, invert=False):
        if not isinstance(pin, Pin):
            raise TypeError("Signal needs a Pin")
        self.pin = pin
        self.invert = bool(invert)

    def value(self, v=None):
        if v is None:
            return self.pin.value() ^ self.invert
        self.pin.value((1 if v else 0) ^ self.invert)

    def __call__(self, v=None):
        return self.value(v)

    def on(self):
        self.value(1)

    def off(self):
        self.value(0)


class WDT:
    # The board resets when timeout ms pass without a feed. Here: `starved()` says the longest time
    # the firmware went unfed (tests compare it with the timeout); the simulator watches `last`
    # from a thread and restarts the process, as the board would (tools/hostsim/simulator.py).
    def __init__(self, id=0, timeout=5000):
        if timeout < 1:
            raise ValueError("WDT timeout")
        self.timeout = timeout
        self.feeds = []
        self.started = self.last = now()
        self.longest = 0
        wdts.append(self)

    def feed(self):
        t = now()
        gap = time.ticks_diff(t, self.last)
        if gap > self.longest:
            self.longest = gap
        self.last = t
        self.feeds.append(t)
        if len(self.feeds) > 4096:
            del self.feeds[:2048]

    def starved(self):
        """The longest stretch without a feed so far (ms), up to now."""
        gap = time.ticks_diff(now(), self.last)
        return gap if gap > self.longest else self.longest


class RTC:
    def memory(self, data=None):
        if data is None:
            return bytes(rtc_memory)
        if len(data) > 2048:
            raise ValueError("buffer too long")
        rtc_memory[:] = data


def reset_cause():
    return cause[0]


class ResetCalled(Exception):
    pass


def reset():
    resets.append(now())
    raise ResetCalled("machine.reset()")


def soft_reset():
    reset()


def unique_id():
    return b"\x24\x0a\xc4\x00\x00\x01"


def freq(f=None):
    return 240000000


def _pin_id(p, what):
    if isinstance(p, Pin):
        return p.id
    if isinstance(p, int) and not isinstance(p, bool) and p >= 0:
        return p
    raise TypeError("%s must be a Pin or a GPIO number, got %r" % (what, p))


class I2C:
    """A bus that delivers writes to the fake devices in `devices` with bus "i2c" at that address.
    history: (t, addr, nbytes) per transaction. No device at the address: OSError(19), as the ESP32."""
    def __init__(self, id=0, scl=None, sda=None, freq=400000, timeout=50000):
        if id not in (0, 1):
            raise ValueError("I2C(%r) doesn't exist" % id)
        self.scl = _pin_id(scl, "scl")
        self.sda = _pin_id(sda, "sda")
        if self.scl == self.sda:
            raise ValueError("scl and sda are the same pin")
        if not 1 <= freq <= 5000000:
            raise ValueError("bad I2C frequency")
        self.freq = freq
        self.history = []
        buses.append(self)

    def _dev(self, addr):
        for d in devices:
            if d.bus == "i2c" and d.addr == addr and d.sda == self.sda and d.scl == self.scl:
                return d
        raise OSError(19)

    def scan(self):
        return sorted(d.addr for d in devices
                      if d.bus == "i2c" and d.sda == self.sda and d.scl == self.scl)

    def writeto(self, addr, buf, stop=True):
        return self.writevto(addr, (buf,), stop)

    def writevto(self, addr, vector, stop=True):
        d = self._dev(addr)
        if sink[0]:
            d.frames += 1
            return 0
        data = b"".join(bytes(b) for b in vector)
        self.history.append((now(), addr, len(data)))
        d.write(data)
        return len(data)


class SPI:
    """A bus that delivers writes to the fake SPI device whose chip-select pin is low, with the
    level of its D/C pin. history: (t, cs pin, dc level, nbytes). A write with no device selected,
    or with two, is a driver bug: PinMisuse."""
    def __init__(self, id=1, baudrate=1000000, polarity=0, phase=0, bits=8, firstbit=0, sck=None,
                 mosi=None, miso=None):
        if id not in (1, 2):
            raise ValueError("SPI(%r) doesn't exist" % id)
        self.sck = _pin_id(sck, "sck")
        self.mosi = _pin_id(mosi, "mosi")
        if self.sck == self.mosi:
            raise ValueError("sck and mosi are the same pin")
        if polarity not in (0, 1) or phase not in (0, 1) or bits != 8:
            raise ValueError("bad SPI mode")
        self.baudrate = baudrate
        self.history = []
        buses.append(self)

    def write(self, buf):
        if sink[0]:
            for d in devices:
                if d.bus == "spi":
                    d.frames += 1
            return
        sel = []
        for d in devices:
            if d.bus != "spi" or d.sck != self.sck or d.mosi != self.mosi:
                continue
            p = pins.get(d.cs)
            if p is None or p.mode != Pin.OUT:
                raise PinMisuse("SPI write: chip-select GPIO %d is not an output" % d.cs)
            if p._v == 0:
                sel.append(d)
        if len(sel) != 1:
            raise PinMisuse("SPI write with %d devices selected (chip-select low)" % len(sel))
        d = sel[0]
        p = pins.get(d.dc)
        if p is None or p.mode != Pin.OUT:
            raise PinMisuse("SPI write: D/C GPIO %d is not an output" % d.dc)
        data = bytes(buf)
        self.history.append((now(), d.cs, p._v, len(data)))
        d.write(data, p._v)


reset_hooks = []   # fn() run when a Timer callback resets the board (the simulator restarts itself)
timers = []        # the Timers armed (tests fire them by hand: Timer.fire())
real_timers = False  # the simulator sets it: armed Timers then fire on a host thread


class Timer:
    """machine.Timer (ESP32: a hardware timer whose callback is scheduled). Armed timers are listed
    in `timers`; with real_timers they fire on a host thread, where a machine.reset() in the
    callback runs reset_hooks."""
    ONE_SHOT = 0
    PERIODIC = 1

    def __init__(self, id=-1):
        self._t = None
        self.period = None
        self.callback = None

    def init(self, mode=ONE_SHOT, period=1000, callback=None):
        self.deinit()
        self.period, self.callback = period, callback
        timers.append(self)
        if real_timers:
            import threading
            self._t = threading.Timer(period / 1000.0, self._fire_thread)
            self._t.daemon = True
            self._t.start()

    def fire(self):
        self.callback(self)

    def _fire_thread(self):
        try:
            self.fire()
        except ResetCalled:
            for h in reset_hooks:
                h()

    def deinit(self):
        if self._t is not None:
            self._t.cancel()
            self._t = None
        if self in timers:
            timers.remove(self)
