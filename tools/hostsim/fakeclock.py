# A clock the tests drive: sleep_ms advances time instead of waiting, so pulse
# widths and gaps are exact. It wraps at 2**30 ms like an ESP32's ticks_ms, so a
# test can idle a board for a week in one call. MicroPython-compatible.
_MASK = (1 << 30) - 1


class FakeClock:
    def __init__(self, start=1000):
        self.now = start
        self.sleeps = []

    def ticks_ms(self):
        return self.now & _MASK

    def sleep_ms(self, ms):
        self.sleeps.append(ms)
        if ms > 0:
            self.now += ms

    def advance(self, ms):
        self.now += ms
