# A clock the tests drive: sleep_ms advances time instead of waiting, so pulse
# widths and gaps are exact. MicroPython-compatible.


class FakeClock:
    def __init__(self, start=1000):
        self.now = start
        self.sleeps = []

    def ticks_ms(self):
        return self.now

    def sleep_ms(self, ms):
        self.sleeps.append(ms)
        if ms > 0:
            self.now += ms

    def advance(self, ms):
        self.now += ms
