"""The wire contract with the cabinets (docs/protocol.md): canonical bytes, HMAC-SHA256, JSON.

Pure functions, no I/O. The firmware has its own implementation of the same rules
(firmware/protocol.py); both are checked against tests/vectors.json.
"""
import hashlib
import hmac
import json
import time

CREDIT_FIELDS = ("cab", "ledger", "seq", "credits", "pulses", "session", "ts", "epoch", "exp")
ACK_FIELDS = ("cab", "ledger", "seq", "session", "result", "reason", "pulses", "last", "epoch")
_INT_FIELDS = frozenset(("seq", "credits", "pulses", "ts", "last", "exp"))

ACK_RESULTS = ("applied", "duplicate", "rejected")
REJECT_REASONS = ("bad_signature", "malformed", "wrong_cabinet", "bad_pulses", "stale_seq", "wrong_epoch",
                  "expired")
# Reasons a cabinet gives before (or without) verifying the credit's signature: its ack then names no
# credit (ledger "", seq 0, session ""), and one that names the credit in flight is never final.
UNVERIFIED_REASONS = ("bad_signature", "malformed")


def _canonical(kind, fields, msg):
    parts = [kind]
    for name in fields:
        value = msg[name]
        if name in _INT_FIELDS:
            # bool is an int in Python; on the wire it is not a number.
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError("%s must be an integer, not %r" % (name, value))
            parts.append(str(value))
        else:
            if not isinstance(value, str):
                raise ValueError("%s must be a string, not %r" % (name, value))
            if "\n" in value:
                raise ValueError("%s must not contain a newline" % name)
            parts.append(value)
    return "\n".join(parts).encode("utf-8")


def canonical_credit(msg):
    """The bytes a credit's signature covers. Raises ValueError (or KeyError) on a bad message."""
    return _canonical("credit", CREDIT_FIELDS, msg)


def canonical_ack(msg):
    """The bytes an ack's signature covers. Raises ValueError (or KeyError) on a bad message."""
    return _canonical("ack", ACK_FIELDS, msg)


def sign(secret, canonical):
    """64 lower-case hex digits: HMAC-SHA256 keyed with the cabinet secret (ASCII)."""
    return hmac.new(secret.encode("ascii"), canonical, hashlib.sha256).hexdigest()


def _verify(canonical_fn, msg, secret, kind):
    if not isinstance(msg, dict) or msg.get("t") != kind:
        return False
    sig = msg.get("sig")
    if not isinstance(sig, str):
        return False
    try:
        canonical = canonical_fn(msg)
    except (KeyError, ValueError):
        return False
    # compare_digest on str requires ASCII; a non-ASCII forged sig is simply wrong.
    try:
        return hmac.compare_digest(sign(secret, canonical), sig)
    except TypeError:
        return False


def verify_credit(msg, secret):
    """True iff `msg` (a parsed credit dict) is well formed and signed with `secret`."""
    return _verify(canonical_credit, msg, secret, "credit")


def verify_ack(msg, secret):
    """True iff `msg` (a parsed ack dict) is well formed and signed with `secret`."""
    return _verify(canonical_ack, msg, secret, "ack")


def _encode(kind, fields, values, secret, canonical_fn):
    msg = {"t": kind}
    msg.update(zip(fields, values))
    msg["sig"] = sign(secret, canonical_fn(msg))
    return json.dumps(msg, separators=(",", ":")).encode("utf-8")


def build_credit(cab, ledger, seq, credits, pulses, session, secret, ts=None, epoch="", exp=0):
    """The credit message as the bytes to publish (compact JSON, signed) for the cabinet's `epoch`
    (its journal's; "" when the relay doesn't know it yet: the cabinet then answers wrong_epoch).
    `exp`: Unix seconds from which the cabinet refuses it (`expired`), 0 for no expiry
    (docs/protocol.md, Expiry)."""
    if ts is None:
        ts = int(time.time())
    return _encode("credit", CREDIT_FIELDS, (cab, ledger, seq, credits, pulses, session, ts, epoch, exp), secret,
                   canonical_credit)


