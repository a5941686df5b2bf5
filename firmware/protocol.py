# Arcade credit protocol v1, exactly as docs/protocol.md writes it: canonical bytes,
# HMAC-SHA256 (MicroPython has no hmac module), credit checks, signed acks, status.
import hashlib
import json
import os
import time
from micropython import const

try:
    from binascii import hexlify
except ImportError:
    from ubinascii import hexlify

FW = "0.2.0"
_BLOCK = const(64)
MAX_PULSES = const(255)

CREDIT_FIELDS = ("cab", "ledger", "seq", "credits", "pulses", "session", "ts", "epoch", "exp")
_STR = ("cab", "ledger", "session", "epoch", "sig")
_INT = ("seq", "credits", "pulses", "ts", "exp")
# Unix seconds = time.time() + this on ports whose epoch is 2000; a clock before 2024 is unset
_UNIX = 946684800 if time.gmtime(0)[0] == 2000 else 0
_SET = const(1704067200)


def clock():
    """Unix seconds by the board's (NTP-set) clock, 0 while it is unset (docs/protocol.md, Expiry)."""
    t = int(time.time()) + _UNIX
    return t if t >= _SET else 0
_HEX = "0123456789abcdef"


def hmac_sha256(key, msg):
    """RFC 2104 over hashlib.sha256; key and msg are bytes."""
    if len(key) > _BLOCK:
        key = hashlib.sha256(key).digest()
    pad = bytearray(_BLOCK)
    pad[:len(key)] = key
    for i in range(_BLOCK):
        pad[i] ^= 0x36
    h = hashlib.sha256(bytes(pad))
    h.update(msg)
    inner = h.digest()
    for i in range(_BLOCK):
        pad[i] ^= 0x36 ^ 0x5C
    h = hashlib.sha256(bytes(pad))
    h.update(inner)
    return h.digest()


def sign(key, canon):
    """64 lower-case hex digits (str)."""
    return hexlify(hmac_sha256(key, canon)).decode()


def equal(a, b):
    """Constant-time compare of two str/bytes (the length is not secret)."""
    if isinstance(a, str):
        a = a.encode()
    if isinstance(b, str):
        b = b.encode()
    if len(a) != len(b):
        return False
    acc = 0
    for i in range(len(a)):
        acc |= a[i] ^ b[i]
    return acc == 0


def canonical(kind, values):
    """b"kind\\nv1\\nv2...": ints in decimal, strings verbatim; no value may hold a newline."""
    parts = [kind]
    for v in values:
        v = str(v) if isinstance(v, int) else v
        if "\n" in v:
            raise ValueError("newline in a signed field")
        parts.append(v)
    return "\n".join(parts).encode()


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _is_ledger(s):
    if len(s) != 32:
        return False
    for c in s:
        if c not in _HEX:
            return False
    return True


def check_credit(payload, cab, key):
    """Parse and verify a credit payload (bytes) for cabinet `cab` with secret `key` (bytes).

    Returns (reason, msg): reason "" and the message dict when it may be applied, else one of
    malformed, bad_signature, wrong_cabinet, bad_pulses; msg is None when it could not be parsed.
    """
    try:
        m = json.loads(payload)
    except (ValueError, TypeError):
        return "malformed", None
    if not isinstance(m, dict) or m.get("t") != "credit":
        return "malformed", None
    for k in _STR:
        v = m.get(k)
        if not isinstance(v, str) or "\n" in v:
            return "malformed", None
    for k in _INT:
        if not _is_int(m.get(k)):
            return "malformed", None
    canon = canonical("credit", [m[k] for k in CREDIT_FIELDS])
    if not equal(sign(key, canon), m["sig"]):
        return "bad_signature", m
    if m["cab"] != cab:
        return "wrong_cabinet", m
    if not _is_ledger(m["ledger"]) or m["seq"] < 1 or m["credits"] < 1 or not m["session"]:
        return "malformed", m
    if not 1 <= m["pulses"] <= MAX_PULSES:
        return "bad_pulses", m
    return "", m


ACK_FIELDS = ("cab", "ledger", "seq", "session", "result", "reason", "pulses", "last", "epoch")


