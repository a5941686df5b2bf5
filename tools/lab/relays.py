"""Several `arcade relay` processes on one PostgreSQL database behind a real load balancer (nginx):
the multi-relay fault tests and `make soak RELAYS=N` share this.

Each relay has its own name (r1, r2, ...: its broker client id ends with it), its own port, log and
working directory, and reaches PostgreSQL through its own TCP proxy (tools/lab/tcpproxy.py), so a
test can cut one relay off from the database (`partition`) while the others go on. `mqtt_url` is a
function of the relay's name: each relay logs in to the broker with its own login (the ledger's
relay_login), as the broker takes the login as the client id. In `env`, "{relay}" in a value is
replaced by the relay's name (a per-relay alert webhook address, say, to tell who sent what).
"""
import re
import signal
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tools.lab import stack
from tools.lab.loadbalancer import LoadBalancer
from tools.lab.tcpproxy import TcpProxy


def _via(url, port):
    """The same postgresql:// URL, through 127.0.0.1:port."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = "127.0.0.1:%d" % port
    return urlunsplit(parts._replace(netloc=(netloc[0] + "@" + host) if len(netloc) == 2 else host))


class Relays:
    def __init__(self, workdir, db_url, mqtt_url, webhook_secret, n=3, env=None):
        if not db_url.startswith("postgresql://"):
            raise ValueError("several relays need a PostgreSQL database (ARCADE_DB=postgresql://...)")
        self.workdir = Path(workdir)
        self.db_url, self.mqtt_url, self.whsec = db_url, mqtt_url, webhook_secret
        self.names = ["r%d" % (i + 1) for i in range(n)]
        self.env = dict(env or {})
        self.ports = {name: stack.free_port() for name in self.names}
        self.db_proxies = {}
        self.procs = {}
        self.stopped = set()        # SIGSTOPped now
        self.cut = set()            # cut off from PostgreSQL now
        self.lb = LoadBalancer(self.workdir / "nginx", [self.ports[name] for name in self.names])

    @property
    def webhook_url(self):
        return self.lb.webhook_url

    def start(self):
        db_port = urlsplit(self.db_url).port or 5432
        for name in self.names:
            self.db_proxies[name] = TcpProxy(db_port).start()
        for name in self.names:
            self.start_one(name)
        self.lb.start()
        return self

    def start_one(self, name, timeout=30.0):
        last = None
        for _ in range(20):     # the port may still be held by the killed process's socket for a moment
            relay = stack.Relay(self.workdir / name, _via(self.db_url, self.db_proxies[name].port), self.mqtt_url(name),
                                self.whsec, port=self.ports[name], extra_env=self.env_for(name))
            try:
                self.procs[name] = relay.start(timeout)
                return relay
            except RuntimeError as e:
                last = e
                relay.stop(timeout=5)
                time.sleep(0.25)
        raise RuntimeError("relay %s did not start: %s" % (name, last))

    def env_for(self, name):
        env = {key: str(value).replace("{relay}", name) for key, value in self.env.items()}
        return dict(env, ARCADE_RELAY_NAME=name)

    def leaders(self):
        """The names of the relays whose /healthz says they hold the leader lease now (paused or cut off
        ones are not asked: their answer could take the whole timeout)."""
        out = []
        for name in self.alive():
            try:
                if name not in self.stopped | self.cut and self.procs[name].health().get("leader"):
                    out.append(name)
            except OSError:         # killed a moment ago, or not listening yet
                pass
        return out

    def alive(self):
        return [name for name in self.names if name in self.procs and self.procs[name].alive()]

    def kill(self, name):
        self.procs[name].kill()

    def pause(self, name):
        self.procs[name].proc.send_signal(signal.SIGSTOP)
        self.stopped.add(name)

    def resume(self, name):
        self.procs[name].proc.send_signal(signal.SIGCONT)
        self.stopped.discard(name)

    def partition(self, name):
        """Cut relay `name` off from PostgreSQL: its links go silent (no FIN), new ones too."""
        self.db_proxies[name].blackhole(new=True)
        self.cut.add(name)

    def heal(self, name):
        self.db_proxies[name].resume()
        self.cut.discard(name)

    def stop(self):
        for name in list(self.stopped):
            self.resume(name)
        self.lb.stop()
        for relay in self.procs.values():
            relay.stop()
        for proxy in self.db_proxies.values():
            proxy.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- what the tests look at (the database's lease table, the broker's log) -----------------

    def holders(self):
        """cabinet -> the name of the relay holding its lease (read with psycopg, not the ledger)."""
        import psycopg
        with psycopg.connect(self.db_url) as conn:
            rows = conn.execute("SELECT cabinet_id, holder, expires_at > EXTRACT(EPOCH FROM clock_timestamp()) "
                                "FROM cabinet_leases").fetchall()
        return {cab: holder.split("/")[0] for cab, holder, live in rows if live}

    def tokens(self):
        import psycopg
        with psycopg.connect(self.db_url) as conn:
            return dict(conn.execute("SELECT cabinet_id, token FROM cabinet_leases").fetchall())


def credit_publishes(mosquitto_log, start=0):
    """[(client id, cabinet)] of every credit PUBLISH the broker received (its log, `log_type all`), from
    byte offset `start`: who published what, as the broker saw it."""
    text = Path(mosquitto_log).read_bytes()[start:].decode(errors="replace")
    return re.findall(r"Received PUBLISH from (\S+) \([^']*'[^/']+/([^/']+)/credit'", text)
