"""Host stand-in for MicroPython's `ustruct` (umqtt.simple imports it by this name)."""
from struct import *  # noqa: F401,F403
