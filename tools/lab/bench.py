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
from tools.lab.nats import NatsCluster
from tools.lab.postgres import Postgres, load_sqlite_dump
from tools.lab.relays import Relays

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


def cpu_seconds(pids):
    """User + system CPU seconds used so far by the processes `pids` (all their threads), from /proc."""
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])     # utime, stime (fields 14 and 15 of stat)
    return total / float(os.sysconf("SC_CLK_TCK"))


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


# Spaced latency: the pause after a payment's ack before the next payment (the relay has handled the ack).
SETTLE = 0.02


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

    def wait_ready(self):
        time.sleep(0.5)  # the naive relay has no health check; paho connects in the background

    @property
    def pid(self):
        return self.proc.pid

    @property
    def pids(self):
        return [self.proc.pid]


class OneRelay(stack.Relay):
    """`arcade relay` as a bench design: ready when its dispatcher is connected to the broker."""

    def wait_ready(self):
        stack.wait_until(lambda: self.health().get("broker") == "ok", 20, what="relay connected to the broker")

    @property
    def pid(self):
        return self.proc.pid

    @property
    def pids(self):
        return [self.proc.pid] + children(self.proc.pid)     # with --workers, its web worker processes


def children(pid):
    """The pids whose parent is `pid` (from /proc)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(name))
            except (OSError, ValueError, IndexError):
                pass
    return out


class RelayGroup(Relays):
    """N relays on one PostgreSQL database behind nginx (tools/lab/relays.py) as a bench design."""

    def wait_ready(self):
        for name in self.names:
            relay = self.procs[name]
            stack.wait_until(lambda: relay.health().get("broker") == "ok", 30,
                             what="relay %s connected to the broker" % name)

    @property
    def pids(self):
        return [relay.proc.pid for relay in self.procs.values()]


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

    def postgres_url(self):
        """A PostgreSQL ledger holding the SQLite ledger as it is now (same cabinets, secrets, counters),
        made once: the 3-relay design goes on with the database the 1-relay design left (its sequence
        counters continue, so the cabinets accept its credits)."""
        if self.postgres is None:
            say("[postgresql] starting a private PostgreSQL (initdb in a temp dir, fsync on)")
            self.postgres = Postgres(fsync=True).start()
            url = self.postgres.create_database("bench")
            src = sqlite3.connect(str(self.db))
            try:
                load_sqlite_dump(url, "\n".join(src.iterdump()))
            finally:
                src.close()
            self.pg_url = url
        return self.pg_url

    def design(self, name):
        spec = DESIGNS[name]
        return spec["start"](self)

    # -- figures -------------------------------------------------------------------------

    def latency(self, url, n, spaced=True):
        """`n` payments one at a time, round robin over the cabinets: [edge s], [response s]. Spaced:
        each payment waits until the one before it is pulsed and acked and SETTLE has passed, so that
        it is measured alone (latency, not queueing behind the relay's work on that ack). Back to back
        (spaced=False): each goes out the moment the previous one's first pulse is seen, which is when
        that cabinet finishes its pulse and acks: the payment meets the ack's work on the relay."""
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
                if spaced:
                    wait_idle(sim, sid, 30)
                    time.sleep(SETTLE)
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
        """Start design `name`, warm it up, then take its figures `--repeat` times (one process run).
        Returns {"reps": [figures of each repetition], "summary": {figure: median/min/max/n}, ...}."""
        a = self.args
        spec = DESIGNS[name]
        load_before = os.getloadavg()
        proc = self.design(name).start()
        reps = []
        try:
            proc.wait_ready()
            self.warm_up(name, proc.webhook_url)
            for rep in range(a.repeat):
                fig = {}
                say("[%s] %d/%d latency: %d payments over %d cabinets" % (name, rep + 1, a.repeat, a.payments,
                                                                           len(self.cabs)))
                edge, resp = self.latency(proc.webhook_url, a.payments)
                fig.update({"edge_p50_ms": ms(pct(edge, 50)), "edge_p95_ms": ms(pct(edge, 95)),
                            "edge_p99_ms": ms(pct(edge, 99)), "response_p50_ms": ms(pct(resp, 50)),
                            "response_p99_ms": ms(pct(resp, 99))})
                b2b = max(len(self.cabs), a.payments // 2)
                say("[%s] %d/%d latency back to back: %d payments" % (name, rep + 1, a.repeat, b2b))
                edge, _ = self.latency(proc.webhook_url, b2b, spaced=False)
                fig.update({"edge_b2b_p50_ms": ms(pct(edge, 50)), "edge_b2b_p99_ms": ms(pct(edge, 99))})
                say("[%s] %d/%d throughput: %d webhooks, %d keep-alive senders" % (name, rep + 1, a.repeat, a.webhooks,
                                                                                  a.senders))
                cpu, mine = cpu_seconds(proc.pids), time.process_time()
                rate, ok, elapsed = self.throughput(proc.webhook_url, a.webhooks, a.senders)
                cpu, mine = cpu_seconds(proc.pids) - cpu, time.process_time() - mine
                if ok != a.webhooks:
                    raise RuntimeError("%s: only %d of %d webhooks answered 2xx" % (name, ok, a.webhooks))
                fig["webhooks_per_s"] = round(rate, 1)
                # the server's own CPU per webhook (all its threads: web, dispatcher, paho) during the run
                fig["server_cpu_ms_per_webhook"] = round(cpu / ok * 1000.0, 3)
                fig["sender_cpu_ms_per_webhook"] = round(mine / ok * 1000.0, 3)    # this process: the senders
                if spec["faults"]:
                    say("[%s] %d/%d reconnect: %d payments queued while a cabinet is stopped" % (name, rep + 1, a.repeat,
                                                                                                 a.queued))
                    rec, rec_got = self.reconnect(proc.webhook_url, a.queued)
                    say("[%s] %d/%d broker restart" % (name, rep + 1, a.repeat))
                    res, res_sent, res_lost, down = self.broker_restart(proc.webhook_url)
                    fig.update({"reconnect_to_last_pulse_ms": ms(rec), "reconnect_delivered": rec_got,
                                "broker_restart_to_credit_ms": ms(res), "broker_restart_sent": res_sent,
                                "broker_restart_lost": res_lost})
                    proc.wait_ready()
                reps.append(fig)
            mem = rss(proc.pid) if spec["faults"] else {}
        finally:
            proc.stop()
        out = {"label": spec["label"], "reps": reps, "summary": summarize(reps),
               "loadavg": [round(x, 2) for x in load_before + os.getloadavg()]}
        if spec["faults"]:
            out.update({"reconnect_queued": a.queued,
                        "reconnect_pulse_floor_ms": (a.queued - 1) * ((a.pulse_ms or 100) + (a.gap_ms or 150)),
                        "rss_mib": round(mem.get("VmRSS", 0), 1), "hwm_mib": round(mem.get("VmHWM", 0), 1)})
        return out

    def warm_up(self, name, url):
        """Untimed: a few payments to the cabinets and a burst to the sinks (imports, caches, connections)."""
        n = self.args.warmup
        if n <= 0:
            return
        say("[%s] warm-up: %d payments, %d webhooks" % (name, len(self.cabs), n))
        self.latency(url, len(self.cabs))
        self.throughput(url, n, min(self.args.senders, n))

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


# -- the designs -------------------------------------------------------------------------------
# name -> label (docs), what starts it, whether the fault figures (reconnect, broker restart, RSS)
# are taken. Run in the order given; the PostgreSQL ones copy the SQLite ledger as the SQLite relay
# left it, so run "relay" before them.
# "relay-nats-cluster" moves the cabinets (same flash) from the bench's mosquitto to a 3-node NATS
# cluster for its run and back afterwards.

# each returns the design not yet started; run_design starts and stops it
def _start_relay(bench):
    return OneRelay(bench.work / "relay", str(bench.db), bench.broker.url, bench.whsec)


def _start_relay_workers(bench):
    return OneRelay(bench.work / "relay-workers", str(bench.db), bench.broker.url, bench.whsec,
                    extra_args=["--workers", "2"])


def _start_naive(bench):
    return Naive(bench.work, bench.cabfile, bench.broker.url, bench.whsec)


def _start_relay_pg(bench):
    return OneRelay(bench.work / "relay-postgresql", bench.postgres_url(), bench.broker.url, bench.whsec)


class NatsDesign:
    """The relay (SQLite ledger, MQTT 3.1.1) and the bench's cabinets on a private 3-node NATS cluster
    with JetStream (tools/lab/nats.py: each login its own NATS user, the $MQTT streams on all three
    nodes) instead of the bench's mosquitto: the cabinets move there with their flash for this run and
    back afterwards. The broker-restart and reconnect figures are mosquitto's (a node's loss is in
    docs/scale.md)."""

    def __init__(self, bench):
        self.bench = bench
        self.cluster = self.relay = None

    def start(self):
        from relay.ledger import open_ledger
        b = self.bench
        with open_ledger(str(b.db)) as ledger:
            logins = ledger.broker_logins()
        say("[relay-nats-cluster] starting a 3-node NATS cluster (JetStream, MQTT listeners)")
        self.cluster = NatsCluster(b.work / "nats", logins=logins).start()
        try:
            self._move(lambda cab: ",".join(self.cluster.cabinet_urls(cab)))
            self.relay = OneRelay(b.work / "relay-nats", str(b.db), self.cluster.url_list(*logins["relay"]), b.whsec,
                                  extra_env={"ARCADE_MQTT_VERSION": "3.1.1"}).start()
        except BaseException:
            self.stop()
            raise
        return self

    def _move(self, url_of):
        b = self.bench
        for cab in b.cabs:
            b.sims[cab].stop()
        for cab in b.cabs:
            b.sims[cab] = stack.Cabinet(b.work, cab, b.secrets[cab], url_of(cab), keepalive=30,
                                        extra_args=b.sim_args()).start()
        for cab in b.cabs:
            b.sims[cab].wait_connected(30)

    def stop(self):
        if self.relay is not None:
            self.relay.stop()
            self.relay = None
        if self.cluster is not None:
            self._move(lambda cab: self.bench.broker.url)     # back on mosquitto for the designs after
            self.cluster.stop()
            self.cluster = None

    def wait_ready(self):
        self.relay.wait_ready()

    @property
    def webhook_url(self):
        return self.relay.webhook_url

    @property
    def pid(self):
        return self.relay.pid

    @property
    def pids(self):
        return self.relay.pids


def _start_relays_pg(bench, n=3):
    return RelayGroup(bench.work / ("relays-postgresql-%d" % n), bench.postgres_url(), lambda name: bench.broker.url,
                      bench.whsec, n)


DESIGNS = {
    "relay": {"label": "relay, SQLite ledger", "start": _start_relay, "faults": True},
    "relay-workers": {"label": "relay, SQLite ledger, 2 web processes (--workers 2)", "start": _start_relay_workers,
                      "faults": False},
    "naive": {"label": "naive design (no ledger)", "start": _start_naive, "faults": True},
    "relay-postgresql": {"label": "relay, PostgreSQL ledger, 1 relay", "start": _start_relay_pg, "faults": False},
    "relay-postgresql-3": {"label": "PostgreSQL ledger, 3 relays behind nginx", "start": _start_relays_pg,
                           "faults": False},
    "relay-nats-cluster": {"label": "relay, SQLite ledger, 3-node NATS cluster (MQTT 3.1.1)", "start": NatsDesign,
                           "faults": False},
}


# -- summaries ---------------------------------------------------------------------------------

def median(values):
    s = sorted(values)
    n = len(s)
    if not n:
        return None
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2.0


def summarize(reps):
    """figure -> {median, min, max, n} over the repetitions (figures that were None are left out)."""
    out = {}
    for key in sorted({k for r in reps for k in r}):
        values = [r[key] for r in reps if r.get(key) is not None]
        if values:
            out[key] = {"median": round(median(values), 2), "min": min(values), "max": max(values), "n": len(values)}
    return out


def machine():
    """Where the figures were taken: cores, CPU model, load average, Python and kernel."""
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "model": model, "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "python": sys.version.split()[0], "kernel": os.uname().release}


def git_commit():
    """(commit, dirty) of the work tree the bench ran from; (None, None) outside git."""
    import subprocess
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None, None
    if head.returncode != 0:
        return None, None
    return head.stdout.strip(), bool(dirty.stdout.strip())


# -- the profile ------------------------------------------------------------------------------

def profile_webhook(n, top=30):
    """pyinstrument over `n` sequential verified webhooks through the relay's Flask app, in this process
    (Flask's test client: no HTTP server, no dispatcher), on a fresh SQLite ledger with synchronous=FULL.
    Returns {"webhooks", "ms_per_webhook", "lines"}: the call tree's top lines, times in seconds."""
    import tempfile
    try:
        from pyinstrument import Profiler
    except ImportError:
        raise RuntimeError("pyinstrument is not installed: run `make setup` (or pip install -e '.[bench]')")
    from relay import create_app
    from relay import db as db_module
    from relay.ledger import open_ledger
    with tempfile.TemporaryDirectory(prefix="arcade-profile-") as tmp:
        db = os.path.join(tmp, "arcade.db")
        with open_ledger(db) as ledger:
            ledger.add_cabinet("sink-p", price_cents=PRICE)
        whsec = "whsec_profile_" + secrets.token_hex(8)
        app = create_app({"ARCADE_DB": db, "STRIPE_WEBHOOK_SECRET": whsec, "MQTT_URL": "mqtt://127.0.0.1:1",
                          "ARCADE_PUBLIC_URL": "http://127.0.0.1"})
        db_module.keep_connections(app)        # as `arcade relay` serves it
        client = app.test_client()
        jobs = []
        for _ in range(n + 20):
            body = new_payment("sink-p")[1]
            jobs.append((body, stripe_events.signature_header(body, whsec)))
        for body, header in jobs[:20]:      # warm-up
            client.post("/stripe/webhook", data=body, headers={"Stripe-Signature": header})
        profiler = Profiler(interval=0.0005)
        t0 = time.perf_counter()
        profiler.start()
        for body, header in jobs[20:]:
            r = client.post("/stripe/webhook", data=body, headers={"Stripe-Signature": header,
                                                                    "Content-Type": "application/json"})
            if r.status_code != 200:
                raise RuntimeError("profile: the webhook answered %s" % r.status_code)
        profiler.stop()
        elapsed = time.perf_counter() - t0
        text = profiler.output_text(unicode=False, color=False, show_all=False, short_mode=False)
    lines = [ln.rstrip() for ln in text.splitlines()]
    # the call tree only (pyinstrument's banner holds the date and the script path)
    first = next((i for i, ln in enumerate(lines) if "FlaskClient.post" in ln or "profile_webhook" in ln), 0)
    tree = [ln for ln in lines[first:] if ln.strip()]
    return {"webhooks": n, "ms_per_webhook": round(elapsed / n * 1000.0, 3), "lines": tree[:top]}


# -- tables: printed, and the docs/benchmarks.md region generated from the JSON ----------------

# (label, figure key, unit, what "better" means is not needed: the ratio is relay / naive)
MAIN_ROWS = [
    ("webhook → first coin edge p50", "edge_p50_ms", "ms"),
    ("webhook → first coin edge p95", "edge_p95_ms", "ms"),
    ("webhook → first coin edge p99", "edge_p99_ms", "ms"),
    ("webhook → first coin edge p50, back to back (as the last cabinet acks)", "edge_b2b_p50_ms", "ms"),
    ("webhook → first coin edge p99, back to back", "edge_b2b_p99_ms", "ms"),
    ("webhook response p50", "response_p50_ms", "ms"),
    ("webhook response p99", "response_p99_ms", "ms"),
    ("verified webhooks/s (%(senders)s keep-alive senders)", "webhooks_per_s", "/s"),
    ("server CPU per webhook in that run (all its threads)", "server_cpu_ms_per_webhook", "ms"),
    ("the senders' CPU per webhook in that run (the bench)", "sender_cpu_ms_per_webhook", "ms"),
    ("cabinet reconnect → last of %(queued)s queued pulses", "reconnect_to_last_pulse_ms", "ms"),
    ("queued payments pulsed after reconnect", "reconnect_delivered", "of_queued"),
    ("broker restart → next credit pulsed", "broker_restart_to_credit_ms", "ms"),
    ("payments lost around the broker restart", "broker_restart_lost", "of_sent"),
]

# the engines table: one row per design that ran (the NATS-cluster design adds itself here)
ENGINE_ROWS = ["relay", "relay-workers", "relay-postgresql", "relay-postgresql-3", "relay-nats-cluster", "naive"]

BEGIN = "<!-- bench:begin: generated by `arcade bench --write-docs` from docs/bench/latest.json; do not edit -->"
END = "<!-- bench:end -->"


def _num(v, unit):
    if v is None:
        return "—"
    if isinstance(v, float) and v.is_integer() and unit not in ("ms",):
        v = int(v)
    if unit == "/s":
        return "{:,.0f}".format(v)
    if isinstance(v, float) and v >= 100:
        return "{:,.0f}".format(v)
    if isinstance(v, float) or unit == "ms":
        return "%.2f" % v
    return str(v)


def cell(design, key, unit):
    """'4.32 ms (4.10–4.61)': the median and the spread (min–max) over the repetitions."""
    fig = (design or {}).get("summary", {}).get(key)
    if fig is None:
        return "—"
    if unit == "of_queued":
        return "%s/%s (%s–%s)" % (_num(fig["median"], ""), design.get("reconnect_queued"), fig["min"], fig["max"])
    if unit == "of_sent":
        sent = design.get("summary", {}).get("broker_restart_sent", {}).get("median")
        return "%s/%s (%s–%s)" % (_num(fig["median"], ""), _num(sent, ""), fig["min"], fig["max"])
    suffix = " ms" if unit == "ms" else ""
    return "%s%s (%s–%s)" % (_num(fig["median"], unit), suffix, _num(fig["min"], unit), _num(fig["max"], unit))


def ratio_cell(a, b, key):
    fa = (a or {}).get("summary", {}).get(key)
    fb = (b or {}).get("summary", {}).get(key)
    r = ratio(fa and fa["median"], fb and fb["median"])
    return "—" if r is None else "%.2f×" % r


def render(result):
    """The Markdown the docs show for one bench JSON: a pure function of the file."""
    d = result["designs"]
    m = result["machine"]
    o = result["options"]
    commit = (result.get("commit") or "unknown")[:10] + (" (+ uncommitted changes)" if result.get("dirty") else "")
    out = ["%s UTC, commit %s, `%s`, %.0f s." % (result["time"].replace("T", " ")[:16], commit,
                                                  result.get("command", "arcade bench"), result["elapsed_s"]),
           "Machine: %s cores (%s), Python %s; load average %s at the start, %s at the end (other jobs share it:"
           " compare the ratios, taken in the same run)." % (m["cores"], m.get("model") or "unknown model",
                                                              m.get("python"), " / ".join("%.2f" % x for x in m["loadavg_start"]),
                                                              " / ".join("%.2f" % x for x in m.get("loadavg_end", []))),
           "Each figure: the median of %d repetitions after a warm-up, and (min–max) over them; %d payments for"
           " latency, %d webhooks for throughput, %d simulated cabinets."
           % (o["repeat"], o["payments"], o["webhooks"], o["cabinets"]), ""]
    if "relay" in d and "naive" in d:
        out += ["| figure | relay | naive | ratio |", "|---|---|---|---|"]
        for label, key, unit in MAIN_ROWS:
            plain = unit in ("ms", "/s")
            out.append("| %s | %s | %s | %s |" % (label % o, cell(d["relay"], key, unit), cell(d["naive"], key, unit),
                                                 ratio_cell(d["relay"], d["naive"], key) if plain else "—"))
        out.append("| relay RSS / peak (at the end) | %s / %s MiB | %s / %s MiB | — |"
                   % (d["relay"].get("rss_mib"), d["relay"].get("hwm_mib"), d["naive"].get("rss_mib"),
                      d["naive"].get("hwm_mib")))
        out.append("")
    rows = [name for name in ENGINE_ROWS if name in d] + sorted(n for n in d if n not in ENGINE_ROWS)
    if len(rows) > 1:
        out += ["Ledger engines and relays (ratios to the naive design in the same run):", "",
                "| design | verified webhooks/s | ratio | server CPU per webhook | webhook → first edge p50 | ratio "
                "| p99 | ratio |", "|---|---|---|---|---|---|---|---|"]
        for name in rows:
            x = d[name]
            out.append("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
                x.get("label", name), cell(x, "webhooks_per_s", "/s"), ratio_cell(x, d.get("naive"), "webhooks_per_s"),
                cell(x, "server_cpu_ms_per_webhook", "ms"), cell(x, "edge_p50_ms", "ms"), ratio_cell(x, d.get("naive"), "edge_p50_ms"),
                cell(x, "edge_p99_ms", "ms"), ratio_cell(x, d.get("naive"), "edge_p99_ms")))
        out.append("")
    if result.get("growth"):
        out += ["Webhook latency as the ledger grows (relay, SQLite):", "",
                "| ledger | database | webhook p50 | webhook p99 |", "|---|---|---|---|"]
        for g in result["growth"]:
            out.append("| {:,} payments | {} MiB | {:.2f} ms | {:.2f} ms |".format(g["ledger_payments"], g["db_mib"],
                                                                               g["p50_ms"], g["p99_ms"]))
        out.append("")
    prof = result.get("profile")
    if prof:
        out += ["Profile of the webhook path (pyinstrument, %d sequential webhooks through the relay's Flask app"
                " in one process, no HTTP server; %.2f ms a webhook; seconds, top lines):" % (prof["webhooks"],
                                                                                           prof["ms_per_webhook"]),
                "", "```"] + prof["lines"] + ["```", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def docs_region(text):
    """The generated part of docs/benchmarks.md (between the markers), or None without them."""
    if BEGIN not in text or END not in text:
        return None
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def write_docs(result, docs_path):
    """Replace the marked region of docs/benchmarks.md with render(result)."""
    text = Path(docs_path).read_text()
    if docs_region(text) is None:
        raise RuntimeError("%s has no %s ... %s region" % (docs_path, BEGIN, END))
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    Path(docs_path).write_text(head + BEGIN + "\n" + render(result) + END + tail)


def table(result):
    """The figures as printed at the end of a run (the same Markdown as the docs)."""
    return render(result)
