"""`arcade simulate` as a subprocess against a real mosquitto: pulses, signed acks, restart."""
import hashlib
import hmac
import json
import os
import queue
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

ROOT = Path(__file__).resolve().parents[1]
SECRET = "5e1f0c2a9b7d4e6f8a1b3c5d7e9f0a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f"
LEDGER = "0123456789abcdef0123456789abcdef"
WAIT = 15.0

pytestmark = pytest.mark.skipif(not (ROOT / "build/umqtt/umqtt/simple.py").exists(),
                                reason="pinned umqtt.simple not fetched (make umqtt)")


def sign(secret, kind, values):
    """A tiny local signer, independent of firmware/protocol.py."""
    canon = "\n".join([kind] + [str(v) for v in values]).encode()
    return hmac.new(secret.encode(), canon, hashlib.sha256).hexdigest()


def epoch_of(state):
    """The epoch the simulated board drew for its journal (it is in its flash from boot on)."""
    return json.loads((Path(state) / "state.json").read_text())["epoch"]


def credit(seq, pulses, session, secret=SECRET, cab="cab1", epoch=""):
    m = {"t": "credit", "cab": cab, "ledger": LEDGER, "seq": seq, "credits": pulses, "pulses": pulses,
         "session": session, "ts": int(time.time()), "epoch": epoch, "exp": 0}
    m["sig"] = sign(secret, "credit", [m[k] for k in ("cab", "ledger", "seq", "credits", "pulses",
                                                      "session", "ts", "epoch", "exp")])
    return json.dumps(m, separators=(",", ":")).encode()


def ack_verifies(m):
    want = sign(SECRET, "ack", [m[k] for k in ("cab", "ledger", "seq", "session", "result", "reason", "pulses",
                                               "last", "epoch")])
    return hmac.compare_digest(want, m["sig"])


