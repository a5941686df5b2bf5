# Hostile MQTT credit payloads for the firmware (issue 10), in the MicroPython subset: the same
# generator runs under CPython (tests/fw, make fuzz) and on the MicroPython VM. A tiny xorshift PRNG
# keeps runs reproducible on both (MicroPython's random has no Random class).
#
# Each case says how many coin pulses it may cause; the oracle is the coin pin's history.
# A tampered copy of an authentic credit (truncated, a byte flipped) may still verify when the change
# is syntax only: MicroPython's json.loads accepts '{...]' where CPython refuses it. The signed fields
# are then the authentic ones, so it may pulse that credit's count ONCE (never again for its session);
# any change to a signed field must give no pulse.
import json

import fwmsgs
import protocol
from fwutil import EPOCH, KEY, LEDGER

FORGED_KEY = b"f" * 64
_CHARS = "ab\x00\n\"\\{}[]:,\u00e9\u2028\ud7ff\U0001f600 "


class Rng:
    def __init__(self, seed):
        self.s = (seed * 2654435761 + 1) & 0xFFFFFFFF or 1

    def bits(self, n):
        out = 0
        got = 0
        while got < n:
            x = self.s
            x ^= (x << 13) & 0xFFFFFFFF
            x ^= x >> 17
            x ^= (x << 5) & 0xFFFFFFFF
            self.s = x
            out = (out << 32) | x
            got += 32
        return out >> (got - n)

    def below(self, n):
        return self.bits(30) % n

    def pick(self, seq):
        return seq[self.below(len(seq))]


def _text(r):
    return "".join(r.pick(_CHARS) for _ in range(r.below(12)))


def _int(r):
    return r.pick([0, -1, 1, 255, 256, 2 ** 31, 2 ** 63, -(2 ** 63) - 1, 2 ** 80, r.bits(40)])


def _value(r, depth=0):
    k = r.below(7 if depth < 3 else 4)
    if k == 0:
        return None
    if k == 1:
        return r.below(2) == 1
    if k == 2:
        return _int(r)
    if k == 3:
        return _text(r)
    if k == 4:
        return 1.5
    if k == 5:
        return [_value(r, depth + 1) for _ in range(r.below(3))]
    return {_text(r): _value(r, depth + 1) for _ in range(r.below(3))}


