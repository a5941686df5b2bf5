"""relay/protocol.py against every vector in tests/vectors.json (the firmware checks the same file)."""
import json
from pathlib import Path

import pytest

from relay import protocol

VECTORS = json.loads((Path(__file__).resolve().parent / "vectors.json").read_text())
SECRET = VECTORS["secret"]


def _ids(rows):
    return [r["name"] for r in rows]


@pytest.mark.parametrize("vec", VECTORS["credits"], ids=_ids(VECTORS["credits"]))
def test_credit_vectors(vec):
    msg = vec["message"]
    assert protocol.verify_credit(msg, SECRET) is vec["valid"]
    if vec["valid"]:
        assert protocol.canonical_credit(msg) == vec["canonical"].encode()
        assert protocol.sign(SECRET, protocol.canonical_credit(msg)) == msg["sig"]
        built = protocol.build_credit(msg["cab"], msg["ledger"], msg["seq"], msg["credits"], msg["pulses"],
                                      msg["session"], SECRET, ts=msg["ts"], epoch=msg["epoch"], exp=msg["exp"])
        # Byte for byte what the vectors hold, compact JSON in the documented field order.
        assert built == json.dumps(msg, separators=(",", ":")).encode()


@pytest.mark.parametrize("vec", VECTORS["acks"], ids=_ids(VECTORS["acks"]))
def test_ack_vectors(vec):
    msg = vec["message"]
    assert protocol.verify_ack(msg, SECRET) is vec["valid"]
    if vec["valid"]:
        assert protocol.canonical_ack(msg) == vec["canonical"].encode()
        built = protocol.build_ack(*[msg[k] for k in protocol.ACK_FIELDS[:-1]], SECRET, epoch=msg["epoch"])
        assert json.loads(built) == msg


def _good_ack():
    return json.loads(protocol.build_ack("cab1", "0" * 32, 3, "cs_test_1", "applied", "", 2, 3, SECRET))


@pytest.mark.parametrize("change", [
    {"seq": "3"},                 # a string where an integer belongs
    {"seq": True},                # a bool is not an integer on the wire
    {"pulses": 2.0},
    {"reason": None},
    {"t": "credit"},
    {"sig": None},
    {"sig": "é" * 64},            # non-ASCII signature
], ids=["seq-str", "seq-bool", "pulses-float", "reason-null", "wrong-type", "sig-null", "sig-nonascii"])
def test_ack_with_wrong_field_types_does_not_verify(change):
    msg = _good_ack()
    assert protocol.verify_ack(msg, SECRET)
    msg.update(change)
    assert not protocol.verify_ack(msg, SECRET)


@pytest.mark.parametrize("field", protocol.ACK_FIELDS)
def test_ack_missing_a_field_does_not_verify(field):
    msg = _good_ack()
    del msg[field]
    assert not protocol.verify_ack(msg, SECRET)


def test_unknown_extra_fields_are_ignored_and_not_signed():
    msg = _good_ack()
    msg["fw"] = "0.1.0"
    assert protocol.verify_ack(msg, SECRET)


def test_a_newline_in_a_field_is_refused():
    with pytest.raises(ValueError, match="session"):
        protocol.build_credit("cab1", "0" * 32, 1, 1, 1, "cs_test\n1", SECRET)
    msg = json.loads(protocol.build_credit("cab1", "0" * 32, 1, 1, 1, "cs_test_1", SECRET))
    msg["session"] = "cs_test\n1"
    assert not protocol.verify_credit(msg, SECRET)


@pytest.mark.parametrize("vec", VECTORS["statuses"], ids=_ids(VECTORS["statuses"]))
def test_status_vectors(vec):
    msg = vec["message"]
    assert protocol.verify_status(msg, SECRET) is vec["valid"]
    if vec["valid"]:
        assert protocol.canonical_status(msg) == vec["canonical"].encode()
        fields = {k: v for k, v in msg.items() if k not in ("t", "sig", "cab", "online", "epoch", "boot", "n")}
        built = protocol.build_status(SECRET, msg["cab"], msg["online"], msg["epoch"], msg["boot"], msg["n"],
                                      **fields)
        assert built == json.dumps(msg, separators=(",", ":")).encode()


@pytest.mark.parametrize("change", [{"online": 1}, {"n": "5"}, {"inhibited": "false"}, {"ledger": None},
                                    {"cfg_error": "a\nb"}, {"sig": None}])
def test_status_with_wrong_field_types_does_not_verify(change):
    msg = json.loads(protocol.build_status(SECRET, "cab1", True, "0" * 16, 1, 1, ledger="", last=0, inhibited=False,
                                           cfg_error=""))
    assert protocol.verify_status(msg, SECRET)
    msg.update(change)
    assert not protocol.verify_status(msg, SECRET)


def test_unsigned_status_of_v1_firmware_does_not_verify():
    assert not protocol.verify_status({"t": "status", "cab": "cab1", "online": True, "fw": "0.2.0"}, SECRET)


@pytest.mark.parametrize("vec", VECTORS["configs"], ids=lambda v: v["name"])
def test_config_vectors(vec):
    """The relay takes a config as its own only when its timing and its screen lines (when it carries
    any) both verify; valid ones are built byte for byte (the cabinet's reasons are tests/fw's)."""
    msg = vec["message"]
    if vec["valid"] and vec.get("lines", True):
        assert protocol.verify_config(msg, SECRET) is (msg["cab"] == "cab1" and msg["ver"] >= 1), vec["name"]
        built = protocol.build_config(msg["cab"], msg["ver"], msg["width_ms"], msg["gap_ms"], msg["coins_per_credit"],
                                      SECRET, ts=msg["ts"], price=msg.get("price"), promo=msg.get("promo"))
        assert built == json.dumps(msg, separators=(",", ":")).encode()
        if "price" in msg:
            assert protocol.canonical_screen(msg) == vec["screen_canonical"].encode()
    elif vec.get("reason", "bad_signature") == "bad_signature" or "lines" in vec:
        assert protocol.verify_config(msg, SECRET) is False, vec["name"]


def test_screen_text_is_what_the_board_font_draws():
    assert protocol.screen_text("from \u20ac0.84 a play") == "from EUR 0.84 a play"
    assert protocol.screen_text("from \u00a31.00 a play") == "from GBP 1.00 a play"
    assert protocol.screen_text("caf\u00e9  \u2013 20% off") == "caf - 20% off"
    long = protocol.screen_text("x" * 100)
    assert len(long) == protocol.MAX_SCREEN_LINE
    for text in ("from \u20ac0.84 a play", "\u00e9\u00e8" * 30, "a\nb"):
        out = protocol.screen_text(text)
        assert all(" " <= c <= "~" for c in out) and len(out) <= protocol.MAX_SCREEN_LINE
    with pytest.raises(ValueError):
        protocol.build_config("cab1", 2, 0, 0, 1, SECRET, price="from \u20ac1 a play", promo="")


@pytest.mark.parametrize("vec", VECTORS["ota_manifests"], ids=_ids(VECTORS["ota_manifests"]))
def test_ota_manifest_vectors(vec):
    import hmac as _hmac

    from relay import ota
    ok = _hmac.compare_digest(ota.manifest_mac(SECRET, vec["manifest"].encode()), vec["mac"])
    assert ok is vec["valid"]
