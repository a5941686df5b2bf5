"""`arcade demo --web`: the whole system on this machine, with a page to watch it and break it.

WebDemo starts what `arcade demo` starts (a private mosquitto, the relay on SQLite, simulated cabinets
running the real firmware) and the fake Stripe (tools/lab/fake_stripe.py, whose checkout page plays
Stripe's test cards), then one web front on host:port that

  * serves the demo page (/demo; files in tools/lab/demo_web/): each cabinet's coin lamp, coins and
    credits, its link and coin-blocker state, and the fault buttons; the page polls /demo/state;
  * forwards every other path to the relay (/pay, /paid, /cancel, /static), as the reverse proxy in
    front of a production relay does (X-Forwarded-For, ARCADE_PROXY_HOPS=1): ARCADE_PUBLIC_URL is
    the front's URL, so stickers and Stripe's return URLs lead back here.

The relay serves nothing of this: the page and its controls live in the lab, which production never
imports. The buttons drive the processes the fault tests use: each cabinet reaches the broker through
its own TcpProxy (unplug = the proxy blackholes the link, new connections included; plug = it
delivers what it held), a power cut is a SIGKILL of the simulator (power on: the same flash boots),
coins are blocked with the simulator's --inhibit-file, the broker restarts as in the delivery faults.
"""
import io
import logging
import secrets
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

from tools.lab import stack
from tools.lab.broker import Mosquitto, free_port
from tools.lab.fake_stripe import TEST_CARDS, FakeStripe, spaced
from tools.lab.tcpproxy import TcpProxy

log = logging.getLogger("arcade.demo")
HERE = Path(__file__).resolve().parent

# Two cabinets that differ in everything the pay page shows: price, bundles, coins per play, a happy hour.
CABINETS = (
    {"id": "pacman", "name": "Pac-Cab", "price_cents": 100, "bundles": [(3, 250)], "coins_per_credit": 2},
    {"id": "galaga", "name": "Galaga", "price_cents": 50, "bundles": [(5, 200), (12, 400)], "coins_per_credit": 1,
     "happy_hour": 1},
)
CARD_NAMES = dict(zip(TEST_CARDS, ("success", "declined", "insufficient funds")))
FAST_PAYMENTS = 10


class DemoError(Exception):
    """A control that cannot be done now (unknown cabinet, already unplugged...): the message says why."""


def lan_address():
    """This machine's address on its LAN (the one its default route leaves from), for a phone to reach:
    a UDP socket "connected" to a TEST-NET address sends nothing. 127.0.0.1 when there is none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
            addr = s.getsockname()[0]
        except OSError:
            addr = None
    if not addr or addr.startswith("127.") or addr == "0.0.0.0":
        try:
            addr = socket.gethostbyname(socket.gethostname())
        except OSError:
            addr = "127.0.0.1"
    return addr


class DemoCabinet:
    """One simulated cabinet: its `arcade simulate` process, its link (a TcpProxy) and its coin blocker."""

    def __init__(self, spec, proc, proxy, inhibit_path):
        self.spec = spec
        self.id = spec["id"]
        self.proc = proc
        self.proxy = proxy
        self.inhibit_path = Path(inhibit_path)
        self.plugged = True
        self.powered = True

    def pulses(self):
        """Credit pulses the simulated coin pin made (test pulses aside), from the simulator's own lines."""
        return [p for p in self.proc.pulses() if not p.get("test")]

    def view(self):
        lines = list(self.proc.lines)
        link = "off"
        if self.powered:
            link = "connecting"
            for x in reversed(lines):
                if x.get("event") in ("connected", "disconnected", "boot"):
                    link = "connected" if x["event"] == "connected" else "connecting"
                    break
        status = next((x for x in reversed(lines) if x.get("event") == "status"), {})
        boot = next((x for x in reversed(lines) if x.get("event") == "boot"), {})
        pulses = [p for p in lines if p.get("event") == "pulse" and not p.get("test")]
        cpc = self.spec["coins_per_credit"]
        return {"id": self.id, "name": self.spec["name"], "coins": len(pulses), "credits": len(pulses) // cpc,
                "coins_per_credit": cpc, "powered": self.powered, "plugged": self.plugged, "link": link,
                "blocked": self.inhibit_path.exists(), "inhibited": bool(status.get("inhibited")),
                "held": status.get("held"), "recovered": boot.get("pulses", 0) if boot.get("recovered") else 0,
                "events": [_describe(x) for x in lines if x.get("event") in _SHOWN][-6:]}


