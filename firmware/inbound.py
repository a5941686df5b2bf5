# A bound on what one incoming MQTT message may cost. umqtt.simple reads a PUBLISH's payload in one
# read(sz): a 100 KB retained config is a MemoryError on a 56 KB heap, and it comes back on every
# reconnect. Here a read above MAX_MSG is drained in CHUNK-byte reads and handed on as b"" (the
# caller ignores an empty payload; umqtt.simple still PUBACKs it, so the broker forgets it).
from micropython import const

MAX_MSG = const(2048)     # bytes: a credit is ~300, a config ~200 (docs/protocol.md, Limits)
_CHUNK = const(256)
_ECONNRESET = const(104)

dropped = 0               # messages drained and dropped since boot (reported in the status)


def read(sock, n):
    """sock.read(n), never allocating more than MAX_MSG; a short read (EOF) raises OSError."""
    global dropped
    if n < 0:
        raise OSError(_ECONNRESET)     # a length field that doesn't add up: not a sane broker
    if n <= MAX_MSG:
        b = sock.read(n)
        if b is not None and len(b) < n:
            raise OSError(_ECONNRESET)
        return b
    while n > 0:
        b = sock.read(_CHUNK if n > _CHUNK else n)
        if not b:
            raise OSError(_ECONNRESET)
        n -= len(b)
    dropped += 1
    return b""
