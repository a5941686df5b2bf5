# config.json (site and cabinet) and board.json (the board profile, a copy of
# boards/<name>.json) are checked once, at boot: any bad value is one clear ConfigError
# naming the key and what is expected. Secrets and passwords never appear in a message.
import json
import sys

from checks import ConfigError, bad, integer, string

DEFAULTS = {"prefix": "arcade", "keepalive": 30, "wifi_password": ""}
_ID_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"


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
        raise bad(src, key, expected, url)
    if url.startswith("mqtt://"):
        ssl, rest, port = False, url[7:], 1883
    elif url.startswith("mqtts://"):
        ssl, rest, port = True, url[8:], 8883
    else:
        raise bad(src, key, expected, mask(url))
    user = password = None
    at = rest.rfind("@")
    if at >= 0:
        cred, rest = rest[:at], rest[at + 1:]
        c = cred.find(":")
        user, password = (cred, "") if c < 0 else (cred[:c], cred[c + 1:])
        if not user:
            raise bad(src, key, expected + " (user name is empty)", mask(url))
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
            raise bad(src, key, expected + " (port 1..65535)", mask(url))
    if not host or "/" in host:
        raise bad(src, key, expected + " (no host)", mask(url))
    return {"host": host, "port": port, "user": user, "password": password, "ssl": ssl}


def parse_brokers(v, src="config.json", key="broker"):
    """`broker`: one URL, or a list of 1 to 4 (a broker cluster's nodes, tried in turn) with one
    scheme and one login. The first parsed as parse_broker; with several, "hosts" holds every
    (host, port) in order (a tuple of tuples: a few dozen bytes, not a dict per node)."""
    if not isinstance(v, list):
        return parse_broker(v, src, key)
    if not 1 <= len(v) <= 4:
        raise bad(src, key, "a broker URL or a list of 1 to 4 (one per cluster node)", len(v))
    m = parse_broker(v[0], src, key)
    if len(v) > 1:
        hosts = []
        for u in v:
            o = parse_broker(u, src, key)
            if (o["ssl"], o["user"], o["password"]) != (m["ssl"], m["user"], m["password"]):
                raise bad(src, key, "the same scheme and login in every URL of the list", mask(u))
            hosts.append((o["host"], o["port"]))
        m["hosts"] = tuple(hosts)
    return m


def check_id(v, src="config.json", key="cabinet"):
    ok = isinstance(v, str) and 1 <= len(v) <= 32
    if ok:
        for ch in v:
            if ch not in _ID_CHARS:
                ok = False
    if not ok:
        raise bad(src, key, "1 to 32 characters from A-Z a-z 0-9 _ -", v)
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
        raise bad(src, "secret", "the cabinet's secret from the relay (16 to 128 printable ASCII "
                   "characters, no spaces; `arcade cabinet add` prints it)", show=False)
    string(c, src, "wifi_ssid", 1, 32)
    string(c, src, "wifi_password", 0, 64, show=False)
    c["mqtt"] = parse_brokers(c.get("broker"), src)
    string(c, src, "board", 1, 64)
    p = c["prefix"]
    if (not isinstance(p, str) or not p or len(p) > 64 or p[0] == "/" or p[-1] == "/"
            or "+" in p or "#" in p or "\n" in p):
        raise bad(src, "prefix", "a topic prefix without + # or a leading/trailing / (default "
                   "\"arcade\")", p)
    integer(c, src, "keepalive", 1, 3600)
    ca = c.get("ca")
    if c["mqtt"]["ssl"] or ca is not None:
        if not isinstance(ca, str) or not ca or "\n" in ca:
            raise bad(src, "ca", "the path on the device of the broker's CA certificate (PEM or "
                       "DER) for mqtts:// (`arcade provision --ca FILE` copies it as ca.pem)", ca)
        if not c["mqtt"]["ssl"]:
            raise bad(src, "ca", "set only with an mqtts:// broker", ca)
    return c


def check_board(d, src="board.json", machine=None):
    """Validate a board profile; returns it with defaults filled. With `machine` (a board's
    sys.implementation._machine) a profile for another chip is refused too. The checks live in
    boardcheck.py, loaded for this and dropped again: boot-only code stays off the heap."""
    import boardcheck
    try:
        b = boardcheck.check(d, src)
        if machine:
            boardcheck.same_chip(b, src, machine)
        return b
    finally:
        sys.modules.pop("boardcheck", None)


def load_board(root="", machine=None):
    """board.json, checked. Read first so the coin line can be driven idle at once. A profile for
    another chip is refused before any pin is touched: a C3 profile on a classic ESP32 would drive
    GPIO10, which is wired to the SPI flash there."""
    if machine is None:
        machine = getattr(sys.implementation, "_machine", "")
    return check_board(_load_json(root + "board.json", "copy boards/<board>.json to the device "
                                  "as board.json"), root + "board.json", machine)


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
