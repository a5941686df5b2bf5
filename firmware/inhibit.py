# The game's inhibit (coin-blocker) input, debounced. A lockout coil driven by chopped DC or AC
# (half-wave 50/60 Hz) makes the opto flap every 8-20 ms, and a relay contact bounces for a few ms.
# Rule: active at once (any edge or an active level blocks coins: the safe side); clear only once
# the line has read inactive with no edge for DEBOUNCE_MS. Edges are caught by an IRQ, so a flap
# between two reads of the loop is not missed.
import time
import machine
from micropython import const

DEBOUNCE_MS = const(50)    # > two 50 Hz half-cycles (20 ms) and any contact bounce


class Inhibit:
    def __init__(self, pin, pull, active_low, ticks_ms=None):
        self.ticks_ms = ticks_ms or time.ticks_ms
        p = machine.Pin(pin, machine.Pin.IN, pull)
        self.line = machine.Signal(p, invert=active_low)
        self.edge = None           # ticks of the last edge not yet outlived by DEBOUNCE_MS
        p.irq(self._edge, machine.Pin.IRQ_RISING | machine.Pin.IRQ_FALLING)

    def _edge(self, pin):
        self.edge = self.ticks_ms()

    def __call__(self):
        if self.line.value():
            return True
        e = self.edge
        if e is not None:
            # 0 <= d: an edge older than 2^29 ms (ticks wrapped) is long outlived, not "just now"
            d = time.ticks_diff(self.ticks_ms(), e)
            if 0 <= d < DEBOUNCE_MS:
                return True
            self.edge = None
        return False
