"""arcade soak: M payments over K cabinets while faults fire at random; then the books must balance.

Real processes on loopback: a private mosquitto, `arcade relay`, K `arcade simulate` cabinets (the
unchanged firmware, fast coin timing). A sender posts Stripe-signed payments (1 or 3 credits; 1 or 2
coins per credit by cabinet) and, like Stripe, retries each event until it gets a 2xx and now and
then delivers one twice. Meanwhile, from a seeded random schedule (seed printed; every kind comes
once before repeats):

  1 relay     SIGKILL the relay during the burst, restart it
  2 broker    stop mosquitto and start it again, with its persistence or without (queues and
              sessions lost)
  3 offline   stop a cabinet, send it payments, restart the broker without persistence (its
              session is lost), bring the cabinet back with its flash
  4 powercut  SIGKILL a cabinet between two pulses of a pulse train, boot it again with its flash
  5 halfopen  blackhole a cabinet's (or the relay's) link in tools/lab/tcpproxy without closing it,
              until that end notices and redials

The books trust nobody: neither the relay's ledger nor the firmware's journal says what was owed.
  expected  what the soak itself paid for, per cabinet and session, from its own copy of the price
            table (PRICE_TABLE: cents -> credits) and each cabinet's coins per credit;
  seen      the coin line of each simulated cabinet: every pulse (line active then idle) and every
            pulse cut by a power cut (line active when the process died: counted once, by design),
            attributed by cabinet and by the session the cabinet was pulsing;
  lost      per session, pulses paid for and not seen; doubled: pulses seen beyond what was paid,
            and EVERY pulse for a session that cabinet was not paid for; per cabinet the larger of
            that and the difference of totals (so a wrong label cannot hide a pulse);
  failures  a good payment the relay marked invalid/rejected/failed/expired, a payment not in a
            final state or never answered 2xx, a fault that failed to inject.
Settling waits (bounded) until the pins show what was paid and the ledger is final, then watches a
quiet window (QUIET s, longer than the relay's longest redelivery interval) for a late pulse.
BACKEND: the ledger on SQLite (a file) or PostgreSQL (a private cluster, fsync on). RELAYS=N (N > 1,
PostgreSQL only): N relays behind nginx (tools/lab/relays.py), each cabinet dispatched by the relay
holding its lease; fault 1 then SIGKILLs one of them. BROKER=nats-cluster: a 3-node NATS Server
cluster (tools/lab/nats.py; MQTT 3.1.1, sessions in JetStream on all nodes) instead of mosquitto, the
relay and each cabinet given the three nodes (in another order per cabinet); fault 2 then SIGKILLs a
node and restarts it, fault 3 kills and restarts a node while the cabinet is away (its session stays:
the cluster's), and fault 5 gives each cabinet and each relay one proxy per node (its list of nodes
points at its own proxies) and blackholes the proxy of the node that end is connected to right now:
it has to notice and redial another node, whose takeover of its session ends the half-open one.
Prints every figure; exit status 0 only when the books balance.
"""
import random
import secrets
import shutil
import sqlite3
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

from tools.lab import stack
from tools.lab import stripe_events
from tools.lab.bench import Http
from tools.lab.broker import Mosquitto
from tools.lab.nats import NatsCluster
from tools.lab.postgres import Postgres

ROOT = Path(__file__).resolve().parents[2]
KINDS = {1: "relay", 2: "broker", 3: "offline", 4: "powercut", 5: "halfopen"}
PRICE, BUNDLE = 100, (3, 250)
PRICE_TABLE = {PRICE: 1, BUNDLE[1]: BUNDLE[0]}     # the soak's own copy: cents paid -> credits owed
BAD_STATES = ("invalid", "rejected", "failed", "expired")   # for a good payment, each is a failure
FINAL = ("applied", "duplicate", "rejected", "invalid", "failed", "expired")
KEEPALIVE = 2
RELAY_ENV = {"ARCADE_ACK_TIMEOUT": "1", "ARCADE_ACK_TIMEOUT_MAX": "4", "ARCADE_RESCAN": "0.5",
             "ARCADE_MQTT_KEEPALIVE": str(KEEPALIVE), "ARCADE_STUCK_AFTER": "30"}
