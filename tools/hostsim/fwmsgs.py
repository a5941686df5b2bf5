# Signed relay -> cabinet messages, built the way firmware/protocol.py reads them: for the firmware
# tests, the footprint run and the simulator's drivers. The relay's own builders are relay/protocol.py.
# Not on the board: the cabinet only verifies these (keeping them off its heap saves ~0.8 KB).
# MicroPython-compatible: the WebAssembly VM imports it too.
import json

from protocol import ACK_FIELDS, canonical, equal, sign


def credit(key, cab, ledger, seq, credits, pulses, session, ts, epoch="", exp=0):
    """A signed credit payload (exp: Unix seconds it expires at, 0 none)."""
    sig = sign(key, canonical("credit", (cab, ledger, seq, credits, pulses, session, ts, epoch, exp)))
    return ('{"t":"credit","cab":%s,"ledger":%s,"seq":%d,"credits":%d,"pulses":%d,'
            '"session":%s,"ts":%d,"epoch":%s,"exp":%d,"sig":"%s"}'
            % (json.dumps(cab), json.dumps(ledger), seq, credits, pulses, json.dumps(session), ts,
               json.dumps(epoch), exp, sig)).encode()


def config(key, cab, ver, width_ms, gap_ms, coins_per_credit, ts, price=None, promo=None):
    """A signed config payload; with `price` and `promo`, the screen's lines and their own signature."""
    sig = sign(key, canonical("config", (cab, ver, width_ms, gap_ms, coins_per_credit, ts)))
    lines = ""
    if price is not None:
        lines = ',"price":%s,"promo":%s,"ssig":"%s"' % (json.dumps(price), json.dumps(promo), sign(
            key, canonical("screen", (cab, ver, price, promo))))
    return ('{"t":"config","cab":%s,"ver":%d,"width_ms":%d,"gap_ms":%d,"coins_per_credit":%d,'
            '"ts":%d%s,"sig":"%s"}' % (json.dumps(cab), ver, width_ms, gap_ms, coins_per_credit, ts,
                                       lines, sig)).encode()


def test(key, cab, n, pulses, ts):
    """A signed test-pulse payload."""
    sig = sign(key, canonical("test", (cab, n, pulses, ts)))
    return ('{"t":"test","cab":%s,"n":%d,"pulses":%d,"ts":%d,"sig":"%s"}'
            % (json.dumps(cab), n, pulses, ts, sig)).encode()


def check_ack(payload, key):
    """True when an ack payload's signature verifies (the relay's job)."""
    try:
        m = json.loads(payload)
        canon = canonical("ack", [m[k] for k in ACK_FIELDS])
        return equal(sign(key, canon), m["sig"])
    except (ValueError, TypeError, KeyError):
        return False
