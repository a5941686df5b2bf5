# Host fake of MicroPython's `network` (ports/esp32/network_wlan.c semantics): connect() asks the
# driver to join and it keeps rejoining by itself; status() says GOT_IP, CONNECTING, or why it is not
# connected (201 no AP, 202 wrong password); calling connect() again while it is trying raises
# "Wifi Internal Error" as on C3/S3. `ap` is the outside world: the access point, its password.
# MicroPython-compatible subset.
STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202

connects = []      # (ssid,) of every connect() call
# up: the access point is on the air; password: what it wants (None: whatever the board sends);
# fn: called (no arguments) before each look at the AP, so a simulator can switch it from a file
ap = {"up": True, "password": None, "fn": None}


def reset():
    del connects[:]
    ap["up"], ap["password"], ap["fn"] = True, None, None


class WLAN:
    def __init__(self, interface=STA_IF):
        self.interface = interface
        self._active = False
        self._requested = False
        self._key = None

    def active(self, a=None):
        if a is None:
            return self._active
        self._active = bool(a)
        if not self._active:
            self._requested = False

    def connect(self, ssid=None, key=None):
        if not self._active:
            raise OSError("Wifi Not Started")
        if self._requested and self._state() != STAT_GOT_IP:
            raise OSError("Wifi Internal Error")
        connects.append(ssid)
        self._requested = True
        self._key = key

    def disconnect(self):
        self._requested = False

    def _state(self):
        if ap["fn"] is not None:
            ap["fn"]()
        if not self._active or not self._requested:
            return STAT_IDLE
        if not ap["up"]:
            return STAT_NO_AP_FOUND
        if ap["password"] is not None and ap["password"] != self._key:
            return STAT_WRONG_PASSWORD
        return STAT_GOT_IP

    def isconnected(self):
        return self._state() == STAT_GOT_IP

    def status(self, param=None):
        if param == "rssi":
            return -50
        return self._state()

    def ifconfig(self, conf=None):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")

    def config(self, *a, **kw):
        if a and a[0] == "mac":
            return b"\x24\x0a\xc4\x00\x00\x01"
        return None
