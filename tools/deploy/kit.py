"""The deployment kit `arcade init` writes: environment file, broker configuration, systemd units,
Caddyfile and an nginx alternative.

Generation is pure (settings in, {name: File} out) so tests can hand every file to the real tool
that reads it (systemd-analyze, caddy, nginx, mosquitto); `write_kit` puts them on disk with their
modes and owners, secrets created 0600 from the first byte and never replaced by `--force`.
"""
import grp
import os
import pwd
import re
import secrets
import tempfile
import time
from collections import namedtuple
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from tools.deploy import File
from tools.deploy import broker as broker_conf

ENV_NAME = "arcade.env"
UNIT_NAME = "arcade-relay.service"
BROKER_DROPIN = "mosquitto.service.d/arcade.conf"
CADDYFILE = "Caddyfile"
NGINX_NAME = "nginx-arcade.conf"
KIT_NAMES = (ENV_NAME, UNIT_NAME, BROKER_DROPIN, CADDYFILE, NGINX_NAME, "mosquitto.conf", "mosquitto.passwd",
             "mosquitto.acl")

# The relay's public paths (README, docs/deploy.md): the webhook, the player's pages and their
# static files, and the operator's console. /healthz and anything else stay on loopback.
PUBLIC_EXACT = ("/stripe/webhook", "/paid", "/paid/status", "/cancel", "/admin")
PUBLIC_PREFIX = ("/pay/", "/static/", "/admin/")

WEBHOOK_SECRET = re.compile(r"whsec_[A-Za-z0-9+/=_-]{16,200}\Z")
API_KEY = re.compile(r"(sk|rk)_(test|live)_[A-Za-z0-9]{8,300}\Z")
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_./:@%+=,-]*\Z")
_NAME_VALUE = re.compile(r"[^\"\\$`\x00-\x1f\x7f]{1,80}\Z")


class KitError(Exception):
    """Bad input to `arcade init`: the message says what and what to do; nothing was written."""


def webhook_secret_problem(value):
    """None if `value` looks like a Stripe webhook signing secret, else what is wrong (never the value)."""
    if not value:
        return "missing"
    if not value.startswith("whsec_"):
        return "does not start with whsec_ (is it the API key, or the endpoint id we_...?)"
    if not WEBHOOK_SECRET.match(value):
        return "starts with whsec_ but is %d characters with some not allowed: copy it again" % len(value)
    return None


def api_key_mode(value):
    """'test' or 'live' for a Stripe secret or restricted key; None if it is not shaped like one."""
    m = API_KEY.match(value or "")
    return m.group(2) if m else None


def check_public_url(url, insecure=False):
    """The public URL without a trailing slash; KitError unless it is https://host[:port] (or http://
    with `insecure`, for tests on loopback)."""
    try:
        parts = urlsplit(url or "")
        parts.port
    except ValueError as e:
        raise KitError("--public-url %r is not a URL (%s): give e.g. https://pay.example.com" % (url, e))
    if parts.scheme != "https" and not (insecure and parts.scheme == "http"):
        raise KitError("--public-url %r is not https://: Stripe only sends webhooks to HTTPS endpoints and phones "
                       "warn on plain http. Give e.g. https://pay.example.com (Caddy gets its certificate)" % (url,))
    if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise KitError("--public-url %r must be just the scheme and host name, e.g. https://pay.example.com "
                       "(the relay's paths are added by the proxy configuration)" % (url,))
    if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", parts.hostname):
        raise KitError("--public-url %r: host name %r has characters a DNS name cannot have" % (url, parts.hostname))
    return "%s://%s" % (parts.scheme, parts.netloc)


