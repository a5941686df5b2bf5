# MQTT 3.1.1 packets a broker sends, as bytes, for fake brokers in tests and the footprint run.
# MicroPython-compatible: the WebAssembly VM imports it too.


def publish(topic, payload, qos=1, pid=1):
    """An incoming PUBLISH packet."""
    body = bytearray()
    body += bytes([len(topic) >> 8, len(topic) & 0xFF]) + topic
    if qos:
        body += bytes([pid >> 8, pid & 0xFF])
    body += payload
    n = len(body)
    head = bytearray([0x30 | (qos << 1)])
    while True:
        b = n & 0x7F
        n >>= 7
        head.append(b | 0x80 if n else b)
        if not n:
            break
    return bytes(head + body)


def puback(pid):
    return bytes([0x40, 2, pid >> 8, pid & 0xFF])