class Campaign:
    """Generates cases against one cabinet: keeps the next good sequence number and the sessions sent."""

    def __init__(self, seed, cab="cab1"):
        self.r = Rng(seed)
        self.cab = cab
        self.seq = 1
        self.sent = []
        self.kinds = {}
        self.base = None        # (seq, pulses, session) of the authentic credit a tampered case came from
        self.applied = []       # sessions of tampered cases that verified and pulsed

    def _good(self, pulses=None):
        r = self.r
        seq = self.seq
        self.seq += 1 + r.below(3)      # gaps are allowed; only order matters
        pulses = pulses if pulses is not None else 1 + r.below(4)
        session = "cs_test_fz%d" % seq
        self.sent.append((seq, pulses, session))
        return fwmsgs.credit(KEY, self.cab, LEDGER, seq, 1, pulses, session, 1764165000, EPOCH), pulses

    def case(self):
        """(kind, payload bytes, pulses it may cause)."""
        r = self.r
        self.base = None
        k = r.below(10)
        if k == 0:
            kind, payload, pulses = "valid", None, 0
            payload, pulses = self._good()
        elif k == 1:            # random bytes
            kind, pulses = "bytes", 0
            payload = bytes(r.below(256) for _ in range(r.below(80)))
        elif k == 2:            # a good message cut short
            kind, pulses = "truncated", 0
            full, _ = self._forged_good()
            payload = full[:r.below(len(full))]
        elif k == 3:            # a good message with one byte changed
            kind, pulses = "bitflip", 0
            full, _ = self._forged_good()
            b = bytearray(full)
            i = r.below(len(b))
            b[i] = b[i] ^ (1 << r.below(8))
            payload = bytes(b)
        elif k == 4:            # signed with another key (a forger who knows the format)
            kind, pulses = "forged", 0
            payload = fwmsgs.credit(FORGED_KEY, self.cab, LEDGER, self.seq + 5, 1, 3, "cs_test_forged",
                                      1764165000, EPOCH)
        elif k == 5:            # a replay of a credit already applied (or a new one never sent)
            if self.sent:
                kind, pulses = "replay", 0
                seq, p, session = self.r.pick(self.sent)
                payload = fwmsgs.credit(KEY, self.cab, LEDGER, seq, 1, p, session, 1764165000, EPOCH)
            else:
                kind, pulses = "bytes", 0
                payload = b"{}"
        elif k == 6:            # signed, with out-of-range or wrong-typed fields
            kind, pulses = "signed_bad", 0
            payload = self._signed_bad()
        elif k == 7:            # hostile JSON of any shape
            kind, pulses = "json", 0
            v = _value(r)
            if r.below(2):
                v = {"t": "credit", "cab": self.cab, "ledger": LEDGER, "seq": _value(r), "credits": _value(r),
                     "pulses": _value(r), "session": _value(r), "ts": _value(r), "sig": _value(r)}
            payload = json.dumps(v).encode()
        elif k == 8:            # deep nesting and duplicate keys
            kind, pulses = "nesting", 0
            if r.below(2):
                d = 1 + r.below(200)
                payload = b"[" * d + b"]" * d
            else:
                good, _ = self._forged_good()
                payload = good[:-1] + b',"pulses":255,"seq":' + str(self.seq + 100).encode() + b"}"
        else:                   # another cabinet's name in a correctly signed message
            kind, pulses = "wrong_cab", 0
            payload = fwmsgs.credit(KEY, "cab2", LEDGER, self.seq + 7, 1, 2, "cs_test_other", 1764165000, EPOCH)
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        return kind, payload, pulses

    def _forged_good(self):
        # an authentic credit this campaign never sends as is: only tampered copies of it are thrown
        seq = self.seq + 1000
        self.base = (seq, 2, "cs_test_mut%d" % seq)
        return fwmsgs.credit(KEY, self.cab, LEDGER, seq, 1, 2, self.base[2], 1764165000, EPOCH), 2

    def judge(self, kind, may, result, got):
        """None when (result, pulses seen) is acceptable for the last case, else why not."""
        if got == may and (result == "applied") == (may > 0):
            return None
        b = self.base
        if b is not None and result == "applied" and got == b[1] and b[2] not in self.applied:
            # syntax-only damage to an authentic credit: that credit, once; later credits go after it
            self.applied.append(b[2])
            self.sent.append(b)
            self.seq = b[0] + 1
            self.kinds["tampered_but_authentic"] = self.kinds.get("tampered_but_authentic", 0) + 1
            return None
        return "%s with %d pulses, allowed %d" % (result, got, may)

    def _signed_bad(self):
        r = self.r
        seq, credits, pulses = self.seq + 2000, 1, 2
        which = r.below(4)
        if which == 0:
            pulses = r.pick([0, -1, 256, 1000, 2 ** 40])
        elif which == 1:
            seq = r.pick([0, -5])
        elif which == 2:
            credits = r.pick([0, -1])
        else:
            session = ""
            canon = protocol.canonical("credit", (self.cab, LEDGER, seq, credits, pulses, session, 1764165000, EPOCH,
                                                  0))
            return ('{"t":"credit","cab":"%s","ledger":"%s","seq":%d,"credits":%d,"pulses":%d,"session":"",'
                    '"ts":1764165000,"epoch":"%s","exp":0,"sig":"%s"}' % (self.cab, LEDGER, seq, credits, pulses, EPOCH,
                                                                  protocol.sign(KEY, canon))).encode()
        return fwmsgs.credit(KEY, self.cab, LEDGER, seq, credits, pulses, "cs_test_bad%d" % seq, 1764165000, EPOCH)


def run(n, seed, cabinet, pin):
    """Throw n cases at `cabinet.handle`; returns (counts by kind, pulses seen, pulses allowed).
    Raises AssertionError on the first case that pulses more than allowed or raises."""
    camp = Campaign(seed)
    allowed = 0
    for i in range(n):
        kind, payload, may = camp.case()
        before = _count(pin)
        try:
            result, ack = cabinet.handle(payload)
        except Exception as e:  # noqa: BLE001 - any exception is a finding, with the case that caused it
            raise AssertionError("case %d (%s) %r raised %r" % (i, kind, payload[:120], e))
        got = _count(pin) - before
        why = camp.judge(kind, may, result, got)
        if why:
            raise AssertionError("case %d (%s) %r: %s" % (i, kind, payload, why))
        if ack is not None and not fwmsgs.check_ack(ack, KEY):
            raise AssertionError("case %d (%s): unsigned ack" % (i, kind))
        allowed += got
    return camp.kinds, _count(pin), allowed


def _count(pin):
    return len([1 for t, v in pin.history[1:] if v == 1])