class Settings:
    """What the kit is made from; defaults are docs/deploy.md's layout."""

    def __init__(self, public_url, dir="/etc/arcade", data_dir="/var/lib/arcade", user="arcade",
                 arcade_bin=None, relay_port=8000, mqtt_port=1883, mqtt_host="127.0.0.1", name="Arcade",
                 tz="UTC", insecure=False, broker_user="mosquitto"):
        self.public_url = check_public_url(public_url, insecure)
        self.insecure = insecure
        self.dir = Path(dir).absolute()
        self.data_dir = Path(data_dir).absolute()
        if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", user):
            raise KitError("--user %r is not a system user name (lower case letters, digits, - and _)" % (user,))
        self.user = user
        self.broker_user = broker_user
        self.arcade_bin = Path(arcade_bin).absolute() if arcade_bin else default_arcade_bin()
        for label, port in (("--relay-port", relay_port), ("--mqtt-port", mqtt_port)):
            if not isinstance(port, int) or not 1 <= port <= 65535:
                raise KitError("%s %r is not a TCP port (1-65535)" % (label, port))
        self.relay_port, self.mqtt_port, self.mqtt_host = relay_port, mqtt_port, mqtt_host
        if not _NAME_VALUE.match(name or ""):
            raise KitError("--name %r: give 1 to 80 characters without quotes, backslashes, $ or `" % (name,))
        self.name = name
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise KitError("--tz %r is not a time zone: use an IANA name such as Europe/London" % (tz,))
        self.tz = tz
        for label, path in (("--dir", self.dir), ("--data-dir", self.data_dir), ("the arcade program", self.arcade_bin)):
            if not _PLAIN_VALUE.match(str(path)):
                raise KitError("%s %s: use a path of letters, digits and ./_- only (it goes into systemd and "
                               "proxy configuration unquoted)" % (label, path))

    @property
    def host(self):
        return urlsplit(self.public_url).hostname

    @property
    def db_path(self):
        return self.data_dir / "arcade.db"


def default_arcade_bin():
    """The `arcade` program of the Python environment running this (the virtualenv it was installed in)."""
    import sys
    return Path(sys.executable).absolute().parent / "arcade"


Secrets = namedtuple("Secrets", "webhook_secret api_key mqtt_password")


def check_secrets(webhook_secret, api_key):
    problem = webhook_secret_problem(webhook_secret)
    if problem:
        raise KitError("the Stripe webhook signing secret %s: copy it from Stripe's dashboard (Developers > "
                       "Webhooks > your endpoint > Signing secret), it starts with whsec_" % problem)
    if api_key and not api_key_mode(api_key):
        raise KitError("the Stripe API key is not shaped like one (sk_test_..., sk_live_..., rk_test_... or "
                       "rk_live_...): copy it from Stripe's dashboard (Developers > API keys), or leave it empty")


# -- the files -----------------------------------------------------------------------------------

def env_file(s, sec, relay_login):
    mqtt_url = "mqtt://%s:%s@%s:%d" % (quote(relay_login[0], safe=""), quote(relay_login[1], safe=""), s.mqtt_host,
                                       s.mqtt_port)
    lines = [
        "# arcade-pay relay settings, written by `arcade init` (README, docs/deploy.md). Holds secrets: keep it",
        "# mode 0600. Read by systemd (EnvironmentFile=) and by `arcade` commands run in %s." % s.data_dir,
        "ARCADE_DB=%s" % s.db_path,
        "MQTT_URL=%s" % mqtt_url,
        "STRIPE_WEBHOOK_SECRET=%s" % sec.webhook_secret,
        "STRIPE_API_KEY=%s" % (sec.api_key or ""),
        "ARCADE_PUBLIC_URL=%s" % s.public_url,
        "ARCADE_PROXY_HOPS=1",
        "# the operator's console at /admin on the relay itself, behind the same HTTPS (accounts: arcade admin add)",
        "ARCADE_CONSOLE=1",
        'ARCADE_NAME="%s"' % s.name,
        "ARCADE_TZ=%s" % s.tz,
    ]
    return "\n".join(lines) + "\n"


def relay_unit(s):
    env = s.dir / ENV_NAME
    return """\
# arcade-pay relay (written by `arcade init`; docs/deploy.md). Install: systemctl link %(unit)s
[Unit]
Description=arcade-pay relay (Stripe webhook -> ledger -> MQTT credits)
Documentation=file://%(dir)s
After=network-online.target mosquitto.service
Wants=network-online.target

[Service]
Type=simple
User=%(user)s
Group=%(user)s
EnvironmentFile=%(env)s
WorkingDirectory=%(data)s
ExecStart=%(bin)s relay --host 127.0.0.1 --port %(port)d
Restart=on-failure
RestartSec=2
TimeoutStopSec=30
UMask=0077
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
ReadWritePaths=%(data)s
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
ProtectProc=invisible
PrivateUsers=yes
PrivateMounts=yes
CapabilityBoundingSet=
AmbientCapabilities=

[Install]
WantedBy=multi-user.target
""" % {"unit": s.dir / UNIT_NAME, "dir": s.dir, "user": s.user, "env": env, "data": s.data_dir,
       "bin": s.arcade_bin, "port": s.relay_port}


