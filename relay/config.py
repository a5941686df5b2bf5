"""Relay configuration from the environment or a `.env` file.

The environment wins over `.env`. A missing webhook secret stops the relay at start-up with a
message saying what to do: the relay never runs with signature verification skipped.
Secrets are never printed; `mask_url` hides the password in MQTT_URL for logs.
"""
import ipaddress
import os
import re
import stat
from urllib.parse import unquote, urlsplit

from dotenv import dotenv_values

DEFAULTS = {
    "ARCADE_DB": "./arcade.db",
    "MQTT_URL": "mqtt://127.0.0.1:1883",  # several brokers (a cluster's nodes): URLs separated by commas
    "ARCADE_MQTT_VERSION": "5",       # 5, or 3.1.1 for brokers without MQTT 5 (NATS Server's MQTT listener)
    "STRIPE_WEBHOOK_SECRET": None,
    "STRIPE_API_KEY": None,
    "ARCADE_TOPIC_PREFIX": "arcade",
    "ARCADE_ACK_TIMEOUT": 10.0,       # seconds before an unacknowledged credit is sent again
    "ARCADE_ACK_TIMEOUT_MAX": 120.0,  # the backoff doubles up to this
    "ARCADE_STUCK_AFTER": 60.0,       # a delivery unacknowledged this long is logged as stuck
    "ARCADE_RESCAN": 2.0,             # dispatcher re-reads the database this often (wakeups from other processes)
    "ARCADE_MQTT_KEEPALIVE": 30,      # seconds; a dead link is noticed within about two of these
    "ARCADE_DB_BUSY_TIMEOUT": 5000,   # milliseconds a write waits for the database lock
    # Several relays on one PostgreSQL database (issue 12, docs/scale.md): per-cabinet leases.
    "ARCADE_RELAY_NAME": None,        # this relay's name (its broker client id ends with it); default: the host name
    "ARCADE_LEASE_SECONDS": 10.0,     # a dead relay's cabinets are taken over this long after its last renewal
    # The player's side (issue 5): pay page, stickers, promotions.
    "ARCADE_NAME": "Arcade",          # shown on the pay page and in the Stripe line item
    "ARCADE_PUBLIC_URL": None,        # the address phones reach the relay at (QR stickers, Stripe return URLs)
    "ARCADE_TZ": "UTC",               # IANA zone promotions are evaluated in, e.g. Europe/Berlin
    "STRIPE_API_BASE": None,          # only for tests/demo: a fake Stripe API on loopback
    "ARCADE_PROXY_HOPS": 0,           # reverse proxies in front of the relay (nginx, Caddy) to trust for X-Forwarded-*
    "ARCADE_PROXY_FROM": "127.0.0.0/8,::1",  # addresses those proxies connect from; others' X-Forwarded-* is ignored
    "ARCADE_TRUSTED_HOSTS": "",       # extra Host names to answer besides ARCADE_PUBLIC_URL's and loopback
    # Reconciliation with Stripe (relay/reconcile.py): durations like 15m, 72h; EVERY 0 = off.
    "ARCADE_RECONCILE_EVERY": "15m",  # the relay's periodic job; off anyway without STRIPE_API_KEY
    "ARCADE_RECONCILE_WINDOW": "72h", # how far back each run lists Checkout Sessions
    # The operator's side (issue 13): console, metrics, alerts (docs/operations.md).
    "ARCADE_CONSOLE": "0",            # 1: the relay's own host also serves /admin (else `arcade console`)
    "ARCADE_SECRET_KEY": None,        # signs console session cookies; else made once into <ARCADE_DB>.console-key (0600)
    "ARCADE_METRICS_TOKEN": None,     # GET /metrics and /healthz's details need "Authorization: Bearer <token>"
    "ARCADE_ALERT_WEBHOOK": None,     # Slack/Discord-compatible incoming webhook URL
    "ARCADE_SMTP_HOST": None,         # alerts by email: SMTP server (port, user, password, starttls below)
    "ARCADE_SMTP_PORT": "25",
    "ARCADE_SMTP_USER": None,
    "ARCADE_SMTP_PASSWORD": None,
    "ARCADE_SMTP_STARTTLS": "0",
    "ARCADE_ALERT_FROM": None,
    "ARCADE_ALERT_TO": None,          # comma-separated addresses
    "ARCADE_OFFLINE_ALERT": "10m",    # a cabinet offline this long (inside opening hours) is an alert
    "ARCADE_OPEN_HOURS": None,        # e.g. 10:00-23:00 in ARCADE_TZ; unset: always open
    "ARCADE_ALERT_EVERY": "30s",      # how often the alert checks run (0: off)
    # Automatic refunds (relay/expiry.py, relay/autorefund.py; docs/protocol.md, Expiry).
    "ARCADE_REFUND_AFTER": "15m",     # a credit's signed exp is this long after payment (0: no expiry, no auto refund)
    "ARCADE_REFUND_MARGIN": "5m",     # refunded this long after exp without an ack (clock skew + a pulse train)
    "ARCADE_CLOCK_SKEW": "30s",       # a cabinet clock further than this from ours counts as unset
    "ARCADE_REFUND_EVERY": "30",      # seconds between the automatic-refund checks
}
_FLOATS = ("ARCADE_LEASE_SECONDS", "ARCADE_ACK_TIMEOUT", "ARCADE_ACK_TIMEOUT_MAX", "ARCADE_STUCK_AFTER", "ARCADE_RESCAN")
_INTS = ("ARCADE_MQTT_KEEPALIVE", "ARCADE_DB_BUSY_TIMEOUT")
SECRET_KEYS = ("STRIPE_WEBHOOK_SECRET", "STRIPE_API_KEY", "ARCADE_SECRET_KEY", "ARCADE_METRICS_TOKEN",
               "ARCADE_SMTP_PASSWORD")


