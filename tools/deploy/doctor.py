"""`arcade doctor`: check a deployment, one line per check: ok, or what is wrong and how to fix it.

Read only: the database is opened read only (never created or migrated), the broker is logged into
with a throwaway client id (never the relay's, which would disconnect it), Stripe gets one list call.
No check prints a secret: secrets are described by their shape and length only.
"""
import email.utils
import glob
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import threading
import time
from collections import namedtuple
from urllib.parse import urlsplit

from relay import backends
from relay.config import ConfigError, mask_url, parse_mqtt_url, parse_mqtt_urls
from relay.ledger import LedgerError, StorageError, inspect_database
from tools.deploy import kit

Check = namedtuple("Check", "name status detail fix")   # status: ok | FAIL | skip

# What the relay acts on (relay/webhook.py): the webhook endpoint must send these.
EVENTS = ("checkout.session.completed", "checkout.session.async_payment_succeeded",
          "checkout.session.async_payment_failed", "checkout.session.expired")
CLOCK_SKEW_MAX = 30.0      # seconds; Stripe's signature tolerance is 300 s, cabinets' ts is informational
_CLI_SECRET = re.compile(r"whsec_[0-9a-f]{64}\Z")   # the shape `stripe listen` prints (test mode only)


def ok(name, detail):
    return Check(name, "ok", detail, "")


def fail(name, detail, fix):
    return Check(name, "FAIL", detail, fix)


def skip(name, detail):
    return Check(name, "skip", detail, "")


