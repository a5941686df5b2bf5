"""Start, kill and restart a private 3-node NATS Server cluster with JetStream and its MQTT listener.

The clustered broker of issue 12 (docs/scale.md, "The broker as a cluster"): each node has its own
server_name, client port (never 4222), cluster port with routes to the others, JetStream store dir,
MQTT listener and monitoring port, all on loopback under `workdir`. Nothing here touches a system
nats-server. MQTT in NATS is 3.1.1 only; persistent sessions, retained messages and QoS 1 live in
JetStream streams ($MQTT_sess, $MQTT_rmsgs, $MQTT_msgs) replicated on all three nodes
(stream_replicas 3; consumers inherit it), so a node's loss loses no session and no queued credit.

Logins (`logins`, a ledger's broker_logins()) become NATS users with per-user permissions on the
mapped subjects (MQTT topic arcade/cab/credit is subject arcade.cab.credit), what relay/mosquitto.py's
ACL says for mosquitto: see `nats_users`.
"""
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt

from relay import mosquitto as mosquitto_conf
from tools.lab.broker import end_process, free_port, wait_port

# QoS 1 messages the server sends a subscription before a PUBACK (a cabinet has one credit in
# flight; the relay's ack/status subscriptions hear every cabinet) and when it sends one again.
MAX_ACK_PENDING = 1000
ACK_WAIT = "10s"


def nats_server_path():
    found = shutil.which("nats-server") or ("/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server")
                                            else None)
    if not found:
        raise RuntimeError("nats-server is not installed: run `make setup` (installs it with apt) "
                           "or `apt-get install nats-server`")
    return found


def _q(text):
    return json.dumps(str(text))      # a NATS config string: JSON's quoting is a subset it reads


def nats_users(logins, prefix="arcade"):
    """The `users` of a NATS authorization block: the relay and each cabinet with their own password,
    MQTT connections only (no NATS-protocol client can subscribe to JetStream's internals), and
    permissions on the subjects their topics map to. `$MQTT.sub.>`: NATS delivers each QoS 1
    subscription through an inbox of that form on the client's own connection; an MQTT client can't
    subscribe to it by topic (the server refuses such filters), so it opens nobody else's messages."""
    def user(name, password, pub, sub):
        return ("{user: %s, password: %s, allowed_connection_types: [\"MQTT\"], permissions: {publish: {allow: [%s]}, "
                "subscribe: {allow: [%s]}}}" % (_q(name), _q(password), ", ".join(_q(s) for s in pub),
                                                  ", ".join(_q(s) for s in sub + ["$MQTT.sub.>"])))
    relays = [logins["relay"]] + list(logins.get("relays", ()))
    out = [user(name, pw, ["%s.*.%s" % (prefix, k) for k in ("credit", "test", "ota", "config")],
                ["%s.*.%s" % (prefix, k) for k in ("ack", "status", "config")]) for name, pw in relays]
    for cab, pw in logins["cabinets"]:
        out.append(user(cab, pw, ["%s.%s.%s" % (prefix, cab, k) for k in ("ack", "status")],
                        ["%s.%s.%s" % (prefix, cab, k) for k in ("credit", "config", "test", "ota")]))
    return out