def broker_dropin(s):
    return """\
# Drop-in for Debian's mosquitto.service (written by `arcade init`; docs/deploy.md).
# Install: ln -s %(path)s /etc/systemd/system/mosquitto.service.d/arcade.conf
[Unit]
# the relay keeps its session in the broker: start the broker first and keep it up
Before=arcade-relay.service
After=network-online.target
Wants=network-online.target

[Service]
Restart=on-failure
RestartSec=2
LimitNOFILE=4096
NoNewPrivileges=yes
ProtectSystem=full
ProtectHome=yes
PrivateTmp=yes
""" % {"path": s.dir / BROKER_DROPIN}


def _public_matchers():
    return list(PUBLIC_EXACT) + [p + "*" for p in PUBLIC_PREFIX]


def caddyfile(s):
    return """\
# arcade-pay behind Caddy (written by `arcade init`; docs/deploy.md). Caddy gets and renews the
# certificate for %(host)s by itself (ports 80 and 443 open, the DNS name pointing here).
# Only the relay's public paths are proxied; /healthz and everything else answer 404.
%(site)s {
	encode gzip
	@arcade_public path %(paths)s
	handle @arcade_public {
		reverse_proxy 127.0.0.1:%(port)d
	}
	handle {
		respond "Not found" 404
	}
	log {
		output stderr
	}
}
""" % {"host": s.host, "site": s.public_url, "paths": " ".join(_public_matchers()), "port": s.relay_port}


def nginx_conf(s, certificate=None, certificate_key=None, http_port=80, https_port=443):
    """A server block for /etc/nginx/sites-available (the alternative to Caddy). Certificates: certbot's
    paths by default (`certbot certonly --webroot -w /var/www/html -d HOST`)."""
    cert = certificate or "/etc/letsencrypt/live/%s/fullchain.pem" % s.host
    key = certificate_key or "/etc/letsencrypt/live/%s/privkey.pem" % s.host
    exact = "\n".join("\tlocation = %s { proxy_pass http://arcade_relay; }" % p for p in PUBLIC_EXACT)
    prefix = "\n".join("\tlocation ^~ %s { proxy_pass http://arcade_relay; }" % p for p in PUBLIC_PREFIX)
    # nginx answers /pay with a redirect to /pay/ when only the prefix location exists: 404, like Caddy
    prefix += "".join("\n\tlocation = %s { return 404; }" % p.rstrip("/") for p in PUBLIC_PREFIX
                      if p.rstrip("/") not in PUBLIC_EXACT)
    return """\
# arcade-pay behind nginx (written by `arcade init`; docs/deploy.md), instead of the Caddyfile.
# Install: ln -s %(path)s /etc/nginx/sites-enabled/arcade.conf ; the certificate from certbot.
upstream arcade_relay {
	server 127.0.0.1:%(port)d;
}

server {
	listen %(http)d;
	listen [::]:%(http)d;
	server_name %(host)s;
	location ^~ /.well-known/acme-challenge/ { root /var/www/html; }
	location / { return 301 https://$host$request_uri; }
}

server {
	listen %(https)d ssl;
	listen [::]:%(https)d ssl;
	server_name %(host)s;
	ssl_certificate %(cert)s;
	ssl_certificate_key %(key)s;
	ssl_protocols TLSv1.2 TLSv1.3;
	client_max_body_size 512k;
	proxy_set_header Host $host;
	proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
	proxy_set_header X-Forwarded-Proto $scheme;
	proxy_set_header X-Forwarded-Host $host;
	# only the relay's public paths; /healthz and everything else: 404
%(exact)s
%(prefix)s
	location / { return 404; }
}
""" % {"path": s.dir / NGINX_NAME, "port": s.relay_port, "host": s.host, "cert": cert, "key": key,
       "exact": exact, "prefix": prefix, "http": http_port, "https": https_port}


