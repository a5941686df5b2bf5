# config.json (site and cabinet) and board.json (the board profile, a copy of
# boards/<name>.json) are checked once, at boot: any bad value is one clear ConfigError
# naming the key and what is expected. Secrets and passwords never appear in a message.
import json

DEFAULTS = {"prefix": "arcade", "keepalive": 30, "wifi_password": ""}
_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"


class ConfigError(Exception):
    pass


def _load_json(path, what):
    try:
        with open(path) as f:
            d = json.load(f)
    except OSError:
        raise ConfigError("%s not found: %s" % (path, what))
    except ValueError:
        raise ConfigError("%s is not valid JSON: fix it (%s)" % (path, what))
    if not isinstance(d, dict):
        raise ConfigError("%s must hold a JSON object (%s)" % (path, what))
    return d


def _bad(src, key, expected, value=None, show=True):
    got = ""
    if show:
        got = ", got %s" % (json.dumps(value) if value is not None else "nothing")
    return ConfigError("%s: '%s' must be %s%s" % (src, key, expected, got))


def _str(d, src, key, lo, hi, show=True):
    v = d.get(key)
    if not isinstance(v, str) or not lo <= len(v) <= hi:
        raise _bad(src, key, "a string of %d to %d characters" % (lo, hi), v, show)
    return v


def _int(d, src, key, lo, hi):
    v = d.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise _bad(src, key, "an integer from %d to %d" % (lo, hi), v)
    return v


def mask(url):
    """The URL with its password replaced by ***."""
    i = url.find("://")
    at = url.rfind("@")
    if i < 0 or at < 0:
        return url
    cred = url[i + 3:at]
    c = cred.find(":")
    if c < 0:
        return url
    return url[:i + 3] + cred[:c] + ":***" + url[at:]


def parse_broker(url, src="config.json", key="broker"):
    """mqtt://[user[:password]@]host[:port] or mqtts://... -> dict(host, port, user, password, ssl)."""
    expected = "mqtt://[user:password@]host[:port] or mqtts://..."
    if not isinstance(url, str):
        raise _bad(src, key, expected, url)
    if url.startswith("mqtt://"):
        ssl, rest, port = False, url[7:], 1883
    elif url.startswith("mqtts://"):
        ssl, rest, port = True, url[8:], 8883
    else:
        raise _bad(src, key, expected, mask(url))
    user = password = None
    at = rest.rfind("@")
    if at >= 0:
        cred, rest = rest[:at], rest[at + 1:]
        c = cred.find(":")
        user, password = (cred, "") if c < 0 else (cred[:c], cred[c + 1:])
        if not user:
            raise _bad(src, key, expected + " (user name is empty)", mask(url))
    if rest.endswith("/"):
        rest = rest[:-1]
    host = rest
    c = rest.rfind(":")
    if c >= 0 and "]" not in rest[c:]:
        host = rest[:c]
        try:
            port = int(rest[c + 1:])
        except ValueError:
            port = 0
        if not 1 <= port <= 65535:
            raise _bad(src, key, expected + " (port 1..65535)", mask(url))
    if not host or "/" in host:
        raise _bad(src, key, expected + " (no host)", mask(url))
    return {"host": host, "port": port, "user": user, "password": password, "ssl": ssl}


def check_id(v, src="config.json", key="cabinet"):
    ok = isinstance(v, str) and 1 <= len(v) <= 32
    if ok:
        for ch in v:
            if ch not in _ID_CHARS:
                ok = False
    if not ok:
        raise _bad(src, key, "1 to 32 characters from A-Z a-z 0-9 _ -", v)
    return v


def check_config(d, src="config.json"):
    """Validate a config dict; returns a new dict with defaults filled and `broker` parsed."""
    c = {}
    for k in DEFAULTS:
        c[k] = DEFAULTS[k]
    for k in d:
        c[k] = d[k]
    c["cabinet"] = check_id(c.get("cabinet"), src)
    s = c.get("secret")
    ok = isinstance(s, str) and 16 <= len(s) <= 128
    if ok:
        for ch in s:
            if not 33 <= ord(ch) <= 126:
                ok = False
    if not ok:
        raise _bad(src, "secret", "the cabinet's secret from the relay (16 to 128 printable ASCII "
                   "characters, no spaces; `arcade cabinet add` prints it)", show=False)
    _str(c, src, "wifi_ssid", 1, 32)
    _str(c, src, "wifi_password", 0, 64, show=False)
    c["mqtt"] = parse_broker(c.get("broker"), src)
    _str(c, src, "board", 1, 64)
    p = c["prefix"]
    if (not isinstance(p, str) or not p or len(p) > 64 or p[0] == "/" or p[-1] == "/"
            or "+" in p or "#" in p or "\n" in p):
        raise _bad(src, "prefix", "a topic prefix without + # or a leading/trailing / (default "
                   "\"arcade\")", p)
    _int(c, src, "keepalive", 1, 3600)
    ca = c.get("ca")
    if c["mqtt"]["ssl"] or ca is not None:
        if not isinstance(ca, str) or not ca or "\n" in ca:
            raise _bad(src, "ca", "the path on the device of the broker's CA certificate (PEM or "
                       "DER) for mqtts:// (`arcade provision --ca FILE` copies it as ca.pem)", ca)
        if not c["mqtt"]["ssl"]:
            raise _bad(src, "ca", "set only with an mqtts:// broker", ca)
    return c