class ConfigError(Exception):
    """A configuration value is missing or wrong; the message says which and what to do."""


def load(environ=None, dotenv_path=".env", require_webhook_secret=True):
    """Return the configuration as a dict: defaults < .env file < environment."""
    values = dict(DEFAULTS)
    if dotenv_path and os.path.exists(dotenv_path):
        check_dotenv(dotenv_path)
        values.update({k: v for k, v in dotenv_values(dotenv_path).items() if k in DEFAULTS and v is not None})
    env = os.environ if environ is None else environ
    values.update({k: env[k] for k in DEFAULTS if k in env})
    return check(values, require_webhook_secret)


def db_path(environ=None, dotenv_path=".env"):
    """Just ARCADE_DB (environment, then .env, then the default): for tools that only need the database."""
    env = os.environ if environ is None else environ
    if env.get("ARCADE_DB"):
        return env["ARCADE_DB"]
    if dotenv_path and os.path.exists(dotenv_path):
        check_dotenv(dotenv_path)
        value = dotenv_values(dotenv_path).get("ARCADE_DB")
        if value:
            return value
    return DEFAULTS["ARCADE_DB"]


def check_dotenv(path):
    """Refuse a .env that someone else could have written: it holds the secrets and STRIPE_API_BASE."""
    st = os.stat(path)
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError("%s is writable by %s (mode %03o): anyone who can write it can point the relay at another "
                          "Stripe or broker. Run `chmod 600 %s` (and keep it owned by the relay's user)."
                          % (path, "others" if st.st_mode & stat.S_IWOTH else "its group", st.st_mode & 0o777, path))


def key_mode(api_key):
    """"live" or "test" from a Stripe secret or restricted key (sk_live_/rk_test_...), else None."""
    for mode in ("live", "test"):
        if api_key and str(api_key).startswith(("sk_%s_" % mode, "rk_%s_" % mode)):
            return mode
    return None


def is_loopback(host):
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def proxy_networks(text):
    """ARCADE_PROXY_FROM "127.0.0.0/8,::1,10.0.0.5" -> [ip_network]; raises ConfigError."""
    nets = []
    for part in str(text or "").split(","):
        if part.strip():
            try:
                nets.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError:
                raise ConfigError("ARCADE_PROXY_FROM: %r is not an address or network (e.g. 127.0.0.1 or "
                                  "10.0.0.0/24)" % part.strip())
    return nets


