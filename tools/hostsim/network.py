# Host fake of MicroPython's `network`: a WLAN that connects at once.
# MicroPython-compatible subset.
STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010

connects = []      # (ssid,) of every connect() call


class WLAN:
    def __init__(self, interface=STA_IF):
        self.interface = interface
        self._active = False
        self._connected = False

    def active(self, a=None):
        if a is None:
            return self._active
        self._active = bool(a)
        if not self._active:
            self._connected = False

    def connect(self, ssid=None, key=None):
        if not self._active:
            raise OSError("WiFi Internal Error")
        connects.append(ssid)
        self._connected = True

    def disconnect(self):
        self._connected = False

    def isconnected(self):
        return self._connected

    def status(self, param=None):
        if param == "rssi":
            return -50
        return STAT_GOT_IP if self._connected else STAT_IDLE

    def ifconfig(self, conf=None):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")

    def config(self, *a, **kw):
        if a and a[0] == "mac":
            return b"\x24\x0a\xc4\x00\x00\x01"
        return None
