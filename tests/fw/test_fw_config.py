# config.json and board.json: every bad value is one clear error naming the key; no secret leaks.
import json

import config
from fwutil import SECRET, board, scratch, write_json
from fwutil import config as good_config

_HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."


def _err(fn, *a):
    try:
        fn(*a)
    except config.ConfigError as e:
        return str(e)
    return None


def test_good_config_gets_defaults_and_parsed_broker():
    c = config.check_config(good_config())
    assert c["prefix"] == "arcade" and c["keepalive"] == 30
    assert c["mqtt"] == {"host": "broker.example", "port": 1883, "user": "cab",
                         "password": "mqtt-pass-456", "ssl": False}


def test_broker_urls():
    rows = [("mqtt://127.0.0.1:1883", ("127.0.0.1", 1883, None, None, False)),
            ("mqtt://host", ("host", 1883, None, None, False)),
            ("mqtts://u:p@host", ("host", 8883, "u", "p", True)),
            ("mqtt://u@host:1999/", ("host", 1999, "u", "", False)),
            ("mqtt://u:p:q@host:1", ("host", 1, "u", "p:q", False))]
    for url, want in rows:
        m = config.parse_broker(url)
        assert (m["host"], m["port"], m["user"], m["password"], m["ssl"]) == want, url
    assert config.mask("mqtt://u:secretpw@h:1") == "mqtt://u:***@h:1"
    assert config.mask("mqtt://h:1") == "mqtt://h:1"


def test_bad_config_values_one_row_each():
    rows = [
        ("cabinet", None), ("cabinet", ""), ("cabinet", "cab/1"), ("cabinet", "c" * 33), ("cabinet", 7),
        ("secret", None), ("secret", "short"), ("secret", SECRET[:20] + " " + SECRET[21:]),
        ("wifi_ssid", None), ("wifi_ssid", ""), ("wifi_password", 12345678),
        ("broker", None), ("broker", "http://host:1883"), ("broker", "mqtt://:pw@host"),
        ("broker", "mqtt://user:pw@host:99999"), ("broker", "mqtt://user:pw@host:port"),
        ("broker", "mqtt://"),
        ("board", None), ("board", ""),
        ("prefix", ""), ("prefix", "arcade/"), ("prefix", "a/#"), ("prefix", 3),
        ("keepalive", 0), ("keepalive", "30"), ("keepalive", 3601), ("keepalive", True),
        ("ca", "ca.pem"), ("ca", 5),
    ]
    for key, value in rows:
        d = good_config()
        if value is None:
            del d[key]
        else:
            d[key] = value
        msg = _err(config.check_config, d)
        assert msg is not None, (key, value)
        assert ("'%s'" % key) in msg, (key, value, msg)
        for secret in (SECRET, "mqtt-pass-456", "wifi-pass-123", "pw@"):
            assert secret not in msg, (key, msg)


def test_bad_board_values_one_row_each():
    rows = [
        ("name", None), ("coin_pin", None), ("coin_pin", 0), ("coin_pin", 2), ("coin_pin", 12),
        ("coin_pin", 6), ("coin_pin", 34), ("coin_pin", 49), ("coin_pin", True), ("coin_pin", "25"),
        ("active", "up"), ("width_ms", 10), ("width_ms", 501), ("gap_ms", 0), ("gap_ms", "150"),
        ("width_ms_range", [500, 20]), ("gap_ms_range", 5), ("led_pin", 25), ("led_pin", "2"),
        ("led_active", 1), ("unsafe_pins", "0,2"), ("chip", None), ("chip", "esp32c6"),
        ("inhibit_pin", 2), ("inhibit_pin", 25), ("meter_pin", 6), ("safe_pin", 49),
        ("inhibit_pull", "sideways"), ("safe_window_ms", 20000),
    ]
    for key, value in rows:
        b = board()
        if value is None:
            del b[key]
        else:
            b[key] = value
        msg = _err(config.check_board, b)
        assert msg is not None, (key, value)
        assert ("'%s'" % key) in msg, (key, value, msg)
    b = config.check_board({"name": "minimal", "chip": "esp32", "coin_pin": 25})
    assert (b["active"], b["width_ms"], b["gap_ms"], b["led_pin"]) == ("high", 100, 150, None)
    assert (b["inhibit_pin"], b["meter_pin"], b["safe_pin"]) == (None, None, None)


def test_shipped_devkitc_profile_is_boot_safe():
    with open(_HERE + "/../../boards/esp32-devkitc.json") as f:
        b = config.check_board(json.load(f))
    strapping, flash, input_only = (0, 2, 5, 12, 15), range(6, 12), range(34, 40)
    pin = b["coin_pin"]
    assert pin not in strapping and pin not in flash and pin not in input_only
    for p in list(strapping) + list(flash) + list(input_only):
        assert p in b["unsafe_pins"], p
    assert (b["width_ms"], b["gap_ms"]) == (100, 150)


def test_files_missing_unreadable_or_for_another_board():
    root = scratch()
    assert "board.json not found" in _err(config.load_board, root)
    with open(root + "board.json", "w") as f:
        f.write("{oops")
    assert "board.json is not valid JSON" in _err(config.load_board, root)
    write_json(root + "board.json", board())
    b = config.load_board(root)
    assert "config.json not found" in _err(config.load_config, root, b)
    write_json(root + "config.json", good_config(board="esp32-devkitc"))
    msg = _err(config.load_config, root, b)
    assert "'board'" in msg and "esp32-devkitc" in msg
    write_json(root + "config.json", good_config())
    assert config.load_config(root, b)["cabinet"] == "cab1"


def test_tls_needs_a_ca_file_on_the_device():
    root = scratch()
    write_json(root + "board.json", board())
    b = config.load_board(root)
    tls = "mqtts://cab:mqtt-pass-456@broker.example"
    msg = _err(config.check_config, good_config(broker=tls))
    assert "'ca'" in msg and "mqtt-pass-456" not in msg
    write_json(root + "config.json", good_config(broker=tls, ca="ca.pem"))
    msg = _err(config.load_config, root, b)
    assert "'ca'" in msg and "ca.pem" in msg and "missing or empty" in msg
    with open(root + "ca.pem", "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    c = config.load_config(root, b)
    assert c["ca"] == root + "ca.pem" and c["mqtt"]["ssl"] and c["mqtt"]["port"] == 8883