def generate(s, sec):
    """{relative name: File} for the whole kit."""
    broker, relay_login = broker_conf.broker_files(s, sec)
    files = {
        ENV_NAME: File(env_file(s, sec, relay_login), 0o600, "user", True),
        UNIT_NAME: File(relay_unit(s), 0o644, "root", False),
        BROKER_DROPIN: File(broker_dropin(s), 0o644, "root", False),
        CADDYFILE: File(caddyfile(s), 0o644, "root", False),
        NGINX_NAME: File(nginx_conf(s), 0o644, "root", False),
    }
    files.update(broker)
    return files


# -- writing ------------------------------------------------------------------------------------

def read_env(path):
    """KEY=value pairs of an environment file (dotenv, as the relay reads it)."""
    from dotenv import dotenv_values
    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def kept_secrets(dir):
    """The secrets of an earlier kit in `dir` (None if it has no environment file): `--force` keeps them."""
    path = Path(dir) / ENV_NAME
    if not path.exists():
        return None
    old = read_env(path)
    try:
        password = unquote(urlsplit(old.get("MQTT_URL", "")).password or "")
    except ValueError:
        password = ""
    return Secrets(old.get("STRIPE_WEBHOOK_SECRET") or "", old.get("STRIPE_API_KEY") or "",
                   password or new_mqtt_password())


def new_mqtt_password():
    return secrets.token_urlsafe(24)


def existing(dir, files):
    return sorted(name for name in files if (Path(dir) / name).exists())


def _ids(owner, s):
    """(uid, gid) for an owner role, or None when we can't or needn't chown (not root, user missing)."""
    if os.geteuid() != 0 or owner == "root":
        return (0, 0) if os.geteuid() == 0 else None
    name = s.user if owner == "user" else s.broker_user
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise KitError("the system user %r does not exist: create it first (docs/deploy.md: adduser --system "
                       "--group --home %s %s)" % (name, s.data_dir, name) if owner == "user" else
                       "the system user %r does not exist: install mosquitto first (apt-get install mosquitto)"
                       % (name,))
    return pw.pw_uid, grp.getgrgid(pw.pw_gid).gr_gid


def write_kit(s, files, force=False, keep=()):
    """Write `files` under s.dir. Refuses (KitError, nothing written) when any exists, unless `force`;
    names in `keep` (secret files that exist) are never rewritten. Every file is written to a temp
    file with its final mode and owner, then renamed into place. Returns [(name, mode, owner, action)]."""
    there = existing(s.dir, files)
    if there and not force:
        raise KitError("%s already has %s: run with --force to rewrite the configuration (secrets already "
                       "there are kept, never replaced)" % (s.dir, ", ".join(there)))
    ids = {name: _ids(f.owner, s) for name, f in files.items()}   # all owner errors before writing anything
    s.dir.mkdir(parents=True, exist_ok=True)
    os.chmod(s.dir, 0o755)
    done = []
    for name, f in sorted(files.items()):
        path = s.dir / name
        if name in keep and path.exists():
            done.append((name, f.mode, f.owner, "kept"))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix="." + path.name + ".")
        try:
            if ids[name] is not None:
                os.fchown(fd, *ids[name])
            os.fchmod(fd, f.mode)
            with os.fdopen(fd, "w") as out:
                out.write(f.content)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        done.append((name, f.mode, f.owner, "rewritten" if name in there else "written"))
    return done


def prepare_data_dir(s):
    """Create the data directory 0700, owned by the relay's user when we are root, with `.env` there
    pointing at the environment file (the `arcade` commands read ./.env)."""
    ids = _ids("user", s)
    _ids("broker", s)                    # both users exist before anything is made
    s.data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(s.data_dir, 0o700)
    if ids is not None:
        os.chown(s.data_dir, *ids)
    link = s.data_dir / ".env"
    target = s.dir / ENV_NAME
    if link.is_symlink() and os.readlink(link) == str(target):
        return
    if link.exists() or link.is_symlink():
        raise KitError("%s exists and is not a link to %s: move it away (it may hold settings you want to "
                       "keep) and run again" % (link, target))
    os.symlink(target, link)


def own_ledger(s):
    """The ledger `generate` may have created: 0600 and the relay's user's (when we are root)."""
    ids = _ids("user", s)
    for suffix in ("", "-wal", "-shm"):
        path = str(s.db_path) + suffix
        if os.path.exists(path):
            os.chmod(path, 0o600)
            if ids is not None:
                os.chown(path, *ids)


def stamp():
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