_SHOWN = ("boot", "connected", "disconnected", "ack", "held", "stopped")


def _describe(x):
    e = x["event"]
    when = time.strftime("%H:%M:%S", time.localtime(x.get("t", time.time())))
    if e == "boot":
        text = "booted" + (", finished %d pulse(s) cut by the power loss" % x["pulses"] if x.get("recovered") else "")
    elif e == "ack":
        text = "acked seq %s: %s, %s pulse(s)" % (x.get("seq"), x.get("result"), x.get("pulses"))
    elif e == "held":
        text = "credit seq %s held: coins are blocked" % x.get("seq")
    elif e == "disconnected":
        text = "link lost, reconnecting"
    else:
        text = e
    return "%s %s" % (when, text)


class WebDemo:
    """Start with start(), stop with stop(); `url` is the one address to open."""

    def __init__(self, workdir, host="127.0.0.1", port=0, advertise=None, keepalive=5, pulse_ms=None, gap_ms=None,
                 relay_env=None):
        self.work = Path(workdir)
        self.host = host
        self.port = port or free_port("" if host == "0.0.0.0" else host)
        self.advertise = advertise or (lan_address() if host in ("0.0.0.0", "") else host)
        self.keepalive = keepalive
        self.timing = [a for flag, v in (("--pulse-ms", pulse_ms), ("--gap-ms", gap_ms)) if v for a in (flag, str(v))]
        self.relay_env = dict(relay_env or {})
        self.db_path = self.work / "arcade.db"
        self.webhook_secret = "whsec_demo_" + secrets.token_hex(16)
        self.api_key = "sk_test_demo_" + secrets.token_hex(12)
        self.broker = self.relay = self.fake = None
        self.cabinets = {}
        self.broker_state = "stopped"
        self._lock = threading.RLock()       # one control at a time
        self._server = self._server_thread = None
        self._sampler = None
        self._stop_sampling = threading.Event()
        self._sample = {"payments": [], "online": {}}
        self._workers = []

    @property
    def url(self):
        return "http://%s:%d" % (self.advertise, self.port)

    def port_free(self):
        with socket.socket() as s:
            try:
                s.bind((self.host, self.port))
                return True
            except OSError:
                return False

    def pay_url(self, cab_id):
        return "%s/pay/%s" % (self.url, cab_id)

    def logs(self):
        """Where each log is, for the goodbye line."""
        out = []
        if self.relay is not None:
            out.append(("relay", self.relay.log_path))
        for cab in self.cabinets.values():
            out.append(("cabinet " + cab.id, cab.proc.log_path))
        if self.broker is not None:
            out.append(("mosquitto", self.broker.log_path))
        out.append(("web front", self.work / "web.log"))
        return out

    # -- life cycle --------------------------------------------------------------------------

    def start(self, say=lambda msg: None):
        from relay.ledger import open_ledger
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        secrets_by_id = {}
        with open_ledger(str(self.db_path)) as ledger:
            for spec in CABINETS:
                secrets_by_id[spec["id"]] = ledger.add_cabinet(
                    spec["id"], name=spec["name"], currency="usd", price_cents=spec["price_cents"],
                    bundles=spec["bundles"], coins_per_credit=spec["coins_per_credit"])
                if spec.get("happy_hour"):
                    ledger.add_promotion(spec["id"], "bonus", spec["happy_hour"], range(7), 0, 24 * 60, "Happy hour")
            logins = ledger.broker_logins()
        say("1/6 cabinets registered: %s" % "; ".join(_price_text(s) for s in CABINETS))

        # what `arcade broker config` writes: a login per cabinet, the relay's, the ACL
        self.broker = Mosquitto(self.work / "mosquitto", logins=logins).start()
        self.broker_state = "running"
        say("2/6 mosquitto started (private, on loopback)")

        relay_port = free_port()
        self.fake = FakeStripe(webhook_url="http://127.0.0.1:%d/stripe/webhook" % relay_port,
                               webhook_secret=self.webhook_secret, api_key=self.api_key, host=self.host,
                               advertise=self.advertise).start()
        say("3/6 fake Stripe started (test mode: no account, no money)")

        env = {"STRIPE_API_KEY": self.api_key, "STRIPE_API_BASE": self.fake.url,
               "ARCADE_PUBLIC_URL": self.url, "ARCADE_PROXY_HOPS": "1", "ARCADE_NAME": "Demo Arcade"}
        env.update(self.relay_env)
        self.relay = stack.Relay(self.work, str(self.db_path), self.broker.relay_url, self.webhook_secret,
                                 port=relay_port, extra_env=env).start()
        say("4/6 relay started on its own SQLite database")

        for spec in CABINETS:
            proxy = TcpProxy(self.broker.port).start()
            inhibit = self.work / ("coins-blocked-" + spec["id"])
            proc = stack.Cabinet(self.work, spec["id"], secrets_by_id[spec["id"]],
                                 self.broker.cabinet_url(spec["id"], proxy.port), keepalive=self.keepalive,
                                 extra_args=["--inhibit-file", str(inhibit)] + self.timing)
            self.cabinets[spec["id"]] = DemoCabinet(spec, proc, proxy, inhibit)
            proc.start()
        for cab in self.cabinets.values():
            cab.proc.wait_connected(timeout=30)
        stack.wait_until(lambda: self.relay.health().get("broker") == "ok", 30, 0.1, what="relay connected to the broker")
        with open_ledger(str(self.db_path)) as ledger:
            stack.wait_until(lambda: all(c["online"] for c in ledger.list_cabinets()), 30, 0.1,
                             what="both cabinets online at the relay")
        say("5/6 simulated cabinets %s online (the real firmware, simulated pins)" % ", ".join(self.cabinets))

        self._sampler = threading.Thread(target=self._sample_ledger, name="demo-sampler", daemon=True)
        self._sampler.start()
        self._serve()
        say("6/6 demo page and pay pages ready")
        return self

    def _serve(self):
        from werkzeug.serving import WSGIRequestHandler, make_server
        from tools.lab import demo_site
        access = open(self.work / "web.log", "a", buffering=1)
        lock = threading.Lock()

        class Handler(WSGIRequestHandler):
            """One plain line per request into web.log, not the terminal."""

            def log(self, type, message, *args):
                with lock:
                    access.write("%s %s %s\n" % (self.log_date_time_string(), self.address_string(), message % args))

            def log_request(self, code="-", size="-"):
                self.log("info", '"%s" %s %s', self.requestline, code, size)

        self._access_log = access
        self._server = make_server(self.host, self.port, demo_site.front(self, self.relay.url), threaded=True,
                                   request_handler=Handler)
        self._server.daemon_threads = True
        self._server_thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                               name="demo-web", daemon=True)
        self._server_thread.start()

    def stop(self):
        self._stop_sampling.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server_thread.join(10)
            self._server = None
            self._access_log.close()
        for t in self._workers:
            t.join(30)
        for cab in self.cabinets.values():
            cab.proc.stop()
            cab.inhibit_path.unlink(missing_ok=True)
        if self.relay is not None:
            self.relay.stop()
        if self.fake is not None:
            self.fake.stop()
        for cab in self.cabinets.values():
            cab.proxy.stop()
        if self.broker is not None:
            self.broker.stop()
        if self._sampler is not None:
            self._sampler.join(10)

    def relay_alive(self):
        return self.relay is not None and self.relay.alive()

    # -- what the page shows -----------------------------------------------------------------

    def _sample_ledger(self):
        """The relay's view (cabinet online, recent payments), read from its database 4 times a second
        by this one thread: the page's polls never open the database themselves."""
        from relay.checkout import money
        from relay.ledger import open_ledger
        with open_ledger(str(self.db_path)) as ledger:
            while not self._stop_sampling.wait(0.25):
                try:
                    online = {c["id"]: c["online"] for c in ledger.list_cabinets()}
                    payments = [{"ref": p["session_id"][-6:], "cabinet": p["cabinet_id"], "state": p["state"],
                                 "amount": money(p["amount"], p["currency"]) if p["amount"] is not None else "",
                                 "credits": p["credits"], "pulses": p["pulses"], "reason": p["reason"] or ""}
                                for p in ledger.list_payments(limit=10)]
                except Exception as e:          # a locked or busy database: keep the last sample
                    log.warning("demo: reading the ledger failed: %s", e)
                    continue
                self._sample = {"online": online, "payments": payments}

    def state(self):
        sample = self._sample
        cabs = []
        for cab in self.cabinets.values():
            v = cab.view()
            v["relay_online"] = bool(sample.get("online", {}).get(cab.id))
            cabs.append(v)
        attempts = [dict(a) for a in self.fake.attempts[-6:]] if self.fake is not None else []
        for a in attempts:
            a["time"] = time.strftime("%H:%M:%S", time.localtime(a.pop("t")))
            a["session"] = a["session"][-6:]
        return {"cabinets": cabs, "broker": self.broker_state, "payments": sample.get("payments", []),
                "cards": attempts[::-1], "relay": "running" if self.relay_alive() else "stopped"}

    def cabinet_info(self):
        """The static part of the page: names, prices, pay links."""
        return [{"id": s["id"], "name": s["name"], "prices": _price_text(s), "pay_url": self.pay_url(s["id"]),
                 "happy_hour": s.get("happy_hour", 0), "coins_per_credit": s["coins_per_credit"]} for s in CABINETS]

    # -- the buttons ---------------------------------------------------------------------------

    def _cab(self, cab_id):
        cab = self.cabinets.get(cab_id)
        if cab is None:
            raise DemoError("no cabinet %r in this demo: %s" % (cab_id, ", ".join(self.cabinets)))
        return cab

    def unplug(self, cab_id):
        """Network down: the link goes silent (no FIN, no reset), new connections too, like a dead WiFi."""
        with self._lock:
            cab = self._cab(cab_id)
            if not cab.plugged:
                raise DemoError("%s is already unplugged" % cab.spec["name"])
            cab.proxy.blackhole(new=True)
            cab.plugged = False
        return "%s unplugged: the broker and the cabinet notice within about two keepalives (%d s)" % (
            cab.spec["name"], 2 * self.keepalive)

    def plug(self, cab_id):
        with self._lock:
            cab = self._cab(cab_id)
            if cab.plugged:
                raise DemoError("%s is plugged in already" % cab.spec["name"])
            cab.proxy.resume()
            cab.plugged = True
        return "%s plugged back in: it reconnects at its next retry" % cab.spec["name"]

    def power_cut(self, cab_id):
        """SIGKILL the simulator, mid-train or not: what is in its flash journal is all that survives."""
        with self._lock:
            cab = self._cab(cab_id)
            if not cab.powered:
                raise DemoError("%s is already off" % cab.spec["name"])
            cab.proc.kill()
            cab.powered = False
        return "%s lost power" % cab.spec["name"]

    def power_on(self, cab_id):
        with self._lock:
            cab = self._cab(cab_id)
            if cab.powered:
                raise DemoError("%s is on already" % cab.spec["name"])
            cab.proc.start()                      # the same --state dir: the same flash
            cab.powered = True
        return "%s powered on: it boots from its flash and finishes any cut pulse train" % cab.spec["name"]

    def block_coins(self, cab_id, blocked=True):
        """The game's inhibit line (coin blocker): credits that arrive meanwhile wait in flash."""
        with self._lock:
            cab = self._cab(cab_id)
            if blocked:
                cab.inhibit_path.touch()
            else:
                cab.inhibit_path.unlink(missing_ok=True)
        return "%s: coins %s" % (cab.spec["name"], "blocked (inhibit line active)" if blocked else "accepted again")

    def restart_broker(self):
        """Stop mosquitto (SIGTERM: it saves its sessions) and start it again on the same port."""
        with self._lock:
            self.broker_state = "restarting"
            try:
                self.broker.restart()
            finally:
                self.broker_state = "running" if self.broker.proc is not None else "stopped"
        return "mosquitto restarted: the relay and the cabinets reconnect and resume their sessions"

    def pay_fast(self, cab_id, n=FAST_PAYMENTS):
        """n one-play payments at once, each a Checkout Session paid on the fake Stripe (signed webhook)."""
        cab = self._cab(cab_id)
        amount = cab.spec["price_cents"]
        sids = [self.fake.add_session(amount=amount, metadata={"cabinet_id": cab.id}, client_reference_id=cab.id)["id"]
                for _ in range(n)]
        threads = [threading.Thread(target=self.fake.pay, args=(sid,), name="demo-pay", daemon=True) for sid in sids]
        for t in threads:
            t.start()
        self._workers.extend(threads)
        return "%d payments of %s sent to the relay at once" % (n, _money(amount))