# after settling, this long without a pulse: more than the longest redelivery interval plus a redial
QUIET = float(RELAY_ENV["ARCADE_ACK_TIMEOUT_MAX"]) + 3 * KEEPALIVE
BACKENDS = ("sqlite", "postgresql")
BROKERS = ("mosquitto", "nats-cluster")
LEASE = 5           # seconds: ARCADE_LEASE_SECONDS of the relays in a RELAYS=N soak


def _proxy_class():
    try:
        from tools.lab.tcpproxy import TcpProxy
    except ImportError:
        return None
    return TcpProxy


class Soak:
    def __init__(self, work, payments, cabinets, seed, rate, fault_gap, pulse_ms=20, gap_ms=20, kinds=None,
                 log=None, backend="sqlite", quiet=QUIET, relays=1, broker="mosquitto", nats_ack_wait=None):
        if backend not in BACKENDS:
            raise ValueError("backend %r: use one of %s" % (backend, ", ".join(BACKENDS)))
        if broker not in BROKERS:
            raise ValueError("broker %r: use one of %s" % (broker, ", ".join(BROKERS)))
        if relays > 1 and backend != "postgresql":
            raise ValueError("%d relays need BACKEND=postgresql (with SQLite one relay dispatches)" % relays)
        self.n_relays = relays
        self.relays = None           # tools.lab.relays.Relays when n_relays > 1
        self.work = Path(work)
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        self.n_payments, self.rate, self.fault_gap = payments, rate, fault_gap
        self.seed = seed
        self.rng = random.Random(seed)            # the fault schedule
        self.pay_rng = random.Random(seed + 1)    # the payments
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.pulse_args = ["--pulse-ms", str(pulse_ms), "--gap-ms", str(gap_ms)]
        self.proxy_cls = _proxy_class()
        self.broker_kind = broker
        self.cluster = None
        if broker == "nats-cluster":    # nats_ack_wait ("2s"): a short test's shorter JetStream redelivery
            self.cluster = NatsCluster(self.work / "nats", **({"ack_wait": nats_ack_wait} if nats_ack_wait else {}))
        self.kinds = [k for k in (kinds or sorted(KINDS)) if k != 5 or self.proxy_cls is not None]
        self.relay_env = dict(RELAY_ENV, ARCADE_MQTT_VERSION="3.1.1") if self.cluster is not None else RELAY_ENV
        if self.cluster is not None:    # past JetStream's own redelivery of an unacknowledged QoS 1 message
            quiet = max(quiet, float(self.cluster.ack_wait.rstrip("s")) + 2)
        self.whsec = "whsec_soak_" + secrets.token_hex(16)
        self.backend, self.quiet = backend, quiet
        self.postgres = None
        self.db = str(self.work / "arcade.db")     # a postgresql:// URL once setup() started the cluster
        self.cabs = ["soak-%02d" % i for i in range(cabinets)]
        self.secret, self.coins = {}, {}
        self.sims, self.history = {}, defaultdict(list)   # history: pulse/boot lines of finished runs
        self.proxies = {}            # who -> its fault-5 proxy (mosquitto), or {node: proxy} (a cluster)
        self.broker = Mosquitto(self.work / "mosquitto", persistence=True, autosave_interval=1)
        self.broker_saved = True     # the data dir holds a state the broker may load
        self.relay = None
        self.relay_port = stack.free_port()
        self.sent = {}               # session id -> (cabinet, amount)
        self.owed = {}               # session id -> (cabinet, pulses): from the soak's own price table
        self.unaccepted = []         # payments the relay never answered 2xx (gave up)
        self.redelivered = 0
        self.faults = Counter()
        self.fault_log = []
        self.powercuts = []          # what the pin showed at each cut
        self.lock = threading.Lock()
        self.sending = threading.Event()

    # -- processes -----------------------------------------------------------------------------

    def url_for(self, who):
        """Where `who` (the relay or a cabinet) reaches the broker, with its own login."""
        if self.cluster is not None:    # every node (through its proxies); each cabinet starts on another one
            via = self.proxy_ports(who)
            if who == "relay":
                return self.cluster.url_list(*self.cluster.logins["relay"], via=via)
            i = self.cabs.index(who) % len(self.cluster.names)
            return ",".join(self.cluster.cabinet_urls(who, self.cluster.names[i:] + self.cluster.names[:i], via))
        proxy = self.proxies.get(who)
        port = proxy.port if proxy is not None else None
        if who == "relay":
            return self.broker.url_for(*self.broker.logins["relay"], port=port)
        return self.broker.cabinet_url(who, port)

    @property
    def webhook_url(self):
        return self.relays.webhook_url if self.relays is not None else self.relay.webhook_url

    def start_relay(self):
        if self.n_relays > 1:
            if self.relays is None:
                from tools.lab.relays import Relays
                env = dict(self.relay_env, ARCADE_LEASE_SECONDS=str(LEASE))
                self.relays = Relays(self.work / "relays", self.db, self.relay_url, self.whsec, self.n_relays,
                                     env).start()
            for name in self.relays.names:
                if not self.relays.procs[name].alive():
                    self.relays.start_one(name)
            return
        for attempt in range(20):
            relay = stack.Relay(self.work, self.db, self.url_for("relay"), self.whsec, port=self.relay_port,
                                extra_env=self.relay_env)
            try:
                self.relay = relay.start()
                return
            except RuntimeError:
                relay.stop(timeout=5)
                time.sleep(0.25)
        raise RuntimeError("the relay did not restart on port %d" % self.relay_port)

    def relay_url(self, name):
        """Relay `name`'s MQTT_URL (RELAYS=N): its own login, through fault 5's proxy when there is one."""
        if self.cluster is not None:    # a proxy per node for each relay: fault 5 blackholes one relay's link
            return self.cluster.url_list(*self.relay_logins[name], via=self.proxy_ports(name))
        return self.broker.url_for(*self.relay_logins[name],
                                   port=self.proxies["relay"].port if "relay" in self.proxies else None)

    def proxy_ports(self, who):
        """{node: port} of `who`'s proxies in front of the cluster's nodes (None without fault 5)."""
        proxies = self.proxies.get(who)
        return {node: proxy.port for node, proxy in proxies.items()} if proxies else None

    def all_proxies(self):
        for proxy in self.proxies.values():
            yield from (proxy.values() if isinstance(proxy, dict) else (proxy,))

    def link_owners(self):
        """Whose link fault 5 may blackhole: the relay (each relay of a cluster soak) and every cabinet."""
        relays = ["relay"]
        if self.cluster is not None and self.n_relays > 1:
            relays = list(self.relay_logins)
        return relays + self.cabs

    def start_sim(self, cab):
        sim = stack.Cabinet(self.work, cab, self.secret[cab], self.url_for(cab), keepalive=KEEPALIVE,
                            extra_args=self.pulse_args).start()
        self.sims[cab] = sim
        return sim

    def retire_sim(self, cab, how="stop"):
        sim = self.sims.pop(cab)
        sim.kill() if how == "kill" else sim.stop()
        self.history[cab].extend(sim.lines)

    def setup(self):
        from relay.ledger import open_ledger
        if self.backend == "postgresql":
            self.log("soak: starting a private PostgreSQL (initdb in a temp dir)")
            self.postgres = Postgres(fsync=True).start()
            self.db = self.postgres.create_database("soak")
        with open_ledger(self.db) as ledger:
            for cab in self.cabs:
                self.coins[cab] = self.pay_rng.choice((1, 2))
                self.secret[cab] = ledger.add_cabinet(cab, price_cents=PRICE, bundles=[BUNDLE],
                                                      coins_per_credit=self.coins[cab])
            # the broker an operator runs: a login per cabinet, the relay's, the ACL
            self.relay_logins = {"r%d" % (i + 1): ledger.relay_login("r%d" % (i + 1))
                                 for i in range(self.n_relays)} if self.n_relays > 1 else {}
            self.broker.logins = ledger.broker_logins()
        if self.cluster is not None:
            self.log("soak: starting a 3-node NATS cluster (JetStream, MQTT listeners)")
            self.cluster.logins = self.broker.logins
            self.cluster.start()
        else:
            self.broker.start()
        if self.proxy_cls is not None and 5 in self.kinds:
            for who in self.link_owners():
                if self.cluster is not None:    # one proxy per node: the list `who` rotates through
                    self.proxies[who] = {node: self.proxy_cls(self.cluster.mqtt_port(node)).start()
                                         for node in self.cluster.names}
                else:
                    self.proxies[who] = self.proxy_cls(self.broker.port).start()
        self.start_relay()
        for cab in self.cabs:
            self.start_sim(cab)
        for cab in self.cabs:
            self.sims[cab].wait_connected(30)
        for relay in (self.relays.procs.values() if self.relays is not None else [self.relay]):
            stack.wait_until(lambda: relay.health().get("broker") == "ok", 20, what="relay connected")

    def teardown(self):
        for cab in list(self.sims):
            self.retire_sim(cab)
        if self.relay is not None:
            self.relay.stop()
        if self.relays is not None:
            self.relays.stop()
        for proxy in self.all_proxies():
            proxy.stop()
        self.broker.stop()
        if self.cluster is not None:
            self.cluster.stop()
        if self.postgres is not None:
            from relay.backends import close_pools
            close_pools()
            self.postgres.remove()

    # -- payments ------------------------------------------------------------------------------

    def pay(self, cab, amount, http):
        """Post one payment as Stripe would: retry until 2xx (bounded), sometimes deliver twice."""
        session = stripe_events.checkout_session(cab, amount, client_reference_id=cab)
        body = stripe_events.encode(stripe_events.event(session))
        with self.lock:
            self.sent[session["id"]] = (cab, amount)
            self.owed[session["id"]] = (cab, PRICE_TABLE[amount] * self.coins[cab])
            twice = self.pay_rng.random() < 0.05
        deadline = time.monotonic() + 60
        while True:
            try:
                if http.post(body, stripe_events.signature_header(body, self.whsec)) == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                with self.lock:
                    self.unaccepted.append(session["id"])
                return session["id"]
            time.sleep(0.2)
        if twice:
            try:
                http.post(body, stripe_events.signature_header(body, self.whsec))
                with self.lock:
                    self.redelivered += 1
            except OSError:
                pass
        return session["id"]

    def sender(self):
        http = Http(self.webhook_url)
        try:
            t0 = time.monotonic()
            for i in range(self.n_payments):
                with self.lock:
                    cab = self.pay_rng.choice(self.cabs)
                    amount = self.pay_rng.choice((PRICE, BUNDLE[1]))
                self.pay(cab, amount, http)
                pause = t0 + (i + 1) / self.rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
        finally:
            http.close()
            self.sending.clear()

    # -- faults --------------------------------------------------------------------------------

    def fault(self, kind):
        rng = self.rng
        if kind == 1 and self.relays is not None:
            name = rng.choice(self.relays.names)
            self.relays.kill(name)
            time.sleep(rng.uniform(0, 2.0 * LEASE))      # its cabinets are taken over meanwhile
            self.relays.start_one(name)
            return "relay %s of %d SIGKILLed and restarted" % (name, self.n_relays)
        if kind == 1:
            self.relay.kill()
            time.sleep(rng.uniform(0, 0.5))
            self.start_relay()
            return "relay SIGKILLed and restarted"
        if kind == 2 and self.cluster is not None:
            node = rng.choice(self.cluster.names)
            self.cluster.kill(node)
            time.sleep(rng.uniform(0, 1.0))
            self.restart_node(node)
            return "NATS node %s SIGKILLed and restarted" % node
        if kind == 2:
            keep = rng.random() < 0.5
            self.restart_broker(keep, pause=rng.uniform(0, 1.0))
            return "broker restarted %s persistence" % ("with" if keep else "without")
        if kind == 3:
            cab = rng.choice([c for c in self.cabs if c in self.sims])
            self.retire_sim(cab)
            http = Http(self.webhook_url)
            try:
                for _ in range(rng.randint(1, 3)):
                    self.pay(cab, rng.choice((PRICE, BUNDLE[1])), http)
            finally:
                http.close()
            time.sleep(rng.uniform(0.2, 1.0))
            if self.cluster is not None:
                node = rng.choice(self.cluster.names)
                self.cluster.kill(node)
                time.sleep(rng.uniform(0.2, 1.0))
                self.start_sim(cab).wait_connected(30)
                self.restart_node(node)
                return "%s offline, NATS node %s SIGKILLed meanwhile, back with its flash" % (cab, node)
            self.restart_broker(False)
            time.sleep(rng.uniform(0.2, 1.0))
            self.start_sim(cab).wait_connected(30)
            return "%s offline, broker session lost, back with its flash" % cab
        if kind == 4:
            cab = rng.choice([c for c in self.cabs if c in self.sims])
            sim = self.sims[cab]
            http = Http(self.webhook_url)
            try:
                sid = self.pay(cab, BUNDLE[1], http)     # 3 credits: a train of 3 or 6 pulses
            finally:
                http.close()
            # TimeoutError here: the fault failed to inject (counted, and the run fails)
            sim.wait_for(lambda ls: any(x.get("event") == "pulse" and x.get("session") == sid
                                        and x.get("n", 0) < x.get("of", 0) for x in ls), 20, "mid-train pulse")
            self.retire_sim(cab, "kill")
            pin = pin_events(self.history[cab] + [{"event": "boot"}])     # the next boot ends that run
            cut_on_line = pin[-1]["kind"] == "cut" if pin else False
            got = len([p for p in pin if p["session"] == sid])
            self.powercuts.append({"cab": cab, "session": sid, "pulses_of_train_on_pin": got,
                                   "cut_with_line_active": cut_on_line})
            self.start_sim(cab).wait_connected(30)
            return "%s SIGKILLed after %d pulse(s) of a train of %d%s" % (
                cab, got, self.owed[sid][1], ", the line active" if cut_on_line else "")
        if kind == 5 and self.cluster is not None:
            return self.halfopen_cluster(rng.choice([w for w in self.link_owners() if w not in self.cabs
                                                     or w in self.sims]))
        if kind == 5:
            who = rng.choice(["relay"] + [c for c in self.cabs if c in self.sims])
            proxy = self.proxies[who]
            before = proxy.opened
            t0 = time.monotonic()
            proxy.blackhole()
            try:
                proxy.wait_for(lambda p: p.opened > before, 6 * KEEPALIVE + 10, "a redial after the blackhole")
                noticed = time.monotonic() - t0
            finally:
                proxy.resume()
            return "%s link blackholed; redialled after %.1f s" % (who, noticed)
        raise ValueError(kind)

    def halfopen_cluster(self, who):
        """Blackhole the link `who` uses right now (the proxy of the node it is connected to), keep its
        other nodes reachable, and wait until it notices and redials (the next node of its list)."""
        proxies = self.proxies[who]

        def current():      # the node whose proxy holds `who`'s newest open link
            live = [(max((t for t, ev, *_ in p.events if ev == "open"), default=0), node)
                    for node, p in proxies.items() if p.open_links()]
            return max(live)[1] if live else None
        node = stack.wait_until(current, 20, 0.05, "%s connected through a proxy" % who)
        proxy = proxies[node]
        before = {n: p.opened for n, p in proxies.items()}
        t0 = time.monotonic()
        proxy.blackhole()
        try:
            redial = stack.wait_until(lambda: [n for n, p in proxies.items() if p.opened > before[n]],
                                      6 * KEEPALIVE + 10, 0.05, "a redial after the blackhole")
            noticed = time.monotonic() - t0
        finally:
            proxy.resume()
        return "%s link to NATS node %s blackholed; redialled (%s) after %.1f s" % (
            who, node, ",".join(redial), noticed)

    def restart_broker(self, persistence, pause=0.0):
        self.broker.stop()
        time.sleep(pause)
        if not persistence or not self.broker_saved:
            # nothing valid on disk (or we want it gone): start from an empty data dir
            shutil.rmtree(self.broker.data_dir, ignore_errors=True)
        self.broker.persistence = persistence
        self.broker.start()
        self.broker_saved = persistence

    def restart_node(self, node):
        """A killed NATS node back, and caught up before the next fault (two nodes down is no quorum)."""
        self.cluster.restart(node, timeout=60)
        self.cluster.wait_current(60)

    def recover_all(self):
        """Bring back whatever a fault left down (an operator's restart)."""
        if self.cluster is not None:
            for node in self.cluster.names:
                if not self.cluster.alive(node):
                    self.restart_node(node)
        elif self.broker.proc is None or self.broker.proc.poll() is not None:
            self.restart_broker(self.broker.persistence)
        if self.relays is not None or self.relay is None or not self.relay.alive():
            self.start_relay()
        for cab in self.cabs:
            if cab not in self.sims or not self.sims[cab].alive():
                if cab in self.sims:
                    self.retire_sim(cab)
                self.start_sim(cab)
        for proxy in self.all_proxies():
            proxy.resume()

    def faulter(self):
        order = list(self.kinds)
        self.rng.shuffle(order)
        # every kind fires at least once, even if that outlasts the payments
        while self.sending.is_set() or order:
            time.sleep(self.rng.uniform(*self.fault_gap))
            if not self.sending.is_set() and not order:
                break
            kind = order.pop(0) if order else self.rng.choice(self.kinds)
            t0 = time.monotonic()
            failed = False
            try:
                what = self.fault(kind)
            except Exception as e:  # counted and shown; the run goes on, and fails at the end
                what = "FAILED to inject: %r" % (e,)
                failed = True
                self.recover_all()
            with self.lock:
                self.faults[KINDS[kind]] += 1
                self.fault_log.append({"kind": kind, "what": what, "s": round(time.monotonic() - t0, 2),
                                       "failed": failed})
            self.log("fault %d (%s): %s" % (kind, KINDS[kind], what))

    # -- the books -----------------------------------------------------------------------------

    def ledger_rows(self):
        """What the relay says it did (states only: never what was owed), read with the engine's own driver."""
        sql = "SELECT session_id, cabinet_id, state, reason, credits, pulses, seq FROM payments"
        if self.backend == "postgresql":
            import psycopg
            with psycopg.connect(self.db, connect_timeout=5) as conn:
                cur = conn.execute(sql)
                names = [d.name for d in cur.description]
                return [dict(zip(names, r)) for r in cur.fetchall()]
        db = sqlite3.connect("file:%s?mode=ro" % self.db, uri=True, timeout=5)
        try:
            cur = db.execute(sql)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]
        finally:
            db.close()

    def pin(self, cab):
        """Every pulse on the cabinet's coin line so far, finished runs and the running one."""
        lines = list(self.history[cab])
        if cab in self.sims:
            lines += [{"event": "boot"}] + list(self.sims[cab].lines)
        return pin_events(lines)

    def settle(self, timeout):
        """Wait (bounded) until every pin shows at least what was paid for it and every payment is
        final, then for a quiet window with no new pulse on any pin. False if either never came."""
        owed = Counter()
        for cab, pulses in self.owed.values():
            owed[cab] += pulses

        def done():
            if any(len(self.pin(cab)) < owed[cab] for cab in self.cabs):
                return False
            rows = self.ledger_rows()
            return len(rows) >= len(self.sent) - len(self.unaccepted) and all(r["state"] in FINAL for r in rows)
        deadline = time.monotonic() + timeout
        try:
            stack.wait_until(done, timeout, 0.25, "every paid pulse on the pins and every payment final")
        except TimeoutError:
            return False
        count, since = -1, time.monotonic()
        while time.monotonic() - since < self.quiet:
            now = sum(len(self.pin(cab)) for cab in self.cabs)
            if now != count:
                count, since = now, time.monotonic()
            if time.monotonic() > deadline + self.quiet:
                return False
            time.sleep(0.25)
        return True

    def books(self):
        rows = self.ledger_rows()
        by_session = {r["session_id"]: r for r in rows}
        per_cab = {}
        lost = doubled = out_of_order = cut_mid_pulse = 0
        for cab in self.cabs:
            owed = {sid: pulses for sid, (c, pulses) in self.owed.items() if c == cab}
            expected = sum(owed.values())
            pin = self.pin(cab)
            seen = Counter(p["session"] for p in pin)
            distinct = {(p["session"], p["n"]) for p in pin}
            cuts = sum(1 for p in pin if p["kind"] == "cut")
            by_label_lost = sum(max(0, pulses - len({n for s, n in distinct if s == sid})) for sid, pulses in owed.items())
            by_label_doubled = sum(max(0, seen[sid] - pulses) for sid, pulses in owed.items())
            not_paid_here = sum(n for sid, n in seen.items() if sid not in owed)   # another cabinet's, or nobody's
            cab_lost = max(by_label_lost, expected - len(pin))
            cab_doubled = max(by_label_doubled + not_paid_here, len(pin) - expected)
            # order: the first pulses of credits follow the seq the relay gave them
            firsts = [by_session[p["session"]]["seq"] for p in pin if p["n"] == 1 and p["session"] in by_session]
            out_of_order += sum(1 for a, b in zip(firsts, firsts[1:]) if b < a)
            lost += cab_lost
            doubled += cab_doubled
            cut_mid_pulse += cuts
            per_cab[cab] = {"coins_per_credit": self.coins[cab], "payments": len(owed), "expected_pulses": expected,
                            "pulses_on_pin": len(pin), "cut_mid_pulse": cuts, "lost": cab_lost, "doubled": cab_doubled,
                            "pulses_for_sessions_not_paid_here": not_paid_here}
        states = Counter(by_session[s]["state"] for s in self.sent if s in by_session)
        bad = sorted(s for s in self.sent if s in by_session and by_session[s]["state"] in BAD_STATES)
        missing = [s for s in self.sent if s not in by_session]
        return {"per_cabinet": per_cab, "lost": lost, "doubled": doubled, "out_of_order": out_of_order,
                "cut_mid_pulse": cut_mid_pulse, "states": dict(states),
                "not_final": sum(v for k, v in states.items() if k not in FINAL),
                "good_marked_bad": len(bad), "good_marked_bad_sessions": bad[:20],
                "not_in_ledger": len(missing), "ledger_rows_not_sent": len([s for s in by_session if s not in self.sent]),
                "expected_pulses": sum(c["expected_pulses"] for c in per_cab.values()),
                "pulses_on_pin": sum(c["pulses_on_pin"] for c in per_cab.values())}

    def run(self, settle_timeout=120):
        t0 = time.monotonic()
        self.log("soak: %d payments over %d cabinets, ledger on %s, broker %s, seed %d, faults %s%s" % (
            self.n_payments, len(self.cabs), self.backend, self.broker_kind, self.seed,
            ",".join(str(k) for k in self.kinds), "" if 5 in self.kinds or self.proxy_cls else
            " (5 needs tools/lab/tcpproxy.py)"))
        try:
            self.setup()
            self.sending.set()
            sender = threading.Thread(target=self.sender, name="soak-sender")
            faulter = threading.Thread(target=self.faulter, name="soak-faults")
            sender.start()
            faulter.start()
            sender.join()
            faulter.join()
            self.recover_all()
            self.log("soak: sent; settling (then %.0f s without a pulse)" % self.quiet)
            settled = self.settle(settle_timeout)
            result = self.books()
        finally:
            self.teardown()
        failed_faults = [f for f in self.fault_log if f["failed"]]
        result.update({"seed": self.seed, "backend": self.backend, "broker": self.broker_kind, "quiet_s": self.quiet,
                       "relays": self.n_relays,
                       "payments": len(self.sent), "cabinets": len(self.cabs), "faults_failed": len(failed_faults),
                       "accepted": len(self.sent) - len(self.unaccepted), "unaccepted": len(self.unaccepted),
                       "events_redelivered": self.redelivered, "faults": dict(self.faults),
                       "fault_log": self.fault_log, "powercuts": self.powercuts, "settled": settled,
                       "seconds": round(time.monotonic() - t0, 1)})
        result["balanced"] = (settled and result["lost"] == 0 and result["doubled"] == 0
                              and result["not_final"] == 0 and result["unaccepted"] == 0
                              and result["not_in_ledger"] == 0 and result["out_of_order"] == 0
                              and result["good_marked_bad"] == 0 and result["faults_failed"] == 0
                              and result["ledger_rows_not_sent"] == 0)
        return result


