# pytest only: the same test files also run under MicroPython, which puts these on sys.path itself.
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for sub in ("build/umqtt", "tools/hostsim", "firmware"):
    p = os.path.join(ROOT, sub)
    if p not in sys.path:
        sys.path.insert(0, p)

import hosttime  # noqa: E402,F401  (ticks_ms & co on CPython's time)


@pytest.fixture(autouse=True)
def _clean():
    import fwutil
    import machine
    yield
    fwutil.cleanup()
    machine.clear()
