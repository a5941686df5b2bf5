"""Host stand-in for MicroPython's `ubinascii` (umqtt.simple imports it by this name)."""
from binascii import *  # noqa: F401,F403
