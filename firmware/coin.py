# The coin line: active for width_ms, then at least gap_ms idle before the next pulse.
# The active level comes from the board profile through machine.Signal(invert=...).
import time
import machine


class Coin:
    def __init__(self, pin, active_high=True, width_ms=100, gap_ms=150,
                 ticks_ms=None, sleep_ms=None):
        self.ticks_ms = ticks_ms or time.ticks_ms
        self.sleep_ms = sleep_ms or time.sleep_ms
        idle = 0 if active_high else 1
        # the latch is set to idle before the output driver is enabled: no glitch
        self.pin = machine.Pin(pin, machine.Pin.OUT, value=idle)
        self.line = machine.Signal(self.pin, invert=not active_high)
        self.line.off()
        self.width_ms = width_ms
        self.gap_ms = gap_ms
        self._idle_since = self.ticks_ms()
        self.count = 0
        self.after = None         # called once the line is idle after a pulse (the screen)

    def idle(self):
        self.line.off()

    def ready(self):
        # wait out the gap now, so the caller can journal right before the edge. ticks wrap every
        # 2^30 ms: after 6.2-12.4 idle days ticks_diff comes out negative, which means "idle for
        # ages" (never a wait of days inside the MQTT callback with the watchdog running)
        idle = time.ticks_diff(self.ticks_ms(), self._idle_since)
        if 0 <= idle < self.gap_ms:
            self.sleep_ms(self.gap_ms - idle)

    def pulse(self):
        self.ready()
        self.line.on()
        try:
            self.sleep_ms(self.width_ms)
        finally:
            self.line.off()
            self._idle_since = self.ticks_ms()
        self.count += 1
        if self.after is not None:
            self.after()          # inside the gap: ready() counts this time towards it
