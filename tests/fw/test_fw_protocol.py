# Every vector in tests/vectors.json, valid and invalid, plus HMAC against RFC 4231.
import json

import fwmsgs
import protocol
from fwutil import KEY, LEDGER, vectors

FIELDS = ("cab", "ledger", "seq", "session", "result", "reason", "pulses", "last", "epoch")


def test_hmac_matches_rfc4231():
    h = protocol.hmac_sha256(b"Jefe", b"what do ya want for nothing?")
    assert protocol.hexlify(h).decode() == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    # a key longer than the 64-byte block is hashed first
    h = protocol.hmac_sha256(b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First")
    assert protocol.hexlify(h).decode() == "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"


def test_every_credit_vector():
    v = vectors()
    key = v["secret"].encode()
    assert len(v["credits"]) >= 8
    for c in v["credits"]:
        m = c["message"]
        reason, parsed = protocol.check_credit(json.dumps(m).encode(), "cab1", key)
        if c["valid"]:
            assert reason == "", c["name"]
            assert parsed["seq"] == m["seq"] and parsed["pulses"] == m["pulses"], c["name"]
            canon = protocol.canonical("credit", [m[k] for k in protocol.CREDIT_FIELDS])
            assert canon == c["canonical"].encode(), c["name"]
            assert protocol.sign(key, canon) == m["sig"], c["name"]
        else:
            # a credit without a signed field (a v2 relay's, no exp) can't even be checked
            assert reason == ("malformed" if "missing" in c["name"] else "bad_signature"), (c["name"], reason)


def test_every_ack_vector():
    v = vectors()
    key = v["secret"].encode()
    for a in v["acks"]:
        m = a["message"]
        built = protocol.ack(key, *[m[k] for k in FIELDS])
        assert fwmsgs.check_ack(json.dumps(m), key) == a["valid"], a["name"]
        if a["valid"]:
            assert json.loads(built) == m, a["name"]
            canon = protocol.canonical("ack", [m[k] for k in FIELDS])
            assert canon == a["canonical"].encode(), a["name"]
            assert b" " not in built, "compact JSON"
        else:
            assert json.loads(built)["sig"] != m["sig"], a["name"]


def test_credit_builder_round_trips():
    p = fwmsgs.credit(KEY, "cab1", LEDGER, 5, 2, 4, "cs_test_rt", 1764165000)
    reason, m = protocol.check_credit(p, "cab1", KEY)
    assert reason == "" and m["pulses"] == 4 and m["session"] == "cs_test_rt"


def _signed(**kw):
    m = {"t": "credit", "cab": "cab1", "ledger": LEDGER, "seq": 3, "credits": 1, "pulses": 2,
         "session": "cs_test_x", "ts": 1764165000, "epoch": "", "exp": 0}
    for k in kw:
        m[k] = kw[k]
    m["sig"] = protocol.sign(KEY, protocol.canonical("credit", [m[k] for k in protocol.CREDIT_FIELDS]))
    return json.dumps(m).encode()


def _raw(**kw):
    m = json.loads(_signed())
    for k in kw:
        if kw[k] is None:
            del m[k]
        else:
            m[k] = kw[k]
    return json.dumps(m).encode()


def test_bad_credits_one_row_each():
    rows = [
        ("not json", b"{nope", "malformed", False),
        ("json list", b"[1,2]", "malformed", False),
        ("not a credit", _raw(t="ack"), "malformed", False),
        ("seq is a string", _raw(seq="3"), "malformed", False),
        ("seq is a bool", _raw(seq=True), "malformed", False),
        ("pulses is a float", _raw(pulses=2.0), "malformed", False),
        ("session missing", _raw(session=None), "malformed", False),
        ("sig missing", _raw(sig=None), "malformed", False),
        ("exp missing (a v2 credit)", _raw(exp=None), "malformed", False),
        ("exp a float", _raw(exp=1.5), "malformed", False),
        ("exp moved after signing", _raw(exp=2000000000), "bad_signature", True),
        ("newline in session", _raw(session="cs\nx"), "malformed", False),
        ("sig of other fields", _raw(seq=4), "bad_signature", True),
        ("sig truncated", _raw(sig="00"), "bad_signature", True),
        ("another cabinet, its own valid sig", _signed(cab="cab2"), "wrong_cabinet", True),
        ("ledger not 32 hex", _signed(ledger="xyz"), "malformed", True),
        ("seq 0", _signed(seq=0), "malformed", True),
        ("no credits", _signed(credits=0), "malformed", True),
        ("empty session", _signed(session=""), "malformed", True),
        ("zero pulses", _signed(pulses=0), "bad_pulses", True),
        ("256 pulses", _signed(pulses=256), "bad_pulses", True),
    ]
    for name, payload, want, parsed in rows:
        reason, m = protocol.check_credit(payload, "cab1", KEY)
        assert reason == want, (name, reason)
        assert (m is not None) == parsed, name
    assert protocol.check_credit(_signed(pulses=255), "cab1", KEY)[0] == ""


def test_equal_is_exact():
    assert protocol.equal("ab", "ab") and protocol.equal(b"ab", "ab")
    assert not protocol.equal("ab", "aB") and not protocol.equal("ab", "abc")


def test_status_payloads():
    seal = ("0f1e2d3c4b5a6978", 3, 5)
    off = json.loads(protocol.status(KEY, "cab1", False, seal))
    assert sorted(off) == ["boot", "cab", "epoch", "n", "online", "sig", "t"] and off["online"] is False
    m = json.loads(protocol.status(KEY, "cab1", True, seal, LEDGER, 7))
    del m["sig"]
    assert m == {"t": "status", "cab": "cab1", "online": True, "epoch": "0f1e2d3c4b5a6978", "boot": 3, "n": 5,
                 "fw": protocol.FW, "ledger": LEDGER, "last": 7}


def test_every_status_vector():
    v = vectors()
    key = v["secret"].encode()
    assert len(v["statuses"]) >= 3
    for c in v["statuses"]:
        m = c["message"]
        info = {}
        for k in protocol.STATUS_KEYS:
            if k in m:
                info[k] = m[k]
        built = protocol.status(key, m["cab"], m["online"], (m["epoch"], m["boot"], m["n"]),
                                m.get("ledger", ""), m.get("last", 0), info)
        if c["valid"]:
            # compact JSON (the ota field's own value has spaces)
            assert json.loads(built) == m and b"\": " not in built and b", \"" not in built, c["name"]
            # MicroPython dicts are unordered: the order the signature covers is checked on the bytes
            order = [k for k in c["canonical"].split("\n")[1:]]
            _in_order(built, ["t"] + [k.split("=")[0] for k in order] + ["sig"])
        else:
            assert json.loads(built)["sig"] != m["sig"], c["name"]


def _compact(m):
    return json.dumps(m, separators=(",", ":")).encode()


def _in_order(payload, keys):
    pos = [payload.find(('"%s":' % k).encode()) for k in keys]
    assert all(i > 0 for i in pos) and pos == sorted(pos), (payload, pos)


def test_every_config_vector():
    v = vectors()
    key = v["secret"].encode()
    assert len(v["configs"]) >= 8
    for c in v["configs"]:
        m = c["message"]
        reason, parsed = protocol.check_config(_compact(m), "cab1", key)
        if c["valid"]:
            assert reason == "", (c["name"], reason)
            assert parsed["width_ms"] == m["width_ms"] and parsed["ver"] == m["ver"], c["name"]
            canon = protocol.canonical("config", [m[k] for k in protocol.CONFIG_FIELDS])
            assert canon == c["canonical"].encode(), c["name"]
            built = fwmsgs.config(key, *[m[k] for k in protocol.CONFIG_FIELDS])
            # the screen's lines are signed apart (ssig): the timing's signature is the same without them
            timing = dict((k, m[k]) for k in m if k not in ("price", "promo", "ssig"))
            assert json.loads(built) == timing and b" " not in built, c["name"]
            _in_order(built, ("t",) + protocol.CONFIG_FIELDS + ("sig",))
        else:
            assert reason == c["reason"], (c["name"], reason)


def test_every_test_pulse_vector():
    v = vectors()
    key = v["secret"].encode()
    for c in v["test_pulses"]:
        m = c["message"]
        reason, parsed = protocol.check_test(_compact(m), "cab1", key)
        if c["valid"]:
            assert reason == "" and parsed["pulses"] == m["pulses"], (c["name"], reason)
            assert protocol.canonical("test", [m[k] for k in protocol.TEST_FIELDS]) == \
                c["canonical"].encode(), c["name"]
            built = fwmsgs.test(key, *[m[k] for k in protocol.TEST_FIELDS])
            assert json.loads(built) == m and b" " not in built, c["name"]
            _in_order(built, ("t",) + protocol.TEST_FIELDS + ("sig",))
        else:
            assert reason == c["reason"], (c["name"], reason)


def test_config_and_test_messages_that_do_not_parse():
    rows = [b"", b"{", b"[]", b'{"t":"credit"}', b'{"t":"config","cab":"cab1"}',
            b'{"t":"config","cab":"cab1","ver":true,"width_ms":1,"gap_ms":1,"coins_per_credit":1,'
            b'"ts":1,"sig":"00"}']
    for p in rows:
        assert protocol.check_config(p, "cab1", KEY) == ("malformed", None), p
        assert protocol.check_test(p, "cab1", KEY) == ("malformed", None), p


def test_status_with_device_fields_in_documented_order():
    info = {"test_error": "", "uptime": 5, "inhibited": True, "heap": 1000, "rssi": -60,
            "total": 3, "held": 0, "cfg": 0, "width_ms": 100, "gap_ms": 150, "cfg_error": "",
            "test": 0, "crashes": 2, "wifi": 201, "dropped": 2, "display": "ok", "clock": 1764165600,
            "ota": "esp32 1.27.0 idle 0.2.0"}
    p = protocol.status(KEY, "cab1", True, ("0f1e2d3c4b5a6978", 1, 1), LEDGER, 7, info)
    m = json.loads(p)
    assert m["inhibited"] is True and m["last"] == 7 and m["fw"] == protocol.FW
    # MicroPython dicts are unordered: check the bytes
    _in_order(p, ("last",) + protocol.STATUS_KEYS)
