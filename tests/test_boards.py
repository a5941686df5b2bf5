"""Board profiles (boards/*.json): every shipped one validates through firmware/config.py and puts the
coin line on a boot-safe pin; every way to get a profile wrong is one clear ConfigError."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "hostsim"))
sys.path.insert(0, str(ROOT / "firmware"))

import config  # noqa: E402

PROFILES = sorted((ROOT / "boards").glob("*.json"))
SHIPPED = {"esp32-devkitc": "esp32", "esp32-c3": "esp32c3", "esp32-s3-devkitc": "esp32s3"}

# Independent of firmware/config.py: pins that must never carry the coin line, from the datasheets.
NEVER = {
    "esp32": {0, 2, 5, 12, 15} | set(range(6, 12)) | set(range(34, 40)) | {1, 3},
    "esp32c3": {2, 8, 9} | set(range(11, 18)) | {18, 19} | {20, 21},
    "esp32s3": {0, 3, 45, 46} | set(range(26, 33)) | {19, 20} | {43, 44},
}


def load(name):
    return json.loads((ROOT / "boards" / (name + ".json")).read_text())


def test_the_three_boards_are_shipped():
    assert {p.stem for p in PROFILES} >= set(SHIPPED)


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.stem)
def test_every_shipped_profile_validates(path):
    raw = json.loads(path.read_text())
    b = config.check_board(raw, path.name)
    assert b["name"] == path.stem, "the profile's name is its file name (config.json 'board')"
    assert b["coin_pin"] not in NEVER[b["chip"]]
    assert set(NEVER[b["chip"]]) <= set(b["unsafe_pins"]), "the list says what the note says"
    for k in ("inhibit_pin", "meter_pin"):
        assert b[k] is None or b[k] not in NEVER[b["chip"]] - set(range(34, 40)), k
    lo, hi = b["width_ms_range"]
    assert lo <= b["width_ms"] <= hi
    assert len(raw["note"]) > 100 and ("GPIO %d" % b["coin_pin"]) in raw["note"], "say why"
    assert raw["description"]


def rows():
    """(profile, change, key named in the message, words in the message); one row per mistake."""
    D = "esp32-devkitc"
    C3 = "esp32-c3"
    S3 = "esp32-s3-devkitc"
    return [
        (D, {"name": None}, "name", "string"),
        (D, {"chip": None}, "chip", "esp32, esp32c3, esp32s3"),
        (D, {"chip": "esp8266"}, "chip", "one of"),
        (D, {"coin_pin": None}, "coin_pin", "not a GPIO"),
        (D, {"coin_pin": "25"}, "coin_pin", "not a GPIO"),
        (D, {"coin_pin": True}, "coin_pin", "not a GPIO"),
        (D, {"coin_pin": 24}, "coin_pin", "not a GPIO of the esp32"),
        (D, {"coin_pin": 0}, "coin_pin", "strapping"),
        (D, {"coin_pin": 12}, "coin_pin", "strapping"),
        (D, {"coin_pin": 7}, "coin_pin", "flash"),
        (D, {"coin_pin": 1}, "coin_pin", "console"),
        (D, {"coin_pin": 34}, "coin_pin", "input-only"),
        (D, {"coin_pin": 14}, "coin_pin", "unsafe_pins"),
        (C3, {"coin_pin": 25}, "coin_pin", "not a GPIO of the esp32c3"),
        (C3, {"coin_pin": 9}, "coin_pin", "strapping"),
        (C3, {"coin_pin": 18}, "coin_pin", "USB"),
        (C3, {"coin_pin": 14}, "coin_pin", "flash"),
        (S3, {"coin_pin": 46}, "coin_pin", "strapping"),
        (S3, {"coin_pin": 20}, "coin_pin", "USB"),
        (S3, {"coin_pin": 35}, "coin_pin", "PSRAM"),
        (S3, {"coin_pin": 22}, "coin_pin", "not a GPIO of the esp32s3"),
        (D, {"active": "up"}, "active", "\"high\" or \"low\""),
        (D, {"active": 1}, "active", "\"high\" or \"low\""),
        (D, {"width_ms": 10}, "width_ms", "from 20 to 500"),
        (D, {"width_ms": 501}, "width_ms", "from 20 to 500"),
        (D, {"width_ms": "100"}, "width_ms", "integer"),
        (D, {"gap_ms": 0}, "gap_ms", "from 20 to 2000"),
        (D, {"width_ms_range": [500, 20]}, "width_ms_range", "min <= max"),
        (D, {"width_ms_range": [0, 20]}, "width_ms_range", "1 <= min"),
        (D, {"gap_ms_range": 5}, "gap_ms_range", "[min, max]"),
        (D, {"gap_ms_range": [20, 20000]}, "gap_ms_range", "<= 10000"),
        (D, {"led_pin": 25}, "led_pin", "already used"),
        (D, {"led_pin": 36}, "led_pin", "input-only"),
        (D, {"led_pin": "2"}, "led_pin", "not a GPIO"),
        (D, {"led_active": 1}, "led_active", "\"high\" or \"low\""),
        (D, {"inhibit_pin": 25}, "inhibit_pin", "already used"),
        (D, {"inhibit_pin": 2}, "inhibit_pin", "strapping"),
        (D, {"inhibit_pin": 9}, "inhibit_pin", "flash"),
        (D, {"inhibit_pin": 39}, "inhibit_pull", "no internal pull"),
        (D, {"inhibit_active": "on"}, "inhibit_active", "\"high\" or \"low\""),
        (D, {"inhibit_pull": "both"}, "inhibit_pull", "\"up\", \"down\" or null"),
        (D, {"meter_pin": 26}, "meter_pin", "already used"),
        (D, {"meter_pin": 40}, "meter_pin", "not a GPIO"),
        (C3, {"meter_pin": 20}, "meter_pin", "console"),
        (D, {"safe_pin": 6}, "safe_pin", "flash"),
        (D, {"safe_active": "pressed"}, "safe_active", "\"high\" or \"low\""),
        (D, {"safe_window_ms": -1}, "safe_window_ms", "from 0 to 10000"),
        (D, {"unsafe_pins": "0,2"}, "unsafe_pins", "a list"),
    ]


@pytest.mark.parametrize("profile, change, key, words", rows(),
                         ids=["%s-%s" % (r[0], "-".join("%s=%s" % kv for kv in r[1].items()))
                              for r in rows()])
def test_each_way_to_be_wrong_is_one_clear_error(profile, change, key, words):
    d = load(profile)
    for k, v in change.items():
        if v is None:
            del d[k]
        else:
            d[k] = v
    before = json.dumps(d, sort_keys=True)
    with pytest.raises(config.ConfigError) as e:
        config.check_board(d, "board.json")
    msg = str(e.value)
    assert msg.startswith("board.json: '%s'" % key), msg
    assert words in msg, msg
    assert json.dumps(d, sort_keys=True) == before, "validation changes nothing"


def test_load_board_reads_the_copy_on_the_device(tmp_path):
    (tmp_path / "board.json").write_text((ROOT / "boards" / "esp32-c3.json").read_text())
    b = config.load_board(str(tmp_path) + "/")
    assert (b["chip"], b["coin_pin"], b["inhibit_pin"], b["safe_pin"]) == ("esp32c3", 10, 3, 9)