def check(values, require_webhook_secret=True):
    """Validate and convert a mapping of settings (missing keys take defaults); raises ConfigError."""
    out = dict(DEFAULTS)
    out.update(values)
    for key in _FLOATS + _INTS:
        kind = float if key in _FLOATS else int
        try:
            out[key] = kind(out[key])
        except (TypeError, ValueError):
            raise ConfigError("%s=%r is not a number: set it to a positive %s (default %s)"
                              % (key, out[key], "number of seconds" if kind is float else "integer", DEFAULTS[key]))
        if out[key] <= 0:
            raise ConfigError("%s=%r must be positive (default %s)" % (key, out[key], DEFAULTS[key]))
    try:
        out["ARCADE_PROXY_HOPS"] = int(out["ARCADE_PROXY_HOPS"])
        if not 0 <= out["ARCADE_PROXY_HOPS"] <= 5:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError("ARCADE_PROXY_HOPS=%r must be 0 (the relay faces the internet) or the number of reverse "
                          "proxies in front of it, e.g. 1 behind nginx" % (out["ARCADE_PROXY_HOPS"],))
    if out["ARCADE_ACK_TIMEOUT_MAX"] < out["ARCADE_ACK_TIMEOUT"]:
        out["ARCADE_ACK_TIMEOUT_MAX"] = out["ARCADE_ACK_TIMEOUT"]
    prefix = out["ARCADE_TOPIC_PREFIX"]
    if not prefix or any(c in prefix for c in "+#\x00") or prefix.startswith("/") or prefix.endswith("/"):
        raise ConfigError("ARCADE_TOPIC_PREFIX=%r is not a usable MQTT topic prefix: use e.g. 'arcade'" % prefix)
    parse_mqtt_urls(out["MQTT_URL"])  # raises ConfigError with the reason
    out["ARCADE_MQTT_VERSION"] = str(out["ARCADE_MQTT_VERSION"]).strip()
    if out["ARCADE_MQTT_VERSION"] not in MQTT_VERSIONS:
        raise ConfigError("ARCADE_MQTT_VERSION=%r: use 5 (the default; credits carry an MQTT message expiry) or "
                          "3.1.1 (a broker that speaks no MQTT 5, e.g. NATS Server)" % (out["ARCADE_MQTT_VERSION"],))
    if not out["ARCADE_DB"]:
        raise ConfigError("ARCADE_DB is empty: set it to the SQLite database path (default ./arcade.db) or a "
                          "postgresql://user:password@host:port/database URL")
    name = out["ARCADE_RELAY_NAME"]
    if name is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", str(name)):
        raise ConfigError("ARCADE_RELAY_NAME=%r: use 1-32 letters, digits, '.', '_' or '-' (it ends the relay's "
                          "broker client id), e.g. relay-2" % (name,))
    if out["ARCADE_LEASE_SECONDS"] < 3:
        raise ConfigError("ARCADE_LEASE_SECONDS=%r is too short: at least 3 (default 10)" % out["ARCADE_LEASE_SECONDS"])
    _check_pay_settings(out)
    out["ARCADE_CONSOLE"] = _flag(out, "ARCADE_CONSOLE")
    out["ARCADE_SMTP_STARTTLS"] = _flag(out, "ARCADE_SMTP_STARTTLS")
    out["ARCADE_PROXY_NETWORKS"] = proxy_networks(out["ARCADE_PROXY_FROM"])
    for key in SECRET_KEYS:
        if out[key] is not None and not str(out[key]).strip():
            out[key] = None
    if require_webhook_secret and not out["STRIPE_WEBHOOK_SECRET"]:
        raise ConfigError("STRIPE_WEBHOOK_SECRET is not set: the relay will not accept webhooks it cannot verify. "
                          "Set it (in the environment or .env) to the endpoint's signing secret from the Stripe "
                          "dashboard or `stripe listen` (it starts with whsec_).")
    return out


