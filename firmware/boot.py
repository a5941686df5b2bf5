# First thing at power-on: drive the coin line to its idle level (from board.json), then look at
# the safe-mode pin (see safemode.py).
import safemode

safemode.boot()
