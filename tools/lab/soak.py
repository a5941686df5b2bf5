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

At the end, per cabinet: coin pulses seen on the simulated pin (pulse lines, across restarts;
distinct (session, n) and total) against Σ pulses of the ledger's paid payments; every payment in
a final state. Prints the figures; exit status 0 only when nothing is lost or doubled.
"""
import json
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

ROOT = Path(__file__).resolve().parents[2]
KINDS = {1: "relay", 2: "broker", 3: "offline", 4: "powercut", 5: "halfopen"}
PRICE, BUNDLE = 100, (3, 250)
FINAL = ("applied", "duplicate", "rejected", "invalid", "failed", "expired")
KEEPALIVE = 2
RELAY_ENV = {"ARCADE_ACK_TIMEOUT": "1", "ARCADE_ACK_TIMEOUT_MAX": "4", "ARCADE_RESCAN": "0.5",
             "ARCADE_MQTT_KEEPALIVE": str(KEEPALIVE), "ARCADE_STUCK_AFTER": "30"}


def _proxy_class():
    try:
        from tools.lab.tcpproxy import TcpProxy
    except ImportError:
        return None
    return TcpProxy


class Soak:
    def __init__(self, work, payments, cabinets, seed, rate, fault_gap, pulse_ms=20, gap_ms=20, kinds=None,
                 log=None):
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
        self.kinds = [k for k in (kinds or sorted(KINDS)) if k != 5 or self.proxy_cls is not None]
        self.whsec = "whsec_soak_" + secrets.token_hex(16)
        self.db = self.work / "arcade.db"
        self.cabs = ["soak-%02d" % i for i in range(cabinets)]
        self.secret, self.coins = {}, {}
        self.sims, self.history = {}, defaultdict(list)   # history: pulse/boot lines of finished runs
        self.proxies = {}
        self.broker = Mosquitto(self.work / "mosquitto", persistence=True, autosave_interval=1)
        self.broker_saved = True     # the data dir holds a state the broker may load
        self.relay = None
        self.relay_port = stack.free_port()
        self.sent = {}               # session id -> (cabinet, amount)
        self.unaccepted = []         # payments the relay never answered 2xx (gave up)
        self.redelivered = 0
        self.faults = Counter()
        self.fault_log = []
        self.powercuts = []          # what the journal said at each cut
        self.lock = threading.Lock()
        self.sending = threading.Event()

    # -- processes -----------------------------------------------------------------------------

    def url_for(self, who):
        """Where `who` (the relay or a cabinet) reaches the broker, with its own login."""
        proxy = self.proxies.get(who)
        port = proxy.port if proxy is not None else None
        if who == "relay":
            return self.broker.url_for(*self.broker.logins["relay"], port=port)
        return self.broker.cabinet_url(who, port)

    def start_relay(self):
        for attempt in range(20):
            relay = stack.Relay(self.work, str(self.db), self.url_for("relay"), self.whsec, port=self.relay_port,
                                extra_env=RELAY_ENV)
            try:
                self.relay = relay.start()
                return
            except RuntimeError:
                relay.stop(timeout=5)
                time.sleep(0.25)
        raise RuntimeError("the relay did not restart on port %d" % self.relay_port)

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
        with open_ledger(str(self.db)) as ledger:
            for cab in self.cabs:
                self.coins[cab] = self.pay_rng.choice((1, 2))
                self.secret[cab] = ledger.add_cabinet(cab, price_cents=PRICE, bundles=[BUNDLE],
                                                      coins_per_credit=self.coins[cab])
            # the broker an operator runs: a login per cabinet, the relay's, the ACL
            self.broker.logins = ledger.broker_logins()
        self.broker.start()
        if self.proxy_cls is not None and 5 in self.kinds:
            for who in ["relay"] + self.cabs:
                self.proxies[who] = self.proxy_cls(self.broker.port).start()
        self.start_relay()
        for cab in self.cabs:
            self.start_sim(cab)
        for cab in self.cabs:
            self.sims[cab].wait_connected(30)
        stack.wait_until(lambda: self.relay.health().get("broker") == "ok", 20, what="relay connected")

    def teardown(self):
        for cab in list(self.sims):
            self.retire_sim(cab)
        if self.relay is not None:
            self.relay.stop()
        for proxy in self.proxies.values():
            proxy.stop()
        self.broker.stop()

    # -- payments ------------------------------------------------------------------------------

    def pay(self, cab, amount, http):
        """Post one payment as Stripe would: retry until 2xx (bounded), sometimes deliver twice."""
        session = stripe_events.checkout_session(cab, amount, client_reference_id=cab)
        body = stripe_events.encode(stripe_events.event(session))
        with self.lock:
            self.sent[session["id"]] = (cab, amount)
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
        http = Http(self.relay.webhook_url)
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
        if kind == 1:
            self.relay.kill()
            time.sleep(rng.uniform(0, 0.5))
            self.start_relay()
            return "relay SIGKILLed and restarted"
        if kind == 2:
            keep = rng.random() < 0.5
            self.restart_broker(keep, pause=rng.uniform(0, 1.0))
            return "broker restarted %s persistence" % ("with" if keep else "without")
        if kind == 3:
            cab = rng.choice([c for c in self.cabs if c in self.sims])
            self.retire_sim(cab)
            http = Http(self.relay.webhook_url)
            try:
                for _ in range(rng.randint(1, 3)):
                    self.pay(cab, rng.choice((PRICE, BUNDLE[1])), http)
            finally:
                http.close()
            time.sleep(rng.uniform(0.2, 1.0))
            self.restart_broker(False)
            time.sleep(rng.uniform(0.2, 1.0))
            self.start_sim(cab).wait_connected(30)
            return "%s offline, broker session lost, back with its flash" % cab
        if kind == 4:
            cab = rng.choice([c for c in self.cabs if c in self.sims])
            sim = self.sims[cab]
            http = Http(self.relay.webhook_url)
            try:
                sid = self.pay(cab, BUNDLE[1], http)     # 3 credits: a train of 3 or 6 pulses
            finally:
                http.close()
            try:
                sim.wait_for(lambda ls: any(x.get("event") == "pulse" and x.get("session") == sid
                                            and x.get("n", 0) < x.get("of", 0) for x in ls), 20, "mid-train pulse")
                where = "mid-train"
            except (TimeoutError, RuntimeError):
                where = "not mid-train (train not seen in time)"
            self.retire_sim(cab, "kill")
            state = json.loads((sim.state_dir / "state.json").read_text())
            cur = state.get("cur")
            seen = len([x for x in self.history[cab] if x.get("event") == "pulse"
                        and cur and x.get("session") == cur.get("session")])
            self.powercuts.append({"cab": cab, "cur": cur, "pulse_lines_for_cur": seen})
            self.start_sim(cab).wait_connected(30)
            return "%s SIGKILLed %s (journal cur done=%s of %s)" % (
                cab, where, cur and cur.get("done"), cur and cur.get("pulses"))
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

    def restart_broker(self, persistence, pause=0.0):
        self.broker.stop()
        time.sleep(pause)
        if not persistence or not self.broker_saved:
            # nothing valid on disk (or we want it gone): start from an empty data dir
            shutil.rmtree(self.broker.data_dir, ignore_errors=True)
        self.broker.persistence = persistence
        self.broker.start()
        self.broker_saved = persistence

    def recover_all(self):
        """Bring back whatever a fault left down (an operator's restart)."""
        if self.broker.proc is None or self.broker.proc.poll() is not None:
            self.restart_broker(self.broker.persistence)
        if self.relay is None or not self.relay.alive():
            self.start_relay()
        for cab in self.cabs:
            if cab not in self.sims or not self.sims[cab].alive():
                if cab in self.sims:
                    self.retire_sim(cab)
                self.start_sim(cab)
        for proxy in self.proxies.values():
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
            try:
                what = self.fault(kind)
            except Exception as e:  # counted and shown; the run goes on and the books decide
                what = "FAILED to inject: %r" % (e,)
                self.recover_all()
            with self.lock:
                self.faults[KINDS[kind]] += 1
                self.fault_log.append({"kind": kind, "what": what, "s": round(time.monotonic() - t0, 2)})
            self.log("fault %d (%s): %s" % (kind, KINDS[kind], what))

    # -- the books -----------------------------------------------------------------------------

    def ledger_rows(self):
        db = sqlite3.connect("file:%s?mode=ro" % self.db, uri=True, timeout=5)
        try:
            cur = db.execute("SELECT session_id, cabinet_id, state, reason, credits, pulses, seq FROM payments")
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r)) for r in cur.fetchall()]
        finally:
            db.close()

    def settle(self, timeout):
        """Wait until every payment is final and the pins are quiet."""
        def done():
            rows = self.ledger_rows()
            return len(rows) >= len(self.sent) - len(self.unaccepted) and all(r["state"] in FINAL for r in rows)
        try:
            stack.wait_until(done, timeout, 0.25, "every payment in a final state")
        except TimeoutError:
            return False
        count = -1
        while True:  # quiet: no new pulse line for 1 s (bounded by the pulses still possible)
            now = sum(len(s.pulses()) for s in self.sims.values())
            if now == count:
                return True
            count = now
            time.sleep(1.0)

    def books(self):
        rows = self.ledger_rows()
        by_session = {r["session_id"]: r for r in rows}
        lines = defaultdict(list)
        for cab in self.cabs:
            lines[cab] = [x for x in self.history[cab] if x.get("event") == "pulse"]
        # A cut while a pulse was on the line: its line never went idle in that run, so it has no
        # pulse line, yet the journal had it in flight and boot counts it as done (never twice).
        # Seen as: completed pulse lines for that credit + earlier such cuts == journal `done`.
        partial = Counter()
        for cut in self.powercuts:
            cur = cut["cur"]
            if cur and cur["done"] < cur["pulses"] and \
                    cut["pulse_lines_for_cur"] + partial[cur["session"]] == cur["done"]:
                partial[cur["session"]] += 1
        per_cab = {}
        lost = doubled = 0
        out_of_order = 0
        for cab in self.cabs:
            paid = [r for r in rows if r["cabinet_id"] == cab and r["credits"] > 0]
            expected = sum(r["pulses"] for r in paid)
            seen = lines[cab]
            total = len(seen)
            distinct = Counter((x.get("session"), x.get("n")) for x in seen)
            per_session = Counter(x.get("session") for x in seen)
            cab_lost = cab_doubled = 0
            for r in paid:
                got = len({n for (s, n) in distinct if s == r["session_id"]})
                cab_lost += max(0, r["pulses"] - got - partial[r["session_id"]])
                cab_doubled += max(0, per_session.get(r["session_id"], 0) - r["pulses"])
            unknown = [s for s in per_session if s not in by_session]
            cab_doubled += sum(per_session[s] for s in unknown)
            # order: the first pulses of credits follow their seq
            firsts = [by_session[x["session"]]["seq"] for x in seen if x.get("n") == 1 and x["session"] in by_session]
            out_of_order += sum(1 for a, b in zip(firsts, firsts[1:]) if b < a)
            lost += cab_lost
            doubled += cab_doubled
            per_cab[cab] = {"coins_per_credit": self.coins[cab], "payments": len(paid),
                            "credits": sum(r["credits"] for r in paid), "expected_pulses": expected,
                            "pulses_total": total, "pulses_distinct": len(distinct), "lost": cab_lost,
                            "doubled": cab_doubled}
        states = Counter(r["state"] for r in rows)
        missing = [s for s in self.sent if s not in by_session]
        return {"per_cabinet": per_cab, "lost": lost, "doubled": doubled, "out_of_order": out_of_order,
                "cut_mid_pulse": sum(partial.values()),
                "states": dict(states), "not_final": sum(v for k, v in states.items() if k not in FINAL),
                "not_in_ledger": len(missing),
                "expected_pulses": sum(c["expected_pulses"] for c in per_cab.values()),
                "pulses_total": sum(c["pulses_total"] for c in per_cab.values()),
                "pulses_distinct": sum(c["pulses_distinct"] for c in per_cab.values())}

    def run(self, settle_timeout=120):
        t0 = time.monotonic()
        self.log("soak: %d payments over %d cabinets, seed %d, faults %s%s" % (
            self.n_payments, len(self.cabs), self.seed, ",".join(str(k) for k in self.kinds),
            "" if 5 in self.kinds or self.proxy_cls else " (5 needs tools/lab/tcpproxy.py)"))
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
            settled = self.settle(settle_timeout)
            for cab in list(self.sims):
                self.history[cab].extend(self.sims[cab].lines)
                self.sims[cab].lines = []
            result = self.books()
        finally:
            self.teardown()
        result.update({"seed": self.seed, "payments": len(self.sent), "cabinets": len(self.cabs),
                       "accepted": len(self.sent) - len(self.unaccepted), "unaccepted": len(self.unaccepted),
                       "events_redelivered": self.redelivered, "faults": dict(self.faults),
                       "fault_log": self.fault_log, "powercuts": self.powercuts, "settled": settled,
                       "seconds": round(time.monotonic() - t0, 1)})
        result["balanced"] = (settled and result["lost"] == 0 and result["doubled"] == 0
                              and result["not_final"] == 0 and result["unaccepted"] == 0
                              and result["not_in_ledger"] == 0 and result["out_of_order"] == 0)
        return result


def summary(r):
    faults = ", ".join("%s %d" % (KINDS[k], r["faults"].get(KINDS[k], 0)) for k in sorted(KINDS))
    return "\n".join([
        "seed %d: %d payments over %d cabinets in %.0f s (%d events delivered twice)"
        % (r["seed"], r["payments"], r["cabinets"], r["seconds"], r["events_redelivered"]),
        "faults: %s" % faults,
        "ledger states: %s" % ", ".join("%s %d" % kv for kv in sorted(r["states"].items())),
        "pulses: expected %d, on the pins %d (distinct %d) + %d cut mid-pulse (counted once by design)"
        % (r["expected_pulses"], r["pulses_total"], r["pulses_distinct"], r["cut_mid_pulse"]),
        "lost %d, doubled %d, out of order %d, not final %d, not accepted %d"
        % (r["lost"], r["doubled"], r["out_of_order"], r["not_final"], r["unaccepted"]),
        "books %s" % ("BALANCE" if r["balanced"] else "DO NOT BALANCE"),
    ])