class Doctor:
    """One run over `settings` (the relay's KEY=value settings, as its environment file has them)."""

    def __init__(self, settings, env_path=None, provisioned=None, offline=False, min_free_mb=200,
                 use_timedatectl=True, timeout=5.0, broker_confs=None):
        self.cfg = dict(settings)
        self.env_path = env_path
        self.provisioned = provisioned
        self.offline = offline
        self.min_free_mb = min_free_mb
        self.use_timedatectl = use_timedatectl
        self.timeout = timeout
        self.broker_confs = broker_confs   # broker configuration files to read (default: the kit's, Debian's)
        self.stripe_date = None        # the Date header of Stripe's answer, for the clock check

    def run(self):
        checks = [self.settings_file(), self.webhook_secret(), self.api_key(), self.public_url()]
        checks += self.database()
        checks += self.broker()
        checks.append(self.cabinets())
        checks.append(self.dispatcher())
        checks.append(self.stripe_api())     # before the clock: it may bring Stripe's Date header
        checks.append(self.clock())
        checks.append(self.disk())
        return checks

    # -- settings ---------------------------------------------------------------------------

    def settings_file(self):
        name = "settings file"
        if not self.env_path:
            return skip(name, "no environment file given (--env): checked the settings of this shell")
        try:
            st = os.stat(self.env_path)
        except OSError as e:
            return fail(name, "cannot read %s (%s)" % (self.env_path, e.strerror),
                        "run `arcade init --public-url https://YOUR.HOST` (docs/deploy.md step 5) or pass --env")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            return fail(name, "%s is mode %04o: other users on this machine can read the Stripe secrets"
                        % (self.env_path, mode), "chmod 600 %s (and rotate the secrets if others had access)"
                        % self.env_path)
        return ok(name, "%s, mode %04o" % (self.env_path, mode))

    def webhook_secret(self):
        name = "webhook secret"
        value = self.cfg.get("STRIPE_WEBHOOK_SECRET") or ""
        problem = kit.webhook_secret_problem(value)
        if problem:
            return fail(name, "STRIPE_WEBHOOK_SECRET %s: the relay cannot verify Stripe's webhooks" % problem,
                        "put the endpoint's signing secret (Stripe dashboard > Developers > Webhooks > your endpoint "
                        "> Signing secret, whsec_...) in %s" % (self.env_path or "the environment"))
        mode = kit.api_key_mode(self.cfg.get("STRIPE_API_KEY") or "")
        if mode == "live" and _CLI_SECRET.match(value):
            return fail(name, "STRIPE_WEBHOOK_SECRET has the shape `stripe listen` prints (test mode, forwarding "
                        "to one machine) but STRIPE_API_KEY is a live key",
                        "use the signing secret of the live-mode endpoint (dashboard, live mode > Webhooks)")
        return ok(name, "set, whsec_ and %d characters" % (len(value) - 6))

    def api_key(self):
        name = "Stripe API key"
        value = self.cfg.get("STRIPE_API_KEY") or ""
        if not value:
            return skip(name, "STRIPE_API_KEY not set: the pay page sells only through Payment Links and "
                        "reconciliation with Stripe is off")
        mode = kit.api_key_mode(value)
        if not mode:
            return fail(name, "STRIPE_API_KEY is not shaped like a Stripe secret key (%d characters, does not "
                        "match sk_test_/sk_live_/rk_test_/rk_live_)" % len(value),
                        "copy the secret key from Stripe's dashboard > Developers > API keys into %s"
                        % (self.env_path or "the environment"))
        return ok(name, "%s mode (%s_...)" % (mode, value[:2]))

    def public_url(self):
        name = "public URL"
        url = self.cfg.get("ARCADE_PUBLIC_URL") or ""
        if not url:
            return fail(name, "ARCADE_PUBLIC_URL is not set: QR stickers and Stripe's return pages need it",
                        "set ARCADE_PUBLIC_URL=https://YOUR.HOST in %s" % (self.env_path or "the environment"))
        if urlsplit(url).scheme != "https":
            return fail(name, "ARCADE_PUBLIC_URL=%s is not https: Stripe sends webhooks only to HTTPS endpoints"
                        % url, "serve the relay through Caddy (docs/deploy.md) and set ARCADE_PUBLIC_URL=https://...")
        return ok(name, url)

    # -- database ---------------------------------------------------------------------------

    def database(self):
        name = "database"
        path = self.cfg.get("ARCADE_DB") or ""
        self._db_info = None
        if not path:
            return [fail(name, "ARCADE_DB is not set", "set ARCADE_DB=/var/lib/arcade/arcade.db")]
        if backends.is_postgres(path):
            return [skip(name, "PostgreSQL (%s): file mode and schema checks are for SQLite; `arcade db upgrade` "
                         "reports its schema" % backends.redact(path))]
        try:
            info = inspect_database(path)
        except LedgerError as e:
            return [fail(name, str(e), "start the relay once (systemctl start arcade-relay) to create it, or "
                         "`arcade restore BACKUP` to put a backup there; check ARCADE_DB")]
        except StorageError as e:
            return [fail(name, "cannot read %s: %s" % (path, e), "check the file and its directory's owner "
                         "(chown -R arcade: /var/lib/arcade)")]
        self._db_info = info
        out = []
        st = os.stat(path)
        mode = stat.S_IMODE(st.st_mode)
        problems = []
        if mode & 0o077:
            problems.append(fail(name, "%s is mode %04o: others can read the cabinets' secrets" % (path, mode),
                                 "chmod 600 %s*" % path))
        folder = os.path.dirname(os.path.abspath(path))
        if not (os.access(path, os.W_OK) and os.access(folder, os.W_OK)):
            problems.append(fail(name, "%s (or its directory) is not writable by %s" % (path, _whoami()),
                                 "chown -R arcade: %s" % folder))
        if info["missing"]:
            problems.append(fail("schema", "%s lacks %d migration(s): %s" % (path, len(info["missing"]),
                                                                           ", ".join(info["missing"])),
                                 "arcade db upgrade (it takes a backup first), then systemctl restart arcade-relay"))
        if problems:
            return problems
        out.append(ok(name, "%s, mode %04o, ledger %s, %d cabinet(s)" % (path, mode, info["ledger_id"][:8],
                                                                         len(info["cabinets"]))))
        out.append(ok("schema", "current (version %d, %d migration(s))" % (info["schema_version"],
                                                                          len(info["migrations"]))))
        return out

    # -- broker -----------------------------------------------------------------------------

    def broker(self):
        name = "broker login"
        url = self.cfg.get("MQTT_URL") or ""
        try:
            targets = parse_mqtt_urls(url)
        except ConfigError as e:
            return [fail(name, str(e), "set MQTT_URL=mqtt://arcade-relay:PASSWORD@127.0.0.1:1883")]
        takeover = self.clientid_is_username()
        if takeover:
            return [skip(name, "%s has use_username_as_clientid: a login as the relay (or a cabinet) would take over "
                         "its session, so the login checks are not run; check the relay's log for 'connected'"
                         % takeover), skip("cabinet isolation", "not probed, for the same reason")]
        # every node of a cluster (MQTT_URL lists them): a dead or misconfigured one is where the
        # relay and the cabinets go when the node they are on fails
        for i, target in enumerate(targets):
            node = mask_url(_url_of(target)) + (" (node %d of %d)" % (i + 1, len(targets)) if len(targets) > 1 else "")
            got = mqtt_try(target, timeout=self.timeout)
            if got["error"]:
                return [fail(name, "%s: %s" % (node, got["error"]),
                             "start the broker (systemctl start mosquitto; journalctl -u mosquitto says why it "
                             "stopped), or take the node out of MQTT_URL")]
            if not got["connected"]:
                return [fail(name, "%s refused the relay's login: %s" % (node, got["refused"]),
                             "the password in MQTT_URL and the broker's password_file differ: run `arcade init "
                             "--force` with the same --public-url (it keeps the secrets and rewrites "
                             "mosquitto.passwd), then systemctl reload mosquitto")]
            anon = mqtt_try(dict(target, username=None, password=None), timeout=self.timeout)
            if anon["connected"]:
                return [fail(name, "%s lets a client in without a password" % node,
                             "allow_anonymous false and a password_file in the broker's configuration (the "
                             "mosquitto.conf `arcade init` wrote, linked into /etc/mosquitto/conf.d/), then "
                             "systemctl restart mosquitto")]
        where = mask_url(url) if len(targets) == 1 else "all %d nodes of %s" % (len(targets), mask_url(url))
        return [ok(name, "%s accept%s the relay's login, refuse%s anonymous"
                   % ((where,) + (("s", "s") if len(targets) == 1 else ("", "")))),
                self.cabinet_isolation(targets[0])]

    def clientid_is_username(self):
        """The broker configuration file that makes a login's user name its client id, if one is readable
        (the kit's, Debian's): there a probe with the relay's or a cabinet's login would replace that
        client's connection, and with a clean session discard its queued messages."""
        paths = list(self.broker_confs) if self.broker_confs is not None else (
            ([os.path.join(os.path.dirname(self.env_path), "mosquitto.conf")] if self.env_path else []) +
            ["/etc/mosquitto/mosquitto.conf"] + sorted(glob.glob("/etc/mosquitto/conf.d/*.conf")))
        for path in paths:
            try:
                with open(path) as f:
                    if any(line.split()[:2] == ["use_username_as_clientid", "true"] for line in f):
                        return path
            except OSError:
                continue
        return None

    def _provisioned(self):
        """{cabinet id: broker URL} from the provisioning output (DIR/<id>/config.json)."""
        out = {}
        for path in sorted(glob.glob(os.path.join(self.provisioned, "*", "config.json"))):
            try:
                with open(path) as f:
                    cfg = json.load(f)
                out[str(cfg["cabinet"])] = str(cfg.get("broker") or "")
            except (OSError, ValueError, KeyError, TypeError):
                out[os.path.basename(os.path.dirname(path))] = None
        return out

    def cabinet_isolation(self, relay_target):
        name = "cabinet isolation"
        if not self.provisioned:
            return skip(name, "no provisioning output (--provisioned DIR): cannot log in as a cabinet")
        cabs = {k: v for k, v in self._provisioned().items() if v}
        if not cabs:
            return skip(name, "no readable DIR/<id>/config.json under %s" % self.provisioned)
        prefix = self.cfg.get("ARCADE_TOPIC_PREFIX") or "arcade"
        cab, url = sorted(cabs.items())[0]
        try:
            target = parse_mqtt_url(url)
        except ConfigError as e:
            return fail(name, "cabinet %s's broker URL: %s" % (cab, e), "provision it again (arcade provision)")
        target = dict(target, host=relay_target["host"], port=relay_target["port"], tls=relay_target["tls"])
        if target["username"] == relay_target["username"]:
            return fail(name, "cabinet %s logs into the broker as the relay (%s): any cabinet's flash holds the "
                        "login that can send credits to every cabinet" % (cab, target["username"]),
                        "give each cabinet its own broker login and ACL (per-cabinet broker users), then "
                        "provision and flash again")
        got = isolation_probe(relay_target, target, prefix, timeout=self.timeout)
        if got["error"]:
            return fail(name, "cabinet %s: %s" % (cab, got["error"]),
                        "its broker login is missing from the broker's password file (or the broker stopped): "
                        "regenerate the broker configuration and reload mosquitto")
        leaks = []
        if got["cab_wrote"]:
            leaks.append("publish on another cabinet's topics")
        if got["cab_read"]:
            leaks.append("read other cabinets' topics (%s/+/config)" % prefix)
        if leaks:
            return fail(name, "cabinet %s's login may %s: the relay's topics are open to every cabinet"
                        % (cab, " and ".join(leaks)),
                        "the broker needs an acl_file limiting each cabinet to its own topics; reload mosquitto")
        return ok(name, "cabinet %s's login can neither publish on nor read another cabinet's topics" % cab)

    # -- cabinets, dispatcher ---------------------------------------------------------------

    def cabinets(self):
        name = "cabinets"
        if not self.provisioned:
            return skip(name, "no provisioning output (--provisioned DIR) to compare with the database")
        if self._db_info is None:
            return skip(name, "the database could not be read (see above)")
        provisioned = set(self._provisioned())
        registered = set(self._db_info["cabinets"])
        unregistered, unprovisioned = sorted(provisioned - registered), sorted(registered - provisioned)
        if unregistered:
            return fail(name, "provisioned in %s but not in the database: %s" % (self.provisioned, ", ".join(unregistered)),
                        "arcade cabinet add ID --price ... for each (or remove its folder if the board is retired)")
        if unprovisioned:
            return fail(name, "in the database but never provisioned into %s: %s" % (self.provisioned,
                                                                                  ", ".join(unprovisioned)),
                        "arcade provision ID --board ... --out %s, then flash it (docs/flashing.md)" % self.provisioned)
        return ok(name, "%d provisioned, all registered" % len(provisioned))

    def dispatcher(self):
        name = "dispatcher"
        if backends.is_postgres(self.cfg.get("ARCADE_DB") or ""):
            return skip(name, "PostgreSQL: the dispatcher's lock is an advisory lock in the database, not checked here")
        path = (self.cfg.get("ARCADE_DB") or "") + ".dispatcher.lock"
        holders = lock_holders(path)
        if holders is None:
            return skip(name, "cannot read /proc/locks on this system")
        if not holders:
            return fail(name, "no process holds %s: no relay is delivering credits" % path,
                        "systemctl start arcade-relay (journalctl -u arcade-relay says why it stopped)")
        if len(holders) > 1:
            return fail(name, "%d processes hold %s: %s" % (len(holders), path, ", ".join(map(str, holders))),
                        "stop all but one relay on this database")
        return ok(name, "held by one process (pid %d)" % holders[0])

    # -- Stripe, clock, disk ----------------------------------------------------------------

    def stripe_api(self):
        name = "Stripe API"
        key = self.cfg.get("STRIPE_API_KEY") or ""
        if self.offline:
            return skip(name, "skipped (--offline)")
        if not kit.api_key_mode(key):
            return skip(name, "no usable STRIPE_API_KEY to call Stripe with")
        import stripe
        kwargs = {"max_network_retries": 0, "http_client": stripe.new_default_http_client(timeout=self.timeout)}
        if self.cfg.get("STRIPE_API_BASE"):
            kwargs["base_addresses"] = {"api": self.cfg["STRIPE_API_BASE"].rstrip("/")}
        client = stripe.StripeClient(key, **kwargs)
        try:
            listed = client.v1.webhook_endpoints.list({"limit": 100})
        except stripe.AuthenticationError:
            return fail(name, "Stripe refused the API key (revoked, or a typo)",
                        "create or roll a key in the dashboard > Developers > API keys and put it in %s"
                        % (self.env_path or "the environment"))
        except stripe.PermissionError:
            return fail(name, "the restricted key may not list webhook endpoints",
                        "give the key read access to Webhook Endpoints (and write to Checkout Sessions)")
        except stripe.APIConnectionError:
            return skip(name, "Stripe is unreachable from here (offline?): not checked")
        except stripe.StripeError as e:
            return fail(name, "Stripe answered an error: %s" % _stripe_message(e), "try again; see status.stripe.com")
        headers = getattr(getattr(listed, "last_response", None), "headers", None) or {}
        self.stripe_date = headers.get("Date") or headers.get("date")
        mode = kit.api_key_mode(key)
        url = (self.cfg.get("ARCADE_PUBLIC_URL") or "").rstrip("/") + "/stripe/webhook"
        endpoints = [ep.to_dict() for ep in listed.data]
        mine = [ep for ep in endpoints if ep.get("url") == url]
        if not mine:
            return fail(name, "no %s-mode webhook endpoint for %s (%d other endpoint(s))" % (mode, url, len(endpoints)),
                        "dashboard (%s mode) > Developers > Webhooks > Add endpoint: %s with the events %s; its "
                        "signing secret goes into STRIPE_WEBHOOK_SECRET" % (mode, url, ", ".join(EVENTS)))
        ep = mine[0]
        if bool(ep.get("livemode")) != (mode == "live"):
            return fail(name, "the endpoint for %s is %s mode, the API key %s mode" % (
                url, "live" if ep.get("livemode") else "test", mode),
                "use the key and the endpoint signing secret of the same mode")
        if ep.get("status") != "enabled":
            return fail(name, "the webhook endpoint for %s is %s" % (url, ep.get("status")),
                        "enable it in the dashboard > Developers > Webhooks")
        events = set(ep.get("enabled_events") or ())
        missing = [e for e in EVENTS if e not in events and "*" not in events]
        if missing:
            return fail(name, "the webhook endpoint for %s does not send %s" % (url, ", ".join(missing)),
                        "dashboard > Developers > Webhooks > the endpoint > Select events: add %s" % ", ".join(missing))
        return ok(name, "the key works (%s mode); endpoint %s enabled with the relay's events" % (mode, url))

    def clock(self):
        name = "clock"
        if self.use_timedatectl and shutil.which("timedatectl"):
            try:
                done = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
                                      capture_output=True, text=True, timeout=self.timeout)
                answer = done.stdout.strip() if done.returncode == 0 else ""
            except (OSError, subprocess.SubprocessError):
                answer = ""
            if answer == "yes":
                return ok(name, "synchronised (timedatectl: NTPSynchronized=yes)")
            if answer == "no":
                return fail(name, "not synchronised (timedatectl: NTPSynchronized=no): Stripe's webhook "
                            "signatures carry a time and are refused past 5 minutes of difference",
                            "timedatectl set-ntp true (apt-get install systemd-timesyncd if it says NTP is not supported)")
        if self.stripe_date:
            try:
                theirs = email.utils.parsedate_to_datetime(self.stripe_date).timestamp()
            except (TypeError, ValueError):
                return skip(name, "Stripe's Date header is unreadable: not checked")
            skew = time.time() - theirs
            if abs(skew) > CLOCK_SKEW_MAX:
                return fail(name, "this machine's clock is %.0f s %s Stripe's: webhook signatures are refused "
                            "past 300 s" % (abs(skew), "ahead of" if skew > 0 else "behind"), "timedatectl set-ntp true (or install chrony), then check again")
            return ok(name, "within %.0f s of Stripe's clock" % max(1.0, abs(skew)))
        return skip(name, "no timedatectl answer and no Stripe answer to compare with: not checked")

    def disk(self):
        name = "disk space"
        folder = os.path.dirname(os.path.abspath(self.cfg.get("ARCADE_DB") or "."))
        while folder and not os.path.isdir(folder):
            folder = os.path.dirname(folder)
        usage = shutil.disk_usage(folder)
        free_mb = usage.free // (1024 * 1024)
        if free_mb < self.min_free_mb:
            return fail(name, "%d MB free on %s (under %d MB): the ledger and its backups stop being written "
                        "when it fills" % (free_mb, folder, self.min_free_mb),
                        "free space (journalctl --vacuum-size=100M; old backups) or grow the disk")
        return ok(name, "%d MB free on %s" % (free_mb, folder))


