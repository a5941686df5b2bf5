# Hostile credit payloads at the firmware on MicroPython (run by tools/mpy/vm/run.mjs; `make fuzz`):
#   node tools/mpy/vm/run.mjs --script tools/mpy/vm/fuzz_fw.py -- CASES SEED
# The generator and the oracle (pulses on the fake coin pin) are tests/fw/fuzzmsg.py, the same as under
# CPython. Work runs as STEPS (run.mjs resumes it once per call) so that garbage is collected between
# batches on the WebAssembly port. Last line: FUZZ {json} with the counts, or a FAIL line and exit 1.
import gc
import json
import sys

import fuzzmsg
import machine
from cabinet import Cabinet
from coin import Coin
from fwutil import SECRET, clock, scratch
from journal import Journal

BATCH = 100


def steps():
    cases = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    c = clock()
    coin = Coin(25, True, 100, 150, c.ticks_ms, c.sleep_ms)
    cab = Cabinet("cab1", SECRET, Journal(scratch()), coin, None)
    pin = machine.pins[25]
    camp = fuzzmsg.Campaign(seed)
    allowed = 0
    kinds = {}
    done = 0
    while done < cases:
        n = min(BATCH, cases - done)
        # one campaign throughout: sequence numbers and replays carry across batches
        for i in range(n):
            kind, payload, may = camp.case()
            before = fuzzmsg._count(pin)
            try:
                result, ack = cab.handle(payload)
            except Exception as e:  # noqa: BLE001
                print("FAIL case %d (%s) %r raised %r" % (done + i, kind, payload[:120], e))
                raise SystemExit(1)
            got = fuzzmsg._count(pin) - before
            why = camp.judge(kind, may, result, got)
            if why:
                print("FAIL case %d (%s) %r: %s" % (done + i, kind, payload, why))
                raise SystemExit(1)
            allowed += got
            # the pin's history grows with every pulse: keep only the last edge (counts are deltas)
            if len(pin.history) > 64:
                del pin.history[1:-1]
        done += n
        gc.collect()
        yield
    kinds = camp.kinds
    print("FUZZ " + json.dumps({"cases": done, "pulses_allowed": allowed, "kinds": kinds}))


STEPS = steps()
