# First thing at power-on: pick the firmware (otaboot.py: the slot an update installed, on probation,
# or the previous one after 3 unconfirmed boots), then drive the coin line to its idle level (from
# board.json) and look at the safe-mode pin (see safemode.py). otaboot is dropped again: off the heap.
import sys
import otaboot

_s = otaboot.select()
_fresh = bool(_s["probe"]) or otaboot.rolled
del sys.modules["otaboot"]
import safemode

safemode.boot(fresh=_fresh)