def summary(r):
    faults = ", ".join("%s %d" % (KINDS[k], r["faults"].get(KINDS[k], 0)) for k in sorted(KINDS))
    return "\n".join([
        "seed %d: %d payments over %d cabinets, ledger on %s, broker %s, %d relay(s), in %.0f s (%d events "
        "delivered twice)" % (r["seed"], r["payments"], r["cabinets"], r["backend"], r.get("broker", "mosquitto"),
                              r.get("relays", 1), r["seconds"], r["events_redelivered"]),
        "faults: %s; failed to inject %d" % (faults, r["faults_failed"]),
        "ledger states of the soak's payments: %s" % ", ".join("%s %d" % kv for kv in sorted(r["states"].items())),
        "pulses: paid for %d (the soak's own price table), on the pins %d, of which %d cut mid-pulse (counted "
        "once by design)" % (r["expected_pulses"], r["pulses_on_pin"], r["cut_mid_pulse"]),
        "lost %d, doubled %d, out of order %d, not final %d, not accepted %d, good payments marked bad %d, "
        "ledger rows nobody paid for %d" % (r["lost"], r["doubled"], r["out_of_order"], r["not_final"],
                                           r["unaccepted"], r["good_marked_bad"], r["ledger_rows_not_sent"]),
        "settled and quiet for %.0f s: %s" % (r["quiet_s"], "yes" if r["settled"] else "NO"),
        "books %s" % ("BALANCE" if r["balanced"] else "DO NOT BALANCE"),
    ])



def pin_events(lines):
    """A cabinet's coin line from its simulator lines (runs in order, each starting with "boot"):
    [{"kind": "pulse"|"cut", "session", "n"}]. A pulse is the line going active then idle; a cut is
    the line active when the process died (a pulse_on with no pulse after it in that run)."""
    out, on = [], None
    for x in lines:
        event = x.get("event")
        if event == "boot":
            if on is not None:
                out.append({"kind": "cut", "session": on.get("session"), "n": on.get("n")})
            on = None
        elif event == "pulse_on" and not x.get("test"):
            on = x
        elif event == "pulse" and not x.get("test"):
            out.append({"kind": "pulse", "session": x.get("session"), "n": x.get("n")})
            on = None
    return out