def _money(cents):
    from relay.checkout import money
    return money(cents, "usd")


def _price_text(spec):
    parts = ["1 play %s" % _money(spec["price_cents"])]
    parts += ["%d plays %s" % (c, _money(a)) for c, a in spec["bundles"]]
    text = "%s: %s, %d coin%s a play" % (spec["name"], ", ".join(parts), spec["coins_per_credit"],
                                          "" if spec["coins_per_credit"] == 1 else "s")
    if spec.get("happy_hour"):
        text += ", happy hour +%d bonus play" % spec["happy_hour"]
    return text


def terminal_qr(url):
    """The URL as a QR code in text, for a phone's camera (segno; half-height blocks)."""
    import segno
    out = io.StringIO()
    segno.make(url, error="m").terminal(out=out, compact=True)
    return out.getvalue()


def run(demo, say, wait_forever=None):
    """Start `demo`, print the URL, stay up until Ctrl-C (or SIGTERM), stop everything; returns an exit code."""
    def on_term(signum, frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        try:
            demo.start(say)
        except (TimeoutError, RuntimeError, OSError) as e:
            say("demo FAILED to start: %s" % e)
            return 1
        say("")
        say("Open %s" % (demo.url + "/demo"))
        if demo.host in ("0.0.0.0", ""):
            say("(or scan this with a phone on the same network)")
            say(terminal_qr(demo.url + "/demo"))
        say("Test cards: %s" % "; ".join("%s %s" % (spaced(n), what) for n, what in CARD_NAMES.items()))
        say("Press Ctrl-C to stop.")
        return 0 if (wait_forever or _wait_forever)(demo, say) else 1
    except KeyboardInterrupt:
        return 0
    finally:
        say("stopping...")
        ctrl_c = signal.signal(signal.SIGINT, signal.SIG_IGN)    # a second Ctrl-C must not leave processes behind
        try:
            demo.stop()
        finally:
            signal.signal(signal.SIGINT, ctrl_c)
        say("stopped. logs: %s" % "; ".join("%s %s" % (what, path) for what, path in demo.logs()))
        say("database %s" % demo.db_path)
        signal.signal(signal.SIGTERM, previous)


def _wait_forever(demo, say):
    """Until Ctrl-C (KeyboardInterrupt); False if the relay dies meanwhile."""
    while True:
        time.sleep(1)
        if not demo.relay_alive():
            say("the relay stopped unexpectedly (see %s)" % demo.relay.log_path)
            return False
