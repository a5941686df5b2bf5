"""Host stand-in for MicroPython's `usocket`, over a real CPython socket.

Behaves like the ESP32 port where umqtt.simple depends on it: read(n) returns n bytes
(fewer only at EOF, b"" at EOF), None on a non-blocking socket with no data; write(buf, n)
writes the first n bytes; a timeout raises OSError(ETIMEDOUT). fileno() lets select.poll
watch it.
"""
import errno
import socket as _socket
import time as _time

AF_INET = _socket.AF_INET
SOCK_STREAM = _socket.SOCK_STREAM
SOL_SOCKET = _socket.SOL_SOCKET
SO_REUSEADDR = _socket.SO_REUSEADDR
IPPROTO_TCP = _socket.IPPROTO_TCP   # the ESP32 port has both (ports/esp32/modsocket.c)
TCP_NODELAY = _socket.TCP_NODELAY


dns_delay = 0.0    # seconds each lookup blocks (`arcade simulate --dns-delay`): lwIP's getaddrinfo
#                    ignores settimeout and takes seconds per dead DNS server


def getaddrinfo(host, port, af=0, type=0, proto=0, flags=0):
    if dns_delay > 0:
        _time.sleep(dns_delay)
    return _socket.getaddrinfo(host, port, af or _socket.AF_INET, type or SOCK_STREAM)


class socket:
    def __init__(self, af=AF_INET, type=SOCK_STREAM, proto=0):
        self._s = _socket.socket(af, type, proto)
        self._blocking = True

    def fileno(self):
        return self._s.fileno()

    def connect(self, addr):
        try:
            self._s.connect(addr)
        except _socket.timeout:
            raise OSError(errno.ETIMEDOUT, "connect timed out")

    def setblocking(self, flag):
        self._blocking = bool(flag)
        self._s.setblocking(flag)

    def setsockopt(self, level, opt, value):
        self._s.setsockopt(level, opt, value)

    def settimeout(self, t):
        self._blocking = t is None or t > 0
        self._s.settimeout(t)

    def read(self, n=-1):
        buf = bytearray()
        while n < 0 or len(buf) < n:
            try:
                chunk = self._s.recv(4096 if n < 0 else n - len(buf))
            except BlockingIOError:
                if buf:
                    return bytes(buf)
                return None
            except _socket.timeout:
                raise OSError(errno.ETIMEDOUT, "read timed out")
            if not chunk:
                break
            buf += chunk
            if not self._blocking:
                break
        return bytes(buf)

    def recv(self, n):
        return self._s.recv(n)

    def write(self, buf, n=None):
        view = memoryview(buf)
        if n is not None:
            view = view[:n]
        try:
            self._s.sendall(view)
        except _socket.timeout:
            raise OSError(errno.ETIMEDOUT, "write timed out")
        return len(view)

    send = write

    def close(self):
        self._s.close()

    def __del__(self):
        pass