class NatsCluster:
    """Three nats-server processes forming one JetStream cluster, each with an MQTT listener."""

    def __init__(self, workdir, logins=None, prefix="arcade", nodes=3, ack_wait=ACK_WAIT):
        self.workdir = Path(workdir)
        self.logins = logins        # None: anonymous access (tests that need no identities)
        self.prefix = prefix
        self.ack_wait = ack_wait
        self.names = ["n%d" % (i + 1) for i in range(nodes)]
        self.ports = {n: {"client": free_port(), "cluster": free_port(), "mqtt": free_port(), "http": free_port()}
                      for n in self.names}
        self.procs = {}

    # -- addresses ----------------------------------------------------------------------------

    def mqtt_port(self, node):
        return self.ports[node]["mqtt"]

    def urls(self, user=None, password=None, order=None, via=None):
        """One mqtt:// URL per node (with a login if given), in `order` (node names) or n1, n2, n3;
        `via`: {node: port} another way in to that node (a fault proxy in front of its MQTT port)."""
        out = []
        for node in order or self.names:
            port = (via or {}).get(node) or self.mqtt_port(node)
            out.append(mosquitto_conf.relay_url(user, password, "127.0.0.1", port) if user
                       else "mqtt://127.0.0.1:%d" % port)
        return out

    def url_list(self, user=None, password=None, order=None, via=None):
        """MQTT_URL for the relay: the nodes' URLs, comma-separated."""
        return ",".join(self.urls(user, password, order, via))

    @property
    def relay_url(self):
        return self.url_list(*self.logins["relay"])

    def cabinet_urls(self, cab, order=None, via=None):
        return self.urls(cab, dict(self.logins["cabinets"])[cab], order, via)

    def node_of_port(self, port):
        return next(n for n in self.names if self.ports[n]["mqtt"] == port)

    # -- files --------------------------------------------------------------------------------

    def _conf(self, node):
        p = self.ports[node]
        routes = ", ".join("nats-route://127.0.0.1:%d" % self.ports[o]["cluster"] for o in self.names if o != node)
        store = self.workdir / node / "js"
        lines = [
            "# a node of the lab's NATS cluster (tools/lab/nats.py); generated, every path absolute",
            "server_name: %s" % node,
            "listen: 127.0.0.1:%d" % p["client"],
            "http: 127.0.0.1:%d" % p["http"],
            "max_payload: %d" % (64 * 1024),
            "jetstream { store_dir: %s, max_memory_store: 64MB, max_file_store: 1GB }" % _q(store),
            "cluster { name: arcade, listen: 127.0.0.1:%d, routes: [%s], connect_retries: 120 }"
            % (p["cluster"], routes),
            # stream_replicas 3: sessions, retained messages and queued QoS 1 messages on every node;
            # consumers (one per QoS 1 subscription) inherit it, so a cabinet's unacknowledged credit
            # survives the loss of the node it was connected to
            "mqtt { listen: 127.0.0.1:%d, ack_wait: %s, max_ack_pending: %d, stream_replicas: %d }"
            % (p["mqtt"], _q(self.ack_wait), MAX_ACK_PENDING, min(3, len(self.names))),
        ]
        if self.logins is not None:
            lines.append("authorization { users: [\n  %s\n] }" % ",\n  ".join(nats_users(self.logins, self.prefix)))
        return "\n".join(lines) + "\n"

    def _write(self, node):
        d = self.workdir / node
        (d / "js").mkdir(parents=True, exist_ok=True)
        path = d / "nats.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)    # it holds the passwords
        with os.fdopen(fd, "w") as f:
            f.write(self._conf(node))
        return path

    def log_path(self, node):
        return self.workdir / node / "nats.log"

    # -- life cycle ---------------------------------------------------------------------------

    def start_node(self, node):
        conf = self._write(node)
        log = open(self.log_path(node), "ab")
        try:
            self.procs[node] = subprocess.Popen([nats_server_path(), "-c", str(conf), "-l", str(self.log_path(node))],
                                                stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL)
        finally:
            log.close()

    def start(self, timeout=30.0):
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            for node in self.names:
                self.start_node(node)
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _get(self, node, path):
        url = "http://127.0.0.1:%d%s" % (self.ports[node]["http"], path)
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            try:
                return json.load(e)
            except ValueError:
                return None
        except (OSError, ValueError):
            return None

    def alive(self, node):
        proc = self.procs.get(node)
        return proc is not None and proc.poll() is None

    def _ready(self, nodes):
        for node in nodes:
            if not self.alive(node):
                raise RuntimeError("nats-server %s exited with %s (log: %s)" % (
                    node, self.procs[node].returncode if node in self.procs else "?", self.log_path(node)))
            jsz = self._get(node, "/jsz")
            health = self._get(node, "/healthz?js-server-only=true")   # its streams may still catch up
            varz = self._get(node, "/varz")
            if not jsz or not health or health.get("status") != "ok" or not varz:
                return False
            if not (jsz.get("meta_cluster") or {}).get("leader"):
                return False
            routez = self._get(node, "/routez") or {}
            if len({r.get("remote_id") for r in routez.get("routes") or []}) < len(self.alive_nodes()) - 1:
                return False
        return all(wait_port("127.0.0.1", self.mqtt_port(n), 0.2) and self._mqtt_ok(n) for n in nodes)

    def _mqtt_ok(self, node):
        """An MQTT CONNECT gets its CONNACK accepted: the node reached JetStream and the $MQTT streams
        (made by the first MQTT connection, replicated on three nodes) exist."""
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="arcade-lab-probe-" + node,
                             protocol=mqtt.MQTTv311, clean_session=True)
        if self.logins is not None:
            client.username_pw_set(*self.logins["relay"])
        try:
            client.connect("127.0.0.1", self.mqtt_port(node), keepalive=10)
            client.socket().settimeout(10.0)
            deadline = time.monotonic() + 10.0
            while not client.is_connected() and time.monotonic() < deadline:
                if client.loop(0.2) != mqtt.MQTT_ERR_SUCCESS:
                    return False
            ok = client.is_connected()
            client.disconnect()
            return ok
        except OSError:
            return False

    def alive_nodes(self):
        return [n for n in self.names if self.alive(n)]

    def wait_ready(self, timeout=30.0, nodes=None):
        """Bounded: every (given) node is up, routed to the other live ones, JetStream has a meta
        leader and the node reports healthy, and the MQTT port accepts connections."""
        nodes = nodes or self.alive_nodes()
        deadline = time.monotonic() + timeout
        while not self._ready(nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the NATS cluster was not ready within %.0f s (logs: %s)" % (
                    timeout, ", ".join(str(self.log_path(n)) for n in nodes)))
            time.sleep(0.1)
        return self

    def lagging(self):
        """The $MQTT streams whose leader does not see every live node as a current replica; [] when
        they are caught up. (Consumers are left out: in 2.9.10 a restarted node's replicas of busy
        consumers were never reported current within 30 s, though deliveries went on.)"""
        alive, out = set(self.alive_nodes()), []
        for node in alive:
            jsz = self._get(node, "/jsz?accounts=true&streams=true") or {}
            for acc in jsz.get("account_details") or []:
                for st in acc.get("stream_detail") or []:
                    cl = st.get("cluster") or {}
                    if cl.get("leader") != node:
                        continue
                    current = {r["name"] for r in cl.get("replicas") or [] if r.get("current")} | {node}
                    if not alive <= current:
                        out.append(st["name"])
        return out

    def wait_current(self, timeout=30.0):
        """Bounded: after a restart, until every $MQTT stream has its replicas on every live node current
        (killing another node before that leaves a stream without a quorum for a while)."""
        deadline = time.monotonic() + timeout
        while True:
            late = self.lagging()
            if not late:
                return self
            if time.monotonic() > deadline:
                raise RuntimeError("the NATS cluster did not catch up within %.0f s: %s" % (timeout, ", ".join(late)))
            time.sleep(0.2)

    def kill(self, node):
        """SIGKILL one node: no goodbye to its clients or its peers."""
        proc = self.procs.pop(node, None)
        if proc is not None:
            end_process(proc, signal.SIGKILL)

    def restart(self, node, timeout=30.0):
        self.kill(node)
        self.start_node(node)
        return self.wait_ready(timeout)

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        for node in list(self.procs):
            end_process(self.procs.pop(node), sig, timeout)

    def mqtt_clients(self, node):
        """The MQTT client ids connected to `node` (its monitoring port's /connz)."""
        connz = self._get(node, "/connz?limit=1024") or {}
        return [c.get("mqtt_client") for c in connz.get("connections") or [] if c.get("mqtt_client")]

    def node_of(self, client_id):
        """The live node `client_id` is connected to, or None."""
        for node in self.alive_nodes():
            if client_id in self.mqtt_clients(node):
                return node
        return None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
