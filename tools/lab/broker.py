"""Start and stop a private mosquitto: its own port, config and data directory.

Used by `arcade demo`, the test suite and the benchmarks. Nothing here touches the
system's mosquitto service.
"""
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from relay import mosquitto as mosquitto_conf


def free_port(host="127.0.0.1"):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def mosquitto_path():
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if not found:
        raise RuntimeError("mosquitto is not installed: run `make setup` (installs it with apt) "
                           "or `apt-get install mosquitto`")
    return found


def wait_port(host, port, timeout=10.0, proc=None):
    """Wait until something accepts TCP connections on host:port (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.02)
    return False


def end_process(proc, sig=signal.SIGTERM, timeout=10.0):
    """Send `sig` to a child and reap it; SIGKILL it if it outlives `timeout`."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


class Mosquitto:
    """A mosquitto process on a free loopback port, with its config and data under `workdir`."""

    def __init__(self, workdir, port=None, persistence=True, autosave_interval=1, extra_conf="",
                 tls=None, logins=None, prefix="arcade"):
        self.workdir = Path(workdir)
        # logins: a ledger's broker_logins(): then the configuration is what `arcade broker config`
        # writes (a login per cabinet, the relay's, the ACL, no anonymous access), plus the lab's
        # logging and the current user; without, an open broker for tests that need no identities.
        self.logins = logins
        self.prefix = prefix
        self.port = port or free_port()
        # tls: {"cafile", "certfile", "keyfile"[, "port"]} adds a TLS listener (TLS 1.2, the
        # version an ESP32's mbedTLS speaks) next to the plain one.
        self.tls = dict(tls) if tls else None
        self.tls_port = (self.tls.get("port") or free_port()) if self.tls else None
        self.persistence = persistence
        self.autosave_interval = autosave_interval
        self.extra_conf = extra_conf
        self.proc = None
        self.data_dir = self.workdir / "data"
        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"

    @property
    def url(self):
        return "mqtt://127.0.0.1:%d" % self.port

    def url_for(self, user, password, port=None):
        """mqtt:// URL with a login (see `logins`); `port`: another way in (a fault proxy's)."""
        return mosquitto_conf.relay_url(user, password, "127.0.0.1", port or self.port)

    @property
    def relay_url(self):
        """The relay's own login (a broker started with `logins`)."""
        return self.url_for(*self.logins["relay"])

    def cabinet_url(self, cab, port=None):
        """Cabinet `cab`'s own login (a broker started with `logins`)."""
        return self.url_for(cab, dict(self.logins["cabinets"])[cab], port)

    def reload(self, logins):
        """New logins (a cabinet added, disabled or re-keyed): rewrite the files, SIGHUP mosquitto."""
        self.logins = logins
        self._write_conf()
        self.proc.send_signal(signal.SIGHUP)

    def tls_url(self, host="localhost"):
        """mqtts:// URL of the TLS listener; `host` must be a name the certificate carries."""
        if not self.tls:
            raise RuntimeError("this broker has no TLS listener: pass tls={cafile, certfile, keyfile}")
        return "mqtts://%s:%d" % (host, self.tls_port)

    def _write_conf(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        if self.logins is not None:
            lab = ["autosave_interval %d" % self.autosave_interval, "max_inflight_messages 20",
                   "log_dest file %s" % self.log_path, "log_type all", "connection_messages true",
                   "user %s" % getpass.getuser(), self.extra_conf]
            if not self.persistence:
                lab.append("persistence false")
            lab += self._tls_lines()
            mosquitto_conf.write_config(self.workdir, self.logins, self.prefix, "127.0.0.1", self.port, extra=lab)
            return
        lines = [
            "listener %d 127.0.0.1" % self.port,
            "allow_anonymous true",
            "persistence %s" % ("true" if self.persistence else "false"),
            "persistence_location %s/" % self.data_dir,
            "autosave_interval %d" % self.autosave_interval,
            "max_queued_messages 10000",
            "max_inflight_messages 20",
            "log_dest file %s" % self.log_path,
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "set_tcp_nodelay true",  # credits are tiny: Nagle + delayed ACK would add ~40 ms per hop
            # Started as root, mosquitto drops to user "mosquitto", who can't write the log and the
            # persistence file into a private work dir (or read a 0600 key): stay who we are.
            "user %s" % getpass.getuser(),
            self.extra_conf,
        ]
        lines += self._tls_lines()
        self.conf_path.write_text("\n".join(lines) + "\n")

    def _tls_lines(self):
        if not self.tls:
            return []
        return ["listener %d 127.0.0.1" % self.tls_port,
                "cafile %s" % self.tls["cafile"],
                "certfile %s" % self.tls["certfile"],
                "keyfile %s" % self.tls["keyfile"],
                "tls_version tlsv1.2"]

    def start(self, timeout=10.0):
        self._write_conf()
        self.proc = subprocess.Popen([mosquitto_path(), "-c", str(self.conf_path)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        up = wait_port("127.0.0.1", self.port, timeout, self.proc)
        if up and self.tls:
            up = wait_port("127.0.0.1", self.tls_port, timeout, self.proc)
        if not up:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.poll() is not None else ""
            self.stop()
            raise RuntimeError("mosquitto did not start on port %d: %s (see %s)" % (self.port, err.strip(), self.log_path))
        return self

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        """Stop it. SIGTERM lets mosquitto save its persistence file; SIGKILL does not."""
        if self.proc is None:
            return
        end_process(self.proc, sig, timeout)
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def restart(self, persistence=None, wipe=False):
        self.stop()
        if persistence is not None:
            self.persistence = persistence
        if wipe and self.data_dir.exists():
            shutil.rmtree(self.data_dir)
        return self.start()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