def build_ack(cab, ledger, seq, session, result, reason, pulses, last, secret, epoch=""):
    """An ack as the bytes a cabinet publishes (used by tests and tools playing a cabinet)."""
    return _encode("ack", ACK_FIELDS, (cab, ledger, seq, session, result, reason, pulses, last, epoch), secret,
                   canonical_ack)


def valid_epoch(value):
    """A cabinet epoch as the firmware draws it: 16 lower-case hex digits."""
    return isinstance(value, str) and len(value) == 16 and all(c in "0123456789abcdef" for c in value)


# -- config (retained pulse timing) and test pulse, relay -> cabinet ---------------------------

CONFIG_FIELDS = ("cab", "ver", "width_ms", "gap_ms", "coins_per_credit", "ts")
SCREEN_FIELDS = ("price", "promo")     # optional, signed: the lines the cabinet's screen shows
MAX_SCREEN_LINE = 24
SCREEN_SIGNS = (("\u20ac", "EUR "), ("\u00a3", "GBP "), ("\u00a5", "JPY "), ("\u2013", "-"), ("\u2014", "-"))
TEST_FIELDS = ("cab", "n", "pulses", "ts")
_CFG_INT_FIELDS = frozenset(("ver", "width_ms", "gap_ms", "coins_per_credit", "ts", "n", "pulses"))


def _canonical_ints(kind, fields, msg):
    parts = [kind]
    for name in fields:
        value = msg[name]
        if name in _CFG_INT_FIELDS:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError("%s must be an integer, not %r" % (name, value))
            parts.append(str(value))
        else:
            if not isinstance(value, str) or "\n" in value:
                raise ValueError("%s must be a string without a newline, not %r" % (name, value))
            parts.append(value)
    return "\n".join(parts).encode("utf-8")


def screen_text(text):
    """`text` as the cabinet's screen can draw it: printable ASCII (MicroPython's 8x8 font has nothing
    else), at most MAX_SCREEN_LINE characters. Currency signs become ISO codes (EUR 1.00), dashes a
    hyphen; anything else outside ASCII is dropped."""
    for sign, code in SCREEN_SIGNS:
        text = text.replace(sign, code)
    text = "".join(c for c in text if " " <= c <= "~")
    return " ".join(text.split())[:MAX_SCREEN_LINE].rstrip()


def canonical_config(msg):
    """The bytes a config's signature (`sig`) covers: the timing. Raises ValueError (or KeyError)."""
    return _canonical_ints("config", CONFIG_FIELDS, msg)


def canonical_screen(msg):
    """The bytes a config's screen signature (`ssig`) covers: `screen`, cab, ver, price, promo. The
    lines are printable ASCII of at most MAX_SCREEN_LINE characters. Raises ValueError (or KeyError)."""
    for k in SCREEN_FIELDS:
        v = msg[k]
        if not isinstance(v, str) or len(v) > MAX_SCREEN_LINE or any(not " " <= c <= "~" for c in v):
            raise ValueError("%s must be at most %d printable ASCII characters, not %r" % (k, MAX_SCREEN_LINE, v))
    return _canonical_ints("screen", ("cab", "ver") + SCREEN_FIELDS, msg)


def canonical_test(msg):
    """The bytes a test pulse's signature covers. Raises ValueError (or KeyError) on a bad message."""
    return _canonical_ints("test", TEST_FIELDS, msg)


def verify_config(msg, secret):
    """True iff `msg` (a parsed config dict) is well formed and signed with `secret` (ranges not checked),
    screen lines included when it carries any (price, promo and ssig, all three)."""
    if not _verify(canonical_config, msg, secret, "config"):
        return False
    if not any(k in msg for k in SCREEN_FIELDS + ("ssig",)):
        return True
    return _verify(canonical_screen, dict(msg, sig=msg.get("ssig")), secret, "config")