class Sim:
    """One `arcade simulate` process; its stdout JSON lines are collected by a thread."""

    def __init__(self, tmp_path, url, state, *extra, cab="cab1", secret=SECRET):
        self.lines = queue.Queue()
        self.seen = []
        self.log = open(tmp_path / ("sim-%d.log" % time.monotonic_ns()), "w")
        env = dict(os.environ, MQTT_URL=url)
        env.pop("ARCADE_DB", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.cli", "simulate", cab, "--state", str(state),
             "--secret-file", "-", "--keepalive", "5", *extra],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.proc.stdin.write(secret + "\n")   # the secret never appears in argv (ps)
        self.proc.stdin.close()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for raw in self.proc.stdout:
            self.lines.put(json.loads(raw))
        self.lines.put(None)

    def next(self, event, timeout=WAIT):
        """Lines up to and including the next `event` one (bounded wait)."""
        got = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "no %r line within %ss; got %r" % (event, timeout, got)
            try:
                item = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            assert item is not None, "simulator exited early; got %r" % got
            got.append(item)
            self.seen.append(item)
            if item["event"] == event:
                return got

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(WAIT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(WAIT)
            self.reader.join(WAIT)
            self.proc.stdout.close()
            self.log.close()
        return rc


class Observer:
    """A paho client that records acks and statuses and publishes credits."""

    def __init__(self, port):
        self.msgs = queue.Queue()
        self.subscribed = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-observer")
        self.c.on_message = lambda c, u, msg: self.msgs.put((msg.topic, json.loads(msg.payload)))
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.c.subscribe([("arcade/cab1/ack", 1), ("arcade/cab1/status", 1)])
        assert self.subscribed.wait(WAIT)

    def publish(self, payload):
        info = self.c.publish("arcade/cab1/credit", payload, qos=1)
        info.wait_for_publish(WAIT)

    def next(self, topic, pred=lambda m: True, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                t, m = self.msgs.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if t == topic and pred(m):
                return m
        raise AssertionError("no matching message on %s within %ss" % (topic, timeout))

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def test_simulated_cabinet_pulses_acks_and_remembers_after_restart(broker, tmp_path):
    state = tmp_path / "flash"
    obs = Observer(broker.port)
    sim = Sim(tmp_path, broker.url, state)
    try:
        boot = sim.next("boot")[-1]
        assert (boot["recovered"], boot["journal"], boot["last"]) == (False, "fresh", 0)
        sim.next("connected")
        status = obs.next("arcade/cab1/status", lambda m: m["online"])
        assert (status["cab"], status["ledger"], status["last"]) == ("cab1", "", 0)

        good = credit(1, 3, "cs_test_sim_1", epoch=epoch_of(state))
        obs.publish(good)
        lines = sim.next("ack")
        pulses = [x for x in lines if x["event"] == "pulse"]
        assert [p["n"] for p in pulses] == [1, 2, 3]
        assert all(p["seq"] == 1 and p["of"] == 3 and p["width_ms"] >= 100 for p in pulses)
        assert [(x["event"], x["n"]) for x in lines if x["event"].startswith("pulse")] == \
            [("pulse_on", 1), ("pulse", 1), ("pulse_on", 2), ("pulse", 2), ("pulse_on", 3), ("pulse", 3)]
        assert lines[-1]["result"] == "applied"
        ack = obs.next("arcade/cab1/ack")
        assert ack_verifies(ack)
        assert (ack["result"], ack["seq"], ack["pulses"], ack["last"], ack["ledger"]) == \
            ("applied", 1, 3, 1, LEDGER)

        obs.publish(credit(2, 5, "cs_test_forged", secret="f" * 64))
        lines = sim.next("ack")
        assert [x["event"] for x in lines if x["event"] != "status"] == ["ack"], \
            "a forged credit gives no pulse"
        ack = obs.next("arcade/cab1/ack")
        assert ack_verifies(ack)
        assert (ack["result"], ack["reason"], ack["ledger"], ack["seq"], ack["session"], ack["pulses"],
                ack["last"]) == ("rejected", "bad_signature", "", 0, "", 0, 1)

        assert sim.stop() == 0
        assert sim.lines.get(timeout=WAIT)["event"] == "stopped", "clean stop on SIGTERM"
        flash = json.loads((state / "state.json").read_text())
        assert (flash["last"], flash["recent"], flash["cur"], flash["total"]) == (1, ["cs_test_sim_1"], None, 3)
        assert oct((state / "config.json").stat().st_mode & 0o777) == "0o600"

        sim = Sim(tmp_path, broker.url, state)
        boot = sim.next("boot")[-1]
        assert (boot["recovered"], boot["journal"], boot["last"], boot["ledger"]) == (False, "loaded", 1, LEDGER)
        sim.next("connected")
        obs.publish(good)          # the same credit delivered again
        lines = sim.next("ack")
        assert [x["event"] for x in lines if x["event"] != "status"] == ["ack"], "duplicate: no pulse"
        ack = obs.next("arcade/cab1/ack", lambda m: m["result"] != "applied")
        assert ack_verifies(ack)
        assert (ack["result"], ack["seq"], ack["pulses"], ack["last"]) == ("duplicate", 1, 0, 1)
    finally:
        sim.stop()
        obs.close()


def test_unknown_board_and_missing_secret_are_clear_errors(tmp_path):
    env = dict(os.environ)
    env.pop("ARCADE_DB", None)
    run = lambda *a: subprocess.run([sys.executable, "-m", "tools.cli", "simulate", *a], cwd=ROOT, env=env,
                                    capture_output=True, text=True, timeout=WAIT)
    r = run("cab1", "--state", str(tmp_path / "s"))
    assert r.returncode == 2 and "--secret-file" in r.stderr and "ARCADE_DB" in r.stderr and r.stdout == ""
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    r = run("cab1", "--state", str(tmp_path / "s"), "--secret-file", str(secret_file), "--board", "nope")
    assert r.returncode == 2 and "esp32-devkitc" in r.stderr
    secret_file.write_text("short\n")
    r = run("cab1", "--state", str(tmp_path / "s"), "--secret-file", str(secret_file))
    assert r.returncode == 2 and "64 hex digits" in r.stderr and "short" not in r.stderr
    r = run("cab/1", "--state", str(tmp_path / "s"), "--secret", SECRET)
    assert r.returncode == 2 and "'cabinet'" in r.stderr and SECRET not in r.stderr + r.stdout


def _packet(conn):
    """One MQTT packet (type byte, body) read from a socket."""
    head = conn.recv(1)
    if not head:
        return None, b""
    n, shift = 0, 0
    while True:
        more = conn.recv(1)
        if not more:                # the peer closed mid-packet (the simulator stopped): the link is over
            return None, b""
        b = more[0]
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    body = b""
    while len(body) < n:
        chunk = conn.recv(n - len(body))
        if not chunk:
            break
        body += chunk
    return head[0], body


def test_half_open_link_is_noticed_and_redialled(tmp_path):
    """A 'broker' that completes the handshake and then goes silent without closing."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(WAIT)
    accepted = queue.Queue()
    conns = []

    def serve():
        try:
            while True:
                conn, _ = srv.accept()
                conns.append(conn)
                accepted.put(time.monotonic())
                while True:
                    kind, body = _packet(conn)
                    if kind is None:
                        break
                    if kind >> 4 == 1:
                        conn.sendall(b"\x20\x02\x00\x00")
                    elif kind >> 4 == 8:
                        conn.sendall(b"\x90\x03" + body[:2] + b"\x01")
                    elif kind >> 4 == 3 and kind & 0x06:
                        tlen = struct.unpack("!H", body[:2])[0]
                        conn.sendall(b"\x40\x02" + body[2 + tlen:4 + tlen])
                        break          # from now on: silence, socket left open
        except OSError:
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    sim = Sim(tmp_path, "mqtt://127.0.0.1:%d" % srv.getsockname()[1], tmp_path / "flash", "--keepalive", "1")
    try:
        sim.next("connected")
        first = accepted.get(timeout=WAIT)
        lost = sim.next("disconnected", timeout=WAIT)[-1]
        assert "110" in lost["error"] or "timed out" in lost["error"]
        again = accepted.get(timeout=WAIT)
        assert again > first, "the simulator dialled again after the dead link"
    finally:
        sim.stop()
        srv.shutdown(socket.SHUT_RDWR)   # wakes the accept() in the server thread
        srv.close()
        t.join(WAIT)
        assert not t.is_alive()
        for c in conns:
            c.close()


def _signed(kind, fields, m):
    m["sig"] = sign(SECRET, kind, [m[k] for k in fields])
    return json.dumps(m, separators=(",", ":")).encode()


def test_inhibit_file_holds_the_credit_config_sets_timing_test_pulse(broker, tmp_path):
    state = tmp_path / "flash"
    blocker = tmp_path / "inhibit"
    blocker.write_text("")
    obs = Observer(broker.port)
    now = int(time.time())
    cfg = _signed("config", ("cab", "ver", "width_ms", "gap_ms", "coins_per_credit", "ts"),
                  {"t": "config", "cab": "cab1", "ver": now, "width_ms": 120, "gap_ms": 300,
                   "coins_per_credit": 2, "ts": now})
    # retained before the cabinet exists: it gets it on subscribing
    obs.c.publish("arcade/cab1/config", cfg, qos=1, retain=True).wait_for_publish(WAIT)
    sim = Sim(tmp_path, broker.url, state, "--inhibit-file", str(blocker))
    try:
        lines = sim.next("connected")        # the retained config comes with the subscription
        got = [x for x in lines if x["event"] == "config"]
        assert [(x["result"], x["detail"]) for x in got] == [("applied", now)]
        st = obs.next("arcade/cab1/status", lambda m: m.get("online") and m.get("cfg") == now)
        assert (st["inhibited"], st["width_ms"], st["gap_ms"], st["held"]) == (True, 120, 300, 0)
        assert st["fw"] and st["uptime"] >= 0 and "rssi" in st and "heap" in st

        obs.publish(credit(1, 2, "cs_test_inhibited", epoch=epoch_of(state)))
        lines = sim.next("held")
        assert lines[-1]["seq"] == 1 and not [x for x in lines if x["event"] == "pulse"]
        st = obs.next("arcade/cab1/status", lambda m: m.get("held") == 1)
        assert st["inhibited"] is True and st["last"] == 0

        blocker.unlink()                     # the game takes coins again
        lines = sim.next("ack")
        pulses = [x for x in lines if x["event"] == "pulse"]
        assert [(p["n"], p["seq"]) for p in pulses] == [(1, 1), (2, 1)]
        assert all(p["width_ms"] >= 120 for p in pulses), "the config's width, not the board's 100"
        ack = obs.next("arcade/cab1/ack")
        assert ack_verifies(ack) and (ack["result"], ack["seq"], ack["pulses"]) == ("applied", 1, 2)
        st = obs.next("arcade/cab1/status", lambda m: m.get("last") == 1 and not m["inhibited"])
        assert (st["held"], st["total"]) == (0, 2)

        n = now + 5
        test = _signed("test", ("cab", "n", "pulses", "ts"),
                       {"t": "test", "cab": "cab1", "n": n, "pulses": 1, "ts": now})
        obs.c.publish("arcade/cab1/test", test, qos=1).wait_for_publish(WAIT)
        lines = sim.next("test")
        assert lines[-1]["result"] == "pulsed"
        tp = [x for x in lines if x["event"] == "pulse"]
        assert len(tp) == 1 and tp[0]["test"] is True and tp[0]["seq"] is None
        st = obs.next("arcade/cab1/status", lambda m: m.get("test") == n)
        assert st["total"] == 2 and st["test_error"] == ""
        obs.c.publish("arcade/cab1/test", test, qos=1).wait_for_publish(WAIT)   # replayed
        lines = sim.next("test")
        assert lines[-1]["result"] == "rejected" and "stale" in lines[-1]["detail"]
        assert not [x for x in lines if x["event"] == "pulse"]
    finally:
        sim.stop()
        obs.c.publish("arcade/cab1/config", b"", qos=1, retain=True).wait_for_publish(WAIT)
        obs.close()
    assert json.loads((state / "cfg.json").read_text())["ver"] == now


def test_inhibit_file_is_documented_in_help():
    r = subprocess.run([sys.executable, "-m", "tools.cli", "simulate", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=WAIT)
    assert r.returncode == 0 and "--inhibit-file" in r.stdout
    for switch in ("--ticks-start", "--watchdog-ms", "--dns-delay", "--micropython", "--chip",
                   "--wifi-off-file"):
        assert switch in r.stdout, switch


@pytest.mark.parametrize("args, message", [
    (["--ticks-start", str(1 << 30)], "--ticks-start 1073741824: the tick counter runs from 0 to"),
    (["--ticks-start", "-1"], "the tick counter runs from 0 to"),
    (["--watchdog-ms", "0"], "--watchdog-ms must be at least 1"),
    (["--dns-delay", "-2"], "--dns-delay must be 0 or more seconds"),
])
def test_unkind_board_switches_refuse_bad_values(tmp_path, args, message):
    env = dict(os.environ)
    env.pop("ARCADE_DB", None)
    r = subprocess.run([sys.executable, "-m", "tools.cli", "simulate", "cab1", "--state", str(tmp_path / "s"),
                        "--secret", SECRET] + args, cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=WAIT)
    assert r.returncode == 2 and message in r.stderr and r.stdout == "", r.stderr
    assert not (tmp_path / "s").exists(), "nothing written for a refused option"


# -- an unkind board (issue 11): the switches that make the simulation fail where an ESP32 fails ----

def test_watchdog_really_resets_the_simulated_board_on_the_same_flash(broker, tmp_path):
    # DNS blocking longer than the watchdog: nothing can feed it during lwIP's getaddrinfo, so the
    # board resets; the simulator starts the firmware again on the same flash with the reset
    # counted in RTC memory, as the board would
    state = tmp_path / "flash"
    sim = Sim(tmp_path, broker.url, state, "--watchdog-ms", "1000", "--dns-delay", "2")
    try:
        first = sim.next("boot")[-1]
        assert first["crashes"] == 0
        lines = sim.next("boot")
        resets = [x for x in lines if x["event"] == "reset"]
        assert [r["cause"] for r in resets] == ["watchdog"], lines
        assert lines[-1]["crashes"] == 1, "the reset is counted in RTC memory across it"
        assert not [x for x in lines if x["event"] == "connected"], "no connect within the DNS wait"
    finally:
        sim.stop()
    assert (state / "config.json").exists()


def test_dns_slower_than_a_step_but_within_the_watchdog_connects(broker, tmp_path):
    sim = Sim(tmp_path, broker.url, tmp_path / "flash", "--watchdog-ms", "6000", "--dns-delay", "1")
    try:
        lines = sim.next("connected")
        assert not [x for x in lines if x["event"] == "reset"], lines
    finally:
        sim.stop()


def test_a_peer_that_hangs_up_before_connack_is_retried_not_a_crash(tmp_path):
    # a plain client on a TLS port or a broker at max_connections: accept, then close at once
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(WAIT)
    accepted = []

    def serve():
        try:
            while True:
                conn, _ = srv.accept()
                accepted.append(1)
                conn.close()
        except OSError:
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    sim = Sim(tmp_path, "mqtt://127.0.0.1:%d" % srv.getsockname()[1], tmp_path / "flash")
    try:
        for _ in range(3):
            lost = sim.next("disconnected")
            assert not [x for x in lost if x["event"] == "reset"], lost
        assert sim.proc.poll() is None and len(accepted) >= 3
    finally:
        sim.stop()
        srv.close()
        t.join(WAIT)
    assert not (tmp_path / "flash" / "crash.log").exists()


def test_pulses_and_acks_across_the_tick_wrap(broker, tmp_path):
    obs = Observer(broker.port)
    sim = Sim(tmp_path, broker.url, tmp_path / "flash", "--ticks-start", str((1 << 30) - 1500),
              "--pulse-ms", "50", "--gap-ms", "50")
    try:
        sim.next("connected")
        obs.publish(credit(1, 8, "cs_test_wrap", epoch=epoch_of(tmp_path / "flash")))
        lines = sim.next("ack")
        pulses = [x for x in lines if x["event"] == "pulse"]
        assert [p["n"] for p in pulses] == list(range(1, 9))
        assert all(50 <= p["width_ms"] < 5000 for p in pulses), pulses
        ack = obs.next("arcade/cab1/ack")
        assert ack_verifies(ack) and (ack["result"], ack["pulses"]) == ("applied", 8)
        st = obs.next("arcade/cab1/status", lambda m: m.get("online") and m.get("last") == 1)
        assert 0 <= st["uptime"] < 600, "uptime from ticks survives the wrap"
    finally:
        sim.stop()
        obs.close()


def test_wifi_off_drops_the_link_reports_201_and_comes_back(broker, tmp_path):
    off = tmp_path / "wifi-off"
    sim = Sim(tmp_path, broker.url, tmp_path / "flash", "--wifi-off-file", str(off))
    try:
        sim.next("connected")
        off.write_text("")
        lines = sim.next("wifi")
        assert lines[-1]["status"] == 201
        assert [x["event"] for x in lines if x["event"] in ("disconnected", "wifi")][0] == "disconnected"
        off.unlink()
        sim.next("connected")
    finally:
        sim.stop()
    log = sim.log.name
    assert "Wifi Internal Error" not in Path(log).read_text(), "connect() was called while joining"


def test_a_profile_for_another_chip_is_refused_at_boot(tmp_path):
    env = dict(os.environ, MQTT_URL="mqtt://127.0.0.1:9")
    env.pop("ARCADE_DB", None)
    r = subprocess.run([sys.executable, "-m", "tools.cli", "simulate", "cab1", "--state", str(tmp_path / "s"),
                        "--secret", SECRET, "--board", "esp32-c3", "--chip", "esp32"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=WAIT)
    assert r.returncode == 2, r.stderr
    assert "'chip' is \"esp32c3\" but this board is an ESP32" in r.stderr
    assert "pulse" not in r.stdout and "connected" not in r.stdout


def test_simulated_screen_is_written_as_png_and_shows_the_pay_qr(broker, tmp_path):
    import shutil
    zbar = shutil.which("zbarimg")
    assert zbar, "zbarimg is not installed: run `make setup` (apt-get install zbar-tools)"
    shot = tmp_path / "screen.png"
    obs = Observer(broker.port)
    sim = Sim(tmp_path, broker.url, tmp_path / "flash", "--display", "ssd1306", "--screen", str(shot),
              "--public-url", "https://pay.example.com")
    try:
        lines = sim.next("connected")
        assert "screen" in [x["event"] for x in lines], "attract, drawn on connect (before the line says so)"
        read = subprocess.run([zbar, "-q", "--raw", str(shot)], capture_output=True, text=True, timeout=60)
        assert read.stdout.strip() == "https://pay.example.com/pay/cab1"
        obs.publish(credit(1, 3, "cs_test_screen", epoch=epoch_of(tmp_path / "flash")))
        lines = sim.next("ack")
        order = [x["event"] for x in lines if x["event"] in ("pulse", "screen")]
        assert order == ["pulse", "screen"] * 3, "one new screen after each pulse (progress, then Press START)"
        read = subprocess.run([zbar, "-q", "--raw", str(shot)], capture_output=True, text=True, timeout=60)
        assert read.stdout.strip() == "", "no QR while the credit is being shown"
        status = obs.next("arcade/cab1/status", lambda m: m.get("online") and m.get("last") == 1)
        assert status["display"] == "ok"
    finally:
        sim.stop()
        obs.close()