# Per chip: (GPIOs that exist, strapping pins, reserved pins: flash/PSRAM, USB-JTAG, the UART0
# console, input-only pins). The coin line must avoid all of them; other inputs avoid the
# reserved ones and the strapping ones (an outside circuit on a strapping pin can change the boot mode).
_CHIPS = {
    "esp32": (tuple(range(0, 20)) + (21, 22, 23, 25, 26, 27) + tuple(range(32, 40)),
              (0, 2, 5, 12, 15), (1, 3, 6, 7, 8, 9, 10, 11), (34, 35, 36, 37, 38, 39)),
    "esp32c3": (tuple(range(0, 22)), (2, 8, 9), tuple(range(11, 22)), ()),
    # S3: 33..37 carry octal flash/PSRAM on the N8R8/N16R8 modules, so they count as reserved
    "esp32s3": (tuple(range(0, 22)) + tuple(range(26, 49)), (0, 3, 45, 46),
                (19, 20) + tuple(range(26, 38)) + (43, 44), ()),
}
_PINS = (("coin_pin", "output"), ("led_pin", "led"), ("inhibit_pin", "input"),
         ("meter_pin", "input"), ("safe_pin", "safe"))


def _level(b, src, k):
    if b[k] not in ("high", "low"):
        raise _bad(src, k, "\"high\" or \"low\"", b[k])


def check_board(d, src="board.json"):
    """Validate a board profile; returns it with defaults filled."""
    b = {"active": "high", "width_ms": 100, "gap_ms": 150, "led_pin": None, "led_active": "high",
         "inhibit_pin": None, "inhibit_active": "low", "inhibit_pull": "up", "meter_pin": None,
         "meter_active": "low", "safe_pin": None, "safe_active": "low", "safe_window_ms": 1000,
         "unsafe_pins": []}
    for k in d:
        b[k] = d[k]
    _str(b, src, "name", 1, 64)
    chip = b.get("chip")
    if chip not in _CHIPS:
        raise _bad(src, "chip", "one of %s" % ", ".join(sorted(_CHIPS)), chip)
    exist, strap, reserved, in_only = _CHIPS[chip]
    u = b["unsafe_pins"]
    if not isinstance(u, list):
        raise _bad(src, "unsafe_pins", "a list of GPIO numbers", u)
    used = []
    for k, kind in _PINS:
        pin = b.get(k)
        if pin is None and kind != "output":
            continue
        why = ""
        if not isinstance(pin, int) or isinstance(pin, bool) or pin not in exist:
            why = "not a GPIO of the %s" % chip
        elif pin in reserved:
            why = "reserved on the %s (flash/PSRAM, USB or the serial console)" % chip
        elif kind == "output" and pin in strap:
            why = "a strapping pin of the %s: it is sampled and may glitch at reset" % chip
        elif kind == "output" and pin in in_only:
            why = "input-only on the %s" % chip
        elif kind == "output" and pin in u:
            why = "listed in this board's unsafe_pins %s" % json.dumps(u)
        elif kind == "led" and pin in in_only:
            why = "input-only on the %s" % chip
        elif kind == "input" and pin in strap:
            why = "a strapping pin of the %s: a circuit on it can change the boot mode" % chip
        elif pin in used:
            why = "already used by another pin key"
        if why:
            raise ConfigError("%s: '%s' %s is %s; choose another GPIO" % (src, k, json.dumps(pin), why))
        used.append(pin)
    for k in ("active", "led_active", "inhibit_active", "meter_active", "safe_active"):
        _level(b, src, k)
    p = b["inhibit_pull"]
    if p not in ("up", "down", None):
        raise _bad(src, "inhibit_pull", "\"up\", \"down\" or null (external resistor)", p)
    if p is not None and b["inhibit_pin"] in in_only:
        raise _bad(src, "inhibit_pull", "null: GPIO %d has no internal pull resistor, fit an "
                   "external one" % b["inhibit_pin"], p)
    for k in ("width_ms", "gap_ms"):
        rng = b.get(k + "_range", [20, 2000])
        if (not isinstance(rng, list) or len(rng) != 2 or not isinstance(rng[0], int)
                or not isinstance(rng[1], int) or not 1 <= rng[0] <= rng[1] <= 10000):
            raise _bad(src, k + "_range", "[min, max] in ms with 1 <= min <= max <= 10000", rng)
        b[k + "_range"] = rng
        _int(b, src, k, rng[0], rng[1])
    _int(b, src, "safe_window_ms", 0, 10000)
    return b


def load_board(root=""):
    """board.json, checked. Read first so the coin line can be driven idle at once."""
    return check_board(_load_json(root + "board.json", "copy boards/<board>.json to the device "
                                  "as board.json"), root + "board.json")


def load_config(root, board):
    """config.json, checked against the board profile."""
    c = check_config(_load_json(root + "config.json", "write it with `arcade provision`"),
                     root + "config.json")
    if c["board"] != board["name"]:
        raise ConfigError("%sconfig.json: 'board' is %s but board.json is the profile for %s: copy "
                          "boards/%s.json as board.json" % (root, json.dumps(c["board"]),
                                                            json.dumps(board["name"]), c["board"]))
    ca = c.get("ca")
    if ca is not None:
        if ca[0] != "/":
            ca = c["ca"] = root + ca
        try:
            with open(ca, "rb") as f:
                ok = len(f.read(64)) > 0
        except OSError:
            ok = False
        if not ok:
            raise ConfigError("%sconfig.json: 'ca' names %s, which is missing or empty on the device: "
                              "copy the broker's CA certificate there" % (root, json.dumps(ca)))
    return c
