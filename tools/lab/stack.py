"""Run the real pieces as processes: the relay and simulated cabinets.

Shared by `arcade demo`, the end-to-end and fault tests and the benchmarks, so that all of them
exercise the same processes an operator runs. Each process logs to a file; simulated cabinets
also print JSON lines (pulses, acks) that are collected here and can be waited on.
"""
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from tools.lab.broker import end_process, free_port, wait_port

ROOT = Path(__file__).resolve().parents[2]


def _env(extra):
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Proc:
    """A child process with its stderr in a log file and its stdout lines collected."""

    def __init__(self, argv, env, log_path, name):
        self.argv, self.env, self.log_path, self.name = argv, env, Path(log_path), name
        self.proc = None
        self.lines = []            # parsed JSON lines from stdout (others are kept as {"text": ...})
        self._cond = threading.Condition()
        self._reader = None

    def start(self):
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=str(ROOT), stdout=subprocess.PIPE,
                                     stderr=self._log, stdin=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()
        return self

    def _read(self, proc):
        for raw in proc.stdout:
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            try:
                item = json.loads(line)
            except ValueError:
                item = {"text": line}
            if not isinstance(item, dict):
                item = {"value": item}
            with self._cond:
                self.lines.append(item)
                self._cond.notify_all()
        proc.stdout.close()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, predicate, timeout=20.0, what="condition"):
        """Wait (bounded) until predicate(lines) is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate(self.lines)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("%s: no %s within %.0f s (log: %s)" % (self.name, what, timeout, self.log_path))
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise RuntimeError("%s exited with %s while waiting for %s (log: %s)"
                                       % (self.name, self.proc.returncode, what, self.log_path))
                self._cond.wait(min(left, 0.5))

    def events(self, kind):
        with self._cond:
            return [x for x in self.lines if x.get("event") == kind]

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=10.0):
        if self.proc is None:
            return
        end_process(self.proc, sig, timeout)
        if self._reader is not None:
            self._reader.join(timeout)
        self._log.close()

    def kill(self):
        self.stop(signal.SIGKILL)


class WebhookEndpoint:
    """Where webhooks go on something listening on 127.0.0.1:self.port (a relay, a load balancer)."""

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def webhook_url(self):
        return self.url + "/stripe/webhook"


class Relay(WebhookEndpoint, Proc):
    """`arcade relay` on a free port."""

    def __init__(self, workdir, db, mqtt_url, webhook_secret, port=None, extra_env=None, extra_args=()):
        self.port = port or free_port()
        # a token for /healthz's details (the public sees only ok / not ok) and a public address on loopback
        self.metrics_token = (extra_env or {}).get("ARCADE_METRICS_TOKEN") or secrets.token_hex(16)
        env = _env({"ARCADE_DB": db, "MQTT_URL": mqtt_url, "STRIPE_WEBHOOK_SECRET": webhook_secret,
                    "ARCADE_PUBLIC_URL": "http://127.0.0.1:%d" % self.port, **(extra_env or {}),
                    "ARCADE_METRICS_TOKEN": self.metrics_token})
        argv = [sys.executable, "-m", "tools.cli", "relay", "--host", "127.0.0.1", "--port", str(self.port)]
        super().__init__(argv + list(extra_args), env, Path(workdir) / "relay.log", "relay")

    def start(self, timeout=20.0):
        super().start()
        if not wait_port("127.0.0.1", self.port, timeout, self.proc):
            raise RuntimeError("the relay did not start listening on %d (log: %s)" % (self.port, self.log_path))
        return self

    def health(self):
        try:
            req = urllib.request.Request(self.url + "/healthz",
                                         headers={"Authorization": "Bearer " + self.metrics_token})
            with urllib.request.urlopen(req, timeout=5) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            return json.load(e)


class Console(Proc):
    """`arcade console` (the operator's console, /admin) on a free port, on the relay's database."""

    def __init__(self, workdir, db, mqtt_url, port=None, extra_env=None):
        self.port = port or free_port()
        env = _env({"ARCADE_DB": db, "MQTT_URL": mqtt_url, **(extra_env or {})})
        argv = [sys.executable, "-m", "tools.cli", "console", "--host", "127.0.0.1", "--port", str(self.port)]
        super().__init__(argv, env, Path(workdir) / "console.log", "console")

    @property
    def url(self):
        # localhost, not 127.0.0.1: browsers keep a Secure cookie over plain http only for localhost
        return "http://localhost:%d" % self.port

    def start(self, timeout=20.0):
        super().start()
        if not wait_port("127.0.0.1", self.port, timeout, self.proc):
            raise RuntimeError("the console did not start listening on %d (log: %s)" % (self.port, self.log_path))
        return self


class Cabinet(Proc):
    """`arcade simulate`: the real firmware with simulated pins, its flash in `state_dir`."""

    def __init__(self, workdir, cabinet_id, secret, mqtt_url, state_dir=None, keepalive=None, extra_args=(),
                 extra_env=None):
        self.cabinet_id = cabinet_id
        self.state_dir = Path(state_dir or Path(workdir) / ("flash-" + cabinet_id))
        argv = [sys.executable, "-m", "tools.cli", "simulate", cabinet_id, "--state", str(self.state_dir)]
        if secret is not None:      # None: `simulate` reads it (and the cabinet's login) from ARCADE_DB
            # through a 0600 file, never argv (ps shows argv to every user)
            secret_file = Path(workdir) / ("secret-" + cabinet_id)
            fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secret + "\n")
            argv += ["--secret-file", str(secret_file)]
        if keepalive:
            argv += ["--keepalive", str(keepalive)]
        argv += list(extra_args)
        super().__init__(argv, _env(dict({"MQTT_URL": mqtt_url}, **(extra_env or {}))), Path(workdir) / ("cabinet-%s.log" % cabinet_id),
                         "cabinet " + cabinet_id)

    def wait_connected(self, timeout=20.0, count=1):
        return self.wait_for(lambda ls: len([x for x in ls if x.get("event") == "connected"]) >= count,
                             timeout, "MQTT connection")

    def pulses(self):
        return self.events("pulse")

    def epoch(self):
        """The epoch of the simulated board's journal (drawn at its first boot, kept in its flash)."""
        return json.loads((self.state_dir / "state.json").read_text())["epoch"]

    def wait_pulses(self, n, timeout=30.0):
        return self.wait_for(lambda ls: len([x for x in ls if x.get("event") == "pulse"]) >= n and
                             [x for x in ls if x.get("event") == "pulse"], timeout, "%d pulses" % n)


def session_books(paid, pins):
    """One cabinet's books from its pin, trusting neither ledger nor journal: `paid` = the sessions the
    caller paid for (one credit, one coin each), `pins` = its pulse lines. Lost: paid, never pulsed;
    doubled: pulsed twice, or pulsed for a session nobody paid this cabinet for."""
    by_session = {}
    for p in pins:
        by_session[p["session"]] = by_session.get(p["session"], 0) + 1
    return {"paid": len(paid), "pulses": len(pins),
            "lost": sorted(s for s in paid if s not in by_session),
            "doubled": sorted(s for s, n in by_session.items() if n > 1 or s not in paid)}


def wait_until(predicate, timeout=20.0, interval=0.05, what="condition"):
    """Poll a condition with a deadline (for state that lives in another process's database)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError("no %s within %.0f s" % (what, timeout))
        time.sleep(interval)
