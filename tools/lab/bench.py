"""arcade bench: the relay against the naive design, on loopback, with real processes.

A private mosquitto, the relay under its production server (`arcade relay`, waitress) and N
simulated cabinets (`arcade simulate`, the unchanged firmware). Then the same figures for the naive
design (tools/lab/naive_relay.py: verify the signature, publish QoS 0 inline, no ledger) on the same
broker and cabinets; with --designs relay-postgresql also the relay with its ledger on a private
PostgreSQL cluster (tools/lab/postgres.py, fsync on; the SQLite ledger's cabinets and counters copied
into it just before, so the cabinets' sequence numbers continue):

  latency     webhook sent -> first coin edge on the simulated pin (p50/p95/p99), one payment at a
              time, spread over the cabinets (each cabinet idle when its next payment is sent)
  throughput  verified-and-committed webhooks/s, concurrent keep-alive senders, to cabinets with
              no simulator (the webhook path alone; credits stay queued)
  reconnect   a cabinet is stopped, K payments arrive, it restarts with its flash: time from its
              MQTT connect to its last queued pulse, and how many of the K pulsed
  broker      mosquitto restarted: time from it listening again to the next credit's first pulse
              (a payment is sent every 0.2 s until one pulses), and how many of those were lost
  rss         the relay process's VmRSS / VmHWM (/proc/<pid>/status) after the run
Then, for the relay only, webhook latency at each ledger size (the ledger prefilled by bulk_fill).

Prints a table and writes the figures as JSON (--out). Numbers, not a test: nothing is asserted.
"""
import http.client
import json
import math
import os
import secrets
import shutil
import sqlite3
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from tools.lab import stack
from tools.lab import stripe_events
from tools.lab.broker import Mosquitto, wait_port
from tools.lab.postgres import Postgres, load_sqlite_dump

ROOT = Path(__file__).resolve().parents[2]
PRICE = 100


def say(msg):
    print(msg, file=sys.stderr, flush=True)


# -- ledger prefill ------------------------------------------------------------------------------

def bulk_fill(db_path, total, cabinet_id="fill-0", chunk=50000, progress=True):
    """Grow the ledger at `db_path` to `total` payments (applied, with their events) for a filler
    cabinet, fast: one bulk insert per chunk into the ledger's own tables (schema from
    relay.ledger). Returns the number of payments added. For benchmarks only."""
    from relay.ledger import open_ledger
    with open_ledger(str(db_path)) as ledger:
        if ledger.get_cabinet(cabinet_id) is None:
            ledger.add_cabinet(cabinet_id, name="bulk fill", price_cents=PRICE)
    db = sqlite3.connect(str(db_path), isolation_level=None)
    try:
        db.execute("PRAGMA synchronous = OFF")
        have = db.execute("SELECT COUNT(*) FROM payments").fetchone()[0]
        start_seq = db.execute("SELECT next_seq FROM cabinets WHERE id = ?", (cabinet_id,)).fetchone()[0]
        want = total - have
        if want <= 0:
            return 0
        t0 = time.monotonic()
        now = time.time()
        done = 0
        while done < want:
            n = min(chunk, want - done)
            rows, events = [], []
            for i in range(done, done + n):
                seq = start_seq + i
                sid = "cs_fill_%s_%010d" % (cabinet_id, seq)
                ts = now - (want - i) * 0.01
                rows.append((sid, cabinet_id, "applied", "", 1, 1, PRICE, "usd", seq, int(ts), 1, 1, seq,
                             "checkout.session.completed", ts, ts, ts, ts, ts, ts))
                events.append(("evt_fill_%s_%010d" % (cabinet_id, seq), sid, "checkout.session.completed",
                               "queued", ts))
            db.execute("BEGIN")
            db.executemany("INSERT INTO payments (session_id, cabinet_id, state, reason, credits, pulses, amount, "
                           "currency, seq, issued_ts, attempts, ack_pulses, ack_last, event_type, created_at, "
                           "updated_at, paid_at, queued_at, sent_at, done_at) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            db.executemany("INSERT INTO events (event_id, session_id, type, outcome, received_at) "
                           "VALUES (?, ?, ?, ?, ?)", events)
            db.execute("UPDATE cabinets SET next_seq = ?, last_seq = ? WHERE id = ?",
                       (start_seq + done + n, start_seq + done + n - 1, cabinet_id))
            db.execute("COMMIT")
            done += n
            if progress:
                rate = done / max(time.monotonic() - t0, 1e-6)
                print("\rfilling ledger: %d/%d payments (%.0f/s, %.0f s left)   "
                      % (have + done, total, rate, (want - done) / rate), end="", file=sys.stderr, flush=True)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if progress:
            print(file=sys.stderr)
        return want
    finally:
        db.close()