def _flag(out, key):
    value = str(out[key]).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", "", "none"):
        return False
    raise ConfigError("%s=%r: use 1 (on) or 0 (off)" % (key, out[key]))


def _check_pay_settings(out):
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
    try:
        ZoneInfo(out["ARCADE_TZ"] or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError("ARCADE_TZ=%r is not a time zone: use an IANA name such as Europe/Berlin" % out["ARCADE_TZ"])
    for key in ("ARCADE_PUBLIC_URL", "STRIPE_API_BASE"):
        if out[key] and urlsplit(str(out[key])).scheme not in ("http", "https"):
            raise ConfigError("%s=%r is not an http(s):// address, e.g. https://pay.my-arcade.com" % (key, out[key]))
        if out[key]:
            out[key] = str(out[key]).rstrip("/")
    base = out["STRIPE_API_BASE"]
    if base and not is_loopback(urlsplit(base).hostname):
        # The API key goes wherever this points, and reconciliation fulfils what that host lists.
        raise ConfigError("STRIPE_API_BASE=%r is not on loopback: it exists only for a fake Stripe in tests and the "
                          "demo (e.g. http://127.0.0.1:12111); unset it to talk to Stripe" % base)


MQTT_VERSIONS = ("5", "3.1.1")
MAX_BROKERS = 16


def parse_mqtt_urls(value):
    """MQTT_URL: one URL, or several separated by commas (the nodes of a broker cluster, tried in turn:
    the dispatcher moves to the next when a connection fails or drops) -> [dict] as parse_mqtt_url.
    A comma inside a password is written %2C. All must be mqtt:// or all mqtts://."""
    parts = [p.strip() for p in str(value or "").split(",")]
    if not any(parts):
        raise ConfigError("MQTT_URL is empty: use mqtt://user:pass@host:1883 (or several, comma-separated)")
    if "" in parts:
        raise ConfigError("MQTT_URL %s has an empty entry: separate the broker URLs with single commas, e.g. "
                          "mqtt://u:p@node1:1883,mqtt://u:p@node2:1883" % mask_url(value))
    if len(parts) > MAX_BROKERS:
        raise ConfigError("MQTT_URL names %d brokers: at most %d" % (len(parts), MAX_BROKERS))
    targets = [parse_mqtt_url(p) for p in parts]
    if len({t["tls"] for t in targets}) > 1:
        raise ConfigError("MQTT_URL %s mixes mqtt:// and mqtts://: use one scheme for every broker"
                          % mask_url(value))
    return targets


def parse_mqtt_url(url):
    """mqtt://[user[:password]@]host[:port] (or mqtts://) -> dict(host, port, username, password, tls).
    Of a comma-separated list (parse_mqtt_urls), the first: what a one-shot tool connects to."""
    if "," in str(url):
        return parse_mqtt_urls(url)[0]
    try:
        parts = urlsplit(url)
        port = parts.port
    except (ValueError, TypeError) as e:
        raise ConfigError("MQTT_URL %s is not a valid URL (%s): use mqtt://user:pass@host:1883" % (mask_url(url), e))
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError("MQTT_URL %s is not an mqtt:// or mqtts:// URL with a host: use mqtt://user:pass@host:1883"
                          % mask_url(url))
    tls = parts.scheme == "mqtts"
    return {
        "host": parts.hostname,
        "port": port or (8883 if tls else 1883),
        "username": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password) if parts.password is not None else None,
        "tls": tls,
    }


def mask_url(url):
    """The URL with its password replaced by ***, for logs and messages (each of a comma-separated list)."""
    if "," in str(url):
        return ",".join(mask_url(u) for u in str(url).split(","))
    try:
        parts = urlsplit(str(url))
        if parts.password is None:
            return str(url)
        netloc = "%s:***@%s" % (parts.username or "", parts.netloc.rsplit("@", 1)[1])
        return parts._replace(netloc=netloc).geturl()
    except ValueError:
        return "<unparseable URL>"