def _url_of(target):
    """A parsed broker target written back as a URL (for messages, through mask_url)."""
    login = ""
    if target["username"] is not None:
        login = target["username"] + (":" + target["password"] if target["password"] is not None else "") + "@"
    return "%s://%s%s:%d" % ("mqtts" if target["tls"] else "mqtt", login, target["host"], target["port"])


def _whoami():
    import pwd
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return "uid %d" % os.geteuid()


def _stripe_message(e):
    return getattr(e, "user_message", None) or e.__class__.__name__


def lock_holders(path):
    """Pids holding a lock on `path` (from /proc/locks), [] if none or no such file, None if unknown."""
    try:
        st = os.stat(path)
    except OSError:
        return []
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    want = "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    pids = []
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF" (blocked waiters have "->" after the number)
        if "->" in parts:
            continue
        if len(parts) >= 6 and parts[5] == want:
            pid = int(parts[4])
            if pid not in pids:
                pids.append(pid)
    return pids


def mqtt_try(target, subscribe=None, timeout=5.0):
    """Log into the broker (throwaway client id, clean session) and optionally subscribe QoS 1 to one
    filter. Returns {connected, refused, granted, error}."""
    import paho.mqtt.client as mqtt
    out = {"connected": False, "refused": None, "granted": None, "error": None}
    done = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="arcade-doctor-" + secrets.token_hex(4),
                         clean_session=True)
    if target["username"] is not None:
        client.username_pw_set(target["username"], target["password"])
    if target["tls"]:
        client.tls_set()

    def on_connect(c, userdata, flags, rc, props):
        if rc.is_failure:
            out["refused"] = str(rc)
            done.set()
        elif subscribe:
            out["connected"] = True
            c.subscribe(subscribe, qos=1)
        else:
            out["connected"] = True
            done.set()

    def on_subscribe(c, userdata, mid, rcs, props):
        out["granted"] = not any(r.is_failure for r in rcs)
        done.set()

    client.on_connect, client.on_subscribe = on_connect, on_subscribe
    try:
        client.connect(target["host"], target["port"], keepalive=max(10, int(timeout * 2)))
    except (OSError, ValueError) as e:
        out["error"] = "cannot connect to %s:%d (%s)" % (target["host"], target["port"], e)
        return out
    client.loop_start()
    try:
        if not done.wait(timeout):
            out["error"] = out["error"] or "no answer from %s:%d within %.0f s" % (target["host"], target["port"], timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    return out


class _Probe:
    """A throwaway paho client that records what it receives and signals acks, in socket order."""

    def __init__(self, target, timeout):
        import paho.mqtt.client as mqtt
        self.timeout = timeout
        self.got = []
        self.acks = set()
        self.refused = None
        self._cond = threading.Condition()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="arcade-doctor-" + secrets.token_hex(4),
                             clean_session=True)
        if target["username"] is not None:
            self.c.username_pw_set(target["username"], target["password"])
        if target["tls"]:
            self.c.tls_set()
        self.c.on_connect = self._on_connect
        self.c.on_message = lambda c, u, msg: self._note(("msg", msg.payload))
        self.c.on_subscribe = lambda c, u, mid, rcs, props: self._note(("ack", mid))
        self.c.on_publish = lambda c, u, mid, rc, props: self._note(("ack", mid))
        self.c.connect(target["host"], target["port"], keepalive=max(10, int(timeout * 2)))
        self.c.loop_start()
        if not self._wait(lambda: ("connected", None) in self.got or self.refused):
            raise OSError("no CONNACK from %s:%d within %.0f s" % (target["host"], target["port"], timeout))
        if self.refused:
            raise PermissionError("login refused: %s" % self.refused)

    def _on_connect(self, c, u, flags, rc, props):
        if rc.is_failure:
            self.refused = str(rc)
            self._note(None)
        else:
            self._note(("connected", None))

    def _note(self, item):
        with self._cond:
            if item is not None:
                self.got.append(item)
            self._cond.notify_all()

    def _wait(self, predicate):
        with self._cond:
            return self._cond.wait_for(predicate, self.timeout)

    def acked(self, info_or_mid):
        mid = info_or_mid[1] if isinstance(info_or_mid, tuple) else info_or_mid.mid
        if not self._wait(lambda: ("ack", mid) in self.got):
            raise OSError("the broker did not acknowledge within %.0f s" % self.timeout)

    def received(self, payload):
        return ("msg", payload) in self.got

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def isolation_probe(relay_target, cab_target, prefix, timeout=5.0):
    """Can a cabinet's login publish on, or read, another cabinet's topics? Uses the config topic of a
    cabinet that does not exist (<prefix>/doctor-probe-<random>/config): the relay's login may write and
    read config topics (so it can send a marker and see the probe), no cabinet listens to it. Event ordered, no sleep:
    the broker handles each client's packets in order, so the relay-side subscriber sees the cabinet's
    probe (if let through) before the relay's own marker, and the cabinet sees the marker (if let
    through) before the SUBACK of a later subscribe. Returns {cab_wrote, cab_read, error}."""
    topic = "%s/doctor-probe-%s/config" % (prefix, secrets.token_hex(4))
    out = {"cab_wrote": None, "cab_read": None, "error": None}
    relay = cab = None
    try:
        try:
            relay = _Probe(relay_target, timeout)
        except (OSError, PermissionError) as e:
            out["error"] = "the relay's login: %s" % e
            return out
        try:
            cab = _Probe(cab_target, timeout)
        except PermissionError as e:
            out["error"] = "the cabinet cannot log into the broker (%s)" % e
            return out
        except OSError as e:
            out["error"] = "the cabinet's login: %s" % e
            return out
        relay.acked(relay.c.subscribe(topic, qos=1))
        cab.acked(cab.c.subscribe("%s/+/config" % prefix, qos=1))
        cab_payload, marker = b"doctor probe from a cabinet", b"doctor marker from the relay"
        cab.acked(cab.c.publish(topic, cab_payload, qos=1))
        relay.acked(relay.c.publish(topic, marker, qos=1))
        if not relay._wait(lambda: relay.received(marker)):
            out["error"] = "the relay's login did not receive its own probe on %s" % topic
            return out
        out["cab_wrote"] = relay.received(cab_payload)
        cab.acked(cab.c.subscribe("%s/doctor-probe-%s/test" % (prefix, secrets.token_hex(4)), qos=1))
        out["cab_read"] = cab.received(marker)
        return out
    except OSError as e:
        out["error"] = str(e)
        return out
    finally:
        for probe in (cab, relay):
            if probe is not None:
                probe.close()


def report(checks):
    """The lines doctor prints, and the number of failures."""
    lines, failures = [], 0
    for c in checks:
        lines.append("  %-4s  %-17s %s" % (c.status, c.name, c.detail))
        if c.status == "FAIL":
            failures += 1
            lines.append("        %-17s fix: %s" % ("", c.fix))
    if failures:
        lines.append("%d problem(s) found: fix them in order (the first ones often cause the later)." % failures)
    else:
        lines.append("all checks passed" + (" (some skipped: see above)" if any(c.status == "skip" for c in checks)
                                            else ""))
    return lines, failures
