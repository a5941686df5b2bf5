# Stand-in for the ESP32's built-in socket module inside the WebAssembly VM, which has no sockets.
# It lets `import umqtt.simple` (which does `import usocket as socket`) succeed so the client can be
# imported and measured; anything that really tries the network gets a clear OSError.
import errno

AF_INET = 2
SOCK_STREAM = 1
IPPROTO_TCP = 6
SOL_SOCKET = 1
SO_REUSEADDR = 4


def _no_network(*args, **kw):
    raise OSError(errno.ENETUNREACH, "no sockets in the WebAssembly MicroPython (use a fake socket)")


def getaddrinfo(host, port, *args):
    _no_network()


class socket:
    def __init__(self, *args):
        _no_network()