def verify_test(msg, secret):
    """True iff `msg` (a parsed test-pulse dict) is well formed and signed with `secret`."""
    return _verify(canonical_test, msg, secret, "test")


def build_config(cab, ver, width_ms, gap_ms, coins_per_credit, secret, ts=None, price=None, promo=None):
    """The retained config message as bytes (width/gap 0 = the board profile's default). `price` and
    `promo` (see screen_text) are the lines the cabinet's screen shows, signed apart (`ssig`) so a board
    without a screen checks the timing exactly as before and never parses them."""
    if ts is None:
        ts = int(time.time())
    msg = {"t": "config"}
    msg.update(zip(CONFIG_FIELDS, (cab, ver, width_ms, gap_ms, coins_per_credit, ts)))
    if price is not None or promo is not None:
        msg.update(price=price or "", promo=promo or "")
        msg["ssig"] = sign(secret, canonical_screen(msg))
    msg["sig"] = sign(secret, canonical_config(msg))
    return json.dumps(msg, separators=(",", ":")).encode("utf-8")


def build_test(cab, n, pulses, secret, ts=None):
    """A test-pulse message as bytes."""
    if ts is None:
        ts = int(time.time())
    return _encode("test", TEST_FIELDS, (cab, n, pulses, ts), secret, canonical_test)


# -- status (cabinet -> relay, retained), signed ------------------------------------------------

# Every field a status may carry, in the order the signature covers them (docs/protocol.md, Status):
# the seal (epoch, boot, n) first; offline statuses (the last will) carry only cab..n.
STATUS_FIELDS = ("cab", "online", "epoch", "boot", "n", "fw", "ledger", "last", "uptime", "heap", "rssi", "total",
                 "inhibited", "held", "cfg", "width_ms", "gap_ms", "cfg_error", "test", "test_error", "crashes", "wifi",
                 "dropped", "display", "clock", "ota")
_STATUS_REQUIRED = ("cab", "online", "epoch", "boot", "n")
_STATUS_BOOL = frozenset(("online", "inhibited"))
_STATUS_STR = frozenset(("cab", "epoch", "fw", "ledger", "cfg_error", "test_error", "display", "ota"))
MAX_STATUS_BYTES = 2048


def canonical_status(msg):
    """The bytes a status's signature covers: `status` then key=value lines for the fields present, in
    STATUS_FIELDS order (booleans true/false). Raises ValueError (or KeyError) on a bad message."""
    for name in _STATUS_REQUIRED:
        msg[name]
    parts = ["status"]
    for name in STATUS_FIELDS:
        if name not in msg:
            continue
        value = msg[name]
        if name in _STATUS_BOOL:
            if not isinstance(value, bool):
                raise ValueError("%s must be true or false, not %r" % (name, value))
            text = "true" if value else "false"
        elif name in _STATUS_STR:
            if not isinstance(value, str) or "\n" in value:
                raise ValueError("%s must be a string without a newline, not %r" % (name, value))
            text = value
        else:
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError("%s must be an integer, not %r" % (name, value))
            text = str(value)
        parts.append("%s=%s" % (name, text))
    return "\n".join(parts).encode("utf-8")


def verify_status(msg, secret):
    """True iff `msg` (a parsed status dict) is well formed and signed with `secret`."""
    return _verify(canonical_status, msg, secret, "status")


def build_status(secret, cab, online, epoch, boot, n, **fields):
    """A signed status as the bytes a cabinet publishes (for tests and tools playing a cabinet)."""
    msg = {"t": "status", "cab": cab, "online": online, "epoch": epoch, "boot": boot, "n": n}
    msg.update((k, fields[k]) for k in STATUS_FIELDS if k in fields)
    msg["sig"] = sign(secret, canonical_status(msg))
    return json.dumps(msg, separators=(",", ":")).encode("utf-8")


def signed_status_fields(msg):
    """The signed fields of a verified status (what the relay stores; anything else is ignored)."""
    return {k: msg[k] for k in STATUS_FIELDS if k in msg}