# -- helpers -------------------------------------------------------------------------------------

def pct(values, p):
    """The p-th percentile (nearest rank) of a list of numbers, or None when empty."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))
    return s[k]


def rss(pid):
    """VmRSS and VmHWM of a process in MiB, from /proc/<pid>/status."""
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) / 1024.0
    except OSError:
        pass
    return out


class Http:
    """One keep-alive HTTP connection that posts signed events."""

    def __init__(self, url):
        u = urlsplit(url)
        self.host, self.port, self.path = u.hostname, u.port, u.path
        self.conn = None

    def post(self, body, header):
        headers = {"Content-Type": "application/json; charset=utf-8", "Stripe-Signature": header}
        for attempt in (1, 2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                self.conn.request("POST", self.path, body, headers)
                resp = self.conn.getresponse()
                resp.read()
                return resp.status
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt == 2:
                    raise

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def new_payment(cab, amount=PRICE):
    session = stripe_events.checkout_session(cab, amount, client_reference_id=cab)
    return session["id"], stripe_events.encode(stripe_events.event(session))


def find(lines, pred):
    for item in reversed(lines):
        if pred(item):
            return item
    return None


def first_edge(sim, sid, timeout):
    return sim.wait_for(lambda ls: find(ls, lambda x: x.get("event") == "pulse" and x.get("session") == sid
                                        and x.get("n") == 1), timeout, "first pulse of " + sid)


def wait_idle(sim, sid, timeout):
    """Wait until the credit `sid` is fully pulsed and acked (the cabinet is idle again)."""
    last = sim.wait_for(lambda ls: find(ls, lambda x: x.get("event") == "pulse" and x.get("session") == sid
                                        and x.get("n") == x.get("of")), timeout, "last pulse of " + sid)
    sim.wait_for(lambda ls: find(ls, lambda x: x.get("event") == "ack" and x.get("seq") == last["seq"]
                                 and x.get("t", 0) >= last["t"]), timeout, "ack of " + sid)


def pulsed_sessions(sim):
    return {x.get("session") for x in sim.events("pulse")}


# -- the two designs -----------------------------------------------------------------------------

class Naive(stack.Proc):
    def __init__(self, workdir, cabinets_file, mqtt_url, webhook_secret):
        self.port = stack.free_port()
        env = stack._env({"MQTT_URL": mqtt_url, "STRIPE_WEBHOOK_SECRET": webhook_secret})
        argv = [sys.executable, "-m", "tools.lab.naive_relay", "--cabinets", str(cabinets_file), "--host", "127.0.0.1",
                "--port", str(self.port)]
        super().__init__(argv, env, Path(workdir) / "naive-relay.log", "naive relay")

    @property
    def webhook_url(self):
        return "http://127.0.0.1:%d/stripe/webhook" % self.port

    def start(self, timeout=20.0):
        super().start()
        if not wait_port("127.0.0.1", self.port, timeout, self.proc):
            raise RuntimeError("the naive relay did not start (log: %s)" % self.log_path)
        return self


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.dir)
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        self.whsec = "whsec_bench_" + secrets.token_hex(16)
        self.db = self.work / "arcade.db"
        self.cabs = ["bench-%02d" % i for i in range(args.cabinets)]
        self.sinks = ["sink-%d" % i for i in range(args.senders)]
        self.secrets = {}
        self.sims = {}
        self.broker = Mosquitto(self.work / "mosquitto")
        self.postgres = None

    def sim_args(self):
        extra = []
        if self.args.pulse_ms:
            extra += ["--pulse-ms", str(self.args.pulse_ms)]
        if self.args.gap_ms:
            extra += ["--gap-ms", str(self.args.gap_ms)]
        return extra

    def start_sim(self, cab):
        sim = stack.Cabinet(self.work, cab, self.secrets[cab], self.broker.url, keepalive=30,
                            extra_args=self.sim_args()).start()
        self.sims[cab] = sim
        return sim

    def setup(self):
        from relay.ledger import open_ledger
        with open_ledger(str(self.db)) as ledger:
            for cab in self.cabs + self.sinks:
                self.secrets[cab] = ledger.add_cabinet(cab, price_cents=PRICE, bundles=[(3, 250)])
        cabfile = self.work / "naive-cabinets.json"
        cabfile.write_text(json.dumps({c: {"secret": s, "price_cents": PRICE, "coins_per_credit": 1}
                                       for c, s in self.secrets.items()}))
        self.cabfile = cabfile
        self.broker.start()
        for cab in self.cabs:
            self.start_sim(cab)
        for cab in self.cabs:
            self.sims[cab].wait_connected(30)

    def stop(self):
        for sim in self.sims.values():
            sim.stop()
        self.broker.stop()
        if self.postgres is not None:
            self.postgres.remove()

    def postgres_copy(self):
        """A PostgreSQL ledger holding the SQLite ledger as it is now (same cabinets, secrets, counters)."""
        if self.postgres is None:
            say("[relay-postgresql] starting a private PostgreSQL (initdb in a temp dir, fsync on)")
            self.postgres = Postgres(fsync=True).start()
        name = "bench_%d" % int(time.time() * 1000)
        url = self.postgres.create_database(name)
        src = sqlite3.connect(str(self.db))
        try:
            load_sqlite_dump(url, "\n".join(src.iterdump()))
        finally:
            src.close()
        return url

    def design(self, name):
        if name == "relay":
            return stack.Relay(self.work, str(self.db), self.broker.url, self.whsec)
        if name == "relay-postgresql":
            return stack.Relay(self.work / "postgresql", self.postgres_copy(), self.broker.url, self.whsec)
        return Naive(self.work, self.cabfile, self.broker.url, self.whsec)

    def wait_ready(self, name, proc):
        if name.startswith("relay"):
            stack.wait_until(lambda: proc.health().get("broker") == "ok", 20, what="relay connected to the broker")
        else:
            time.sleep(0.5)  # the naive relay has no health check; paho connects in the background

    # -- figures -------------------------------------------------------------------------

    def latency(self, url, n):
        http = Http(url)
        edge, resp = [], []
        last = {}
        try:
            for i in range(n):
                cab = self.cabs[i % len(self.cabs)]
                sim = self.sims[cab]
                if cab in last:
                    wait_idle(sim, last[cab], 30)
                sid, body = new_payment(cab)
                header = stripe_events.signature_header(body, self.whsec)
                t0 = time.time()
                status = http.post(body, header)
                resp.append(time.time() - t0)
                if status != 200:
                    raise RuntimeError("webhook answered %s" % status)
                pulse = first_edge(sim, sid, 30)
                edge.append(pulse["t"] - t0)
                last[cab] = sid
            for cab, sid in last.items():
                wait_idle(self.sims[cab], sid, 30)
        finally:
            http.close()
        return edge, resp

    def throughput(self, url, n, senders):
        work = [[] for _ in range(senders)]
        for i in range(n):
            cab = self.sinks[i % len(self.sinks)]
            work[i % senders].append(new_payment(cab)[1])
        ok = [0] * senders
        errors = []
        barrier = threading.Barrier(senders + 1)

        def run(k):
            http = Http(url)
            try:
                jobs = [(b, stripe_events.signature_header(b, self.whsec)) for b in work[k]]
                barrier.wait()
                for body, header in jobs:
                    if http.post(body, header) == 200:
                        ok[k] += 1
            except Exception as e:  # reported below, never silently
                errors.append(repr(e))
            finally:
                http.close()

        threads = [threading.Thread(target=run, args=(k,)) for k in range(senders)]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.monotonic()
        for t in threads:
            t.join(300)
        elapsed = time.monotonic() - t0
        if errors:
            say("throughput: %d sender error(s), first: %s" % (len(errors), errors[0]))
        return sum(ok) / elapsed, sum(ok), elapsed

    def reconnect(self, url, k):
        cab = self.cabs[0]
        self.sims[cab].stop()
        http = Http(url)
        sids = []
        try:
            for _ in range(k):
                sid, body = new_payment(cab)
                http.post(body, stripe_events.signature_header(body, self.whsec))
                sids.append(sid)
        finally:
            http.close()
        time.sleep(0.3)  # let the relay publish what it will while the cabinet is away
        sim = self.start_sim(cab)
        sim.wait_connected(30)
        # from boot (before WiFi/MQTT connect): the queued credit can arrive, and pulse, while the
        # firmware is still publishing its online status, before it prints "connected"
        t_conn = sim.events("boot")[0]["t"]
        per = (self.args.pulse_ms or 100) + (self.args.gap_ms or 150)
        try:
            last = first_edge_last(sim, sids[-1], 3 + k * per / 1000.0 * 3)
        except TimeoutError:
            last = None
        got = len(pulsed_sessions(sim) & set(sids))
        if last is not None:
            wait_idle(sim, sids[-1], 30)
        return (last["t"] - t_conn) if last else None, got

    def broker_restart(self, url):
        cab = self.cabs[1 % len(self.cabs)]
        sim = self.sims[cab]
        t_down = time.monotonic()
        self.broker.restart()
        t_up_wall, t_up = time.time(), time.monotonic()
        http = Http(url)
        sids = []
        first = None
        try:
            while time.monotonic() - t_up < 20 and first is None:
                sid, body = new_payment(cab)
                try:
                    http.post(body, stripe_events.signature_header(body, self.whsec))
                    sids.append(sid)
                except OSError:
                    pass
                deadline = time.monotonic() + 0.2
                while time.monotonic() < deadline and first is None:
                    hits = [x for x in sim.events("pulse") if x.get("session") in sids]
                    if hits:
                        first = min(x["t"] for x in hits)
                    else:
                        time.sleep(0.01)
        finally:
            http.close()
        per = (self.args.pulse_ms or 100) + (self.args.gap_ms or 150)
        try:
            stack.wait_until(lambda: set(sids) <= pulsed_sessions(sim), 5 + len(sids) * per / 1000.0 * 3,
                             what="all payments sent after the restart pulsed")
        except TimeoutError:
            pass
        lost = len(set(sids) - pulsed_sessions(sim))
        return (first - t_up_wall) if first else None, len(sids), lost, t_up - t_down

    def run_design(self, name):
        a = self.args
        proc = self.design(name).start()
        try:
            self.wait_ready(name, proc)
            say("[%s] latency: %d payments over %d cabinets" % (name, a.payments, len(self.cabs)))
            edge, resp = self.latency(proc.webhook_url, a.payments)
            say("[%s] throughput: %d webhooks, %d keep-alive senders" % (name, a.webhooks, a.senders))
            rate, ok, elapsed = self.throughput(proc.webhook_url, a.webhooks, a.senders)
            say("[%s] reconnect: %d payments queued while a cabinet is stopped" % (name, a.queued))
            rec, rec_got = self.reconnect(proc.webhook_url, a.queued)
            say("[%s] broker restart" % name)
            res, res_sent, res_lost, down = self.broker_restart(proc.webhook_url)
            if name.startswith("relay"):
                stack.wait_until(lambda: proc.health().get("broker") == "ok", 20, what="relay reconnected")
            mem = rss(proc.proc.pid)
        finally:
            proc.stop()
        return {
            "edge_ms": {"p50": ms(pct(edge, 50)), "p95": ms(pct(edge, 95)), "p99": ms(pct(edge, 99)),
                        "max": ms(max(edge)), "n": len(edge)},
            "webhook_response_ms": {"p50": ms(pct(resp, 50)), "p99": ms(pct(resp, 99))},
            "webhooks_per_s": round(rate, 1), "throughput_ok": ok, "throughput_s": round(elapsed, 2),
            "reconnect_to_last_pulse_ms": ms(rec),
            "reconnect_pulse_floor_ms": (a.queued - 1) * ((a.pulse_ms or 100) + (a.gap_ms or 150)), "reconnect_delivered": rec_got, "reconnect_queued": a.queued,
            "broker_restart_to_credit_ms": ms(res), "broker_restart_sent": res_sent,
            "broker_restart_lost": res_lost, "broker_down_ms": ms(down),
            "rss_mib": round(mem.get("VmRSS", 0), 1), "hwm_mib": round(mem.get("VmHWM", 0), 1),
        }

    def growth(self, sizes, n):
        db = self.work / "growth.db"
        from relay.ledger import open_ledger
        with open_ledger(str(db)) as ledger:
            sink_secret = ledger.add_cabinet("sink-g", price_cents=PRICE)
        del sink_secret  # only the relay needs it
        out = []
        for size in sizes:
            bulk_fill(db, size)
            relay = stack.Relay(self.work / "growth", str(db), self.broker.url, self.whsec).start()
            try:
                stack.wait_until(lambda: relay.health().get("broker") == "ok", 20, what="relay up")
                http = Http(relay.webhook_url)
                times = []
                try:
                    for _ in range(n):
                        sid, body = new_payment("sink-g")
                        header = stripe_events.signature_header(body, self.whsec)
                        t0 = time.perf_counter()
                        if http.post(body, header) != 200:
                            raise RuntimeError("webhook refused during the ledger-size run")
                        times.append(time.perf_counter() - t0)
                finally:
                    http.close()
            finally:
                relay.stop()
            rows = sqlite3.connect(str(db))
            try:
                count = rows.execute("SELECT COUNT(*) FROM payments").fetchone()[0]
            finally:
                rows.close()
            out.append({"ledger_payments": count, "p50_ms": ms(pct(times, 50)), "p99_ms": ms(pct(times, 99)),
                        "n": len(times), "db_mib": round(os.path.getsize(db) / 1048576.0, 1)})
            say("ledger %d payments: webhook p50 %.2f ms, p99 %.2f ms" % (count, out[-1]["p50_ms"], out[-1]["p99_ms"]))
        return out


def first_edge_last(sim, sid, timeout):
    """The first edge of the last pulse of credit `sid` (its n == of line)."""
    return sim.wait_for(lambda ls: find(ls, lambda x: x.get("event") == "pulse" and x.get("session") == sid
                                        and x.get("n") == x.get("of")), timeout, "last pulse of " + sid)


def ms(seconds):
    return None if seconds is None else round(seconds * 1000.0, 2)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 2)


ROWS = [
    ("webhook -> first coin edge p50 (ms)", ("edge_ms", "p50")),
    ("webhook -> first coin edge p95 (ms)", ("edge_ms", "p95")),
    ("webhook -> first coin edge p99 (ms)", ("edge_ms", "p99")),
    ("webhook response p50 (ms)", ("webhook_response_ms", "p50")),
    ("webhook response p99 (ms)", ("webhook_response_ms", "p99")),
    ("verified webhooks/s (keep-alive)", ("webhooks_per_s",)),
    ("cabinet reconnect -> last queued pulse (ms)", ("reconnect_to_last_pulse_ms",)),
    ("  of which coin timing alone, (K-1)(width+gap)", ("reconnect_pulse_floor_ms",)),
    ("queued payments pulsed after reconnect", ("reconnect_delivered",)),
    ("broker restart -> next credit pulsed (ms)", ("broker_restart_to_credit_ms",)),
    ("payments lost around the broker restart", ("broker_restart_lost",)),
    ("relay RSS (MiB)", ("rss_mib",)),
    ("relay peak RSS (MiB)", ("hwm_mib",)),
]


def get(d, path):
    for k in path:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def _cell(result, design, path):
    value = get(result.get(design) or {}, path)
    if path == ("reconnect_delivered",) and value is not None:
        return "%s/%s" % (value, result[design]["reconnect_queued"])
    if path == ("broker_restart_lost",) and value is not None:
        return "%s/%s" % (value, result[design]["broker_restart_sent"])
    return value


def table(result):
    """relay and naive with their ratio; relay on PostgreSQL and its ratio to naive when it ran."""
    pg = "relay-postgresql" in result
    head = ("figure", "relay", "naive", "ratio") + (("relay-pg", "pg/naive") if pg else ())
    lines = [("%-46s %12s %12s %8s" + (" %12s %8s" if pg else "")) % head]
    for label, path in ROWS:
        cells = [_cell(result, d, path) for d in ("relay", "naive", "relay-postgresql")]
        if path == ("reconnect_pulse_floor_ms",):
            cells[1] = None
        plain = path not in (("reconnect_pulse_floor_ms",), ("reconnect_delivered",), ("broker_restart_lost",))
        r = ratio(cells[0], cells[1]) if plain else None
        rp = ratio(cells[2], cells[1]) if plain else None
        row = [label] + ["-" if c is None else c for c in cells[:2]] + ["-" if r is None else "%.2fx" % r]
        fmt = "%-46s %12s %12s %8s"
        if pg:
            row += ["-" if cells[2] is None else cells[2], "-" if rp is None else "%.2fx" % rp]
            fmt += " %12s %8s"
        lines.append(fmt % tuple(row))
    lines.append("")
    lines.append("relay webhook latency as the ledger grows:")
    for g in result.get("growth", []):
        lines.append("  %9d payments (%6.1f MiB): p50 %6.2f ms  p99 %6.2f ms  (n=%d)"
                     % (g["ledger_payments"], g["db_mib"], g["p50_ms"], g["p99_ms"], g["n"]))
    return "\n".join(lines)