def ack(key, cab, ledger, seq, session, result, reason, pulses, last, epoch=""):
    """A signed ack payload (bytes). `session` is the credit's: after a relay database is
    restored, a seq can be reused, and only the session tells an old ack from a new one.
    `epoch` is the cabinet's current one (docs/protocol.md, No replay after flash loss)."""
    sig = sign(key, canonical("ack", (cab, ledger, seq, session, result, reason, pulses, last,
                                      epoch)))
    return ('{"t":"ack","cab":%s,"ledger":%s,"seq":%d,"session":%s,"result":"%s","reason":"%s",'
            '"pulses":%d,"last":%d,"epoch":%s,"sig":"%s"}'
            % (json.dumps(cab), json.dumps(ledger), seq, json.dumps(session), result, reason,
               pulses, last, json.dumps(epoch), sig)).encode()


def new_epoch():
    """16 hex digits from the hardware RNG: a journal's identity (docs/protocol.md)."""
    return hexlify(os.urandom(8)).decode()


def _fields(m, strs, ints):
    for k in strs:
        v = m.get(k)
        if not isinstance(v, str) or "\n" in v:
            return False
    for k in ints:
        if not _is_int(m.get(k)):
            return False
    return True


def _check_signed(payload, kind, fields, cab, key):
    # (reason, msg) like check_credit, for messages whose fields are cab, ints..., sig
    try:
        m = json.loads(payload)
    except (ValueError, TypeError):
        return "malformed", None
    if not isinstance(m, dict) or m.get("t") != kind or not _fields(m, ("cab", "sig"), fields[1:]):
        return "malformed", None
    if not equal(sign(key, canonical(kind, [m[k] for k in fields])), m["sig"]):
        return "bad_signature", m
    if m["cab"] != cab:
        return "wrong_cabinet", m
    return "", m


CONFIG_FIELDS = ("cab", "ver", "width_ms", "gap_ms", "coins_per_credit", "ts")
TEST_FIELDS = ("cab", "n", "pulses", "ts")
MAX_TEST = const(10)


def check_config(payload, cab, key):
    """A config payload -> (reason, msg); ranges against the board are the caller's job."""
    reason, m = _check_signed(payload, "config", CONFIG_FIELDS, cab, key)
    if not reason and (m["ver"] < 1 or m["width_ms"] < 0 or m["gap_ms"] < 0
                       or not 1 <= m["coins_per_credit"] <= MAX_PULSES):
        reason = "malformed"
    return reason, m


def check_test(payload, cab, key):
    """A test-pulse payload -> (reason, msg)."""
    reason, m = _check_signed(payload, "test", TEST_FIELDS, cab, key)
    if not reason and (m["n"] < 1 or not 1 <= m["pulses"] <= MAX_TEST):
        reason = "malformed"
    return reason, m


STATUS_KEYS = ("uptime", "heap", "rssi", "total", "inhibited", "held", "cfg", "width_ms",
               "gap_ms", "cfg_error", "test", "test_error", "crashes", "wifi", "dropped", "display",
               "clock", "ota")


def status(key, cab, online, seal, ledger="", last=0, info=None):
    """Signed status payload. `seal` = (epoch, boot, n): the journal's epoch, the boot count and a
    number rising with every status of this boot, so the relay can tell an old one (replayed) from
    a new one. `info` holds the fields of STATUS_KEYS (written in that order). The signature covers
    every field present as key=value lines in that order (docs/protocol.md, Status)."""
    f = [("cab", cab), ("online", online), ("epoch", seal[0]), ("boot", seal[1]), ("n", seal[2])]
    if online:
        f += [("fw", FW), ("ledger", ledger), ("last", last)]
        if info:
            for k in STATUS_KEYS:
                v = info.get(k)
                if v is not None:
                    f.append((k, v.replace("\n", " ") if isinstance(v, str) else v))
    canon = "status"
    out = '{"t":"status"'
    for k, v in f:
        canon += "\n%s=%s" % (k, ("true" if v else "false") if v is True or v is False else v)
        out += ',"%s":%s' % (k, json.dumps(v))
    return (out + ',"sig":"%s"}' % sign(key, canon.encode())).encode()
