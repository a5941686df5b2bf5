"""`arcade relay` as the process operators (and the end-to-end tests) run."""
import json
import os
import signal
import subprocess
import sys
import urllib.request

import pytest

from relay.ledger import open_ledger
from tools.lab import stack
from tools.lab import trigger
from tools.lab.broker import free_port

SECRET = "whsec_test_cli"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def relay_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCADE_", "STRIPE_", "MQTT_"))}
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=ROOT, **extra)
    return env


def test_refuses_to_start_without_the_webhook_secret(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tools.cli", "relay", "--port", str(free_port())], cwd=str(tmp_path),
                       env=relay_env(tmp_path, ARCADE_DB=str(tmp_path / "a.db")), capture_output=True, timeout=30)
    assert r.returncode == 2
    assert b"STRIPE_WEBHOOK_SECRET is not set" in r.stderr and b"Traceback" not in r.stderr


def health(relay):
    req = urllib.request.Request(relay.url + "/healthz", headers={"Authorization": "Bearer " + relay.metrics_token})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.load(e)


@pytest.fixture
def relays(request, tmp_path, broker):
    db = request.getfixturevalue("pg_url") if getattr(request, "param", "sqlite") == "postgresql" \
        else str(tmp_path / "arcade.db")
    with open_ledger(db) as ledger:
        ledger.add_cabinet("cab1", price_cents=100)
    # A password in the URL that must never be printed (mosquitto allows anonymous, so it is ignored).
    url = "mqtt://relay:hunter2pw@127.0.0.1:%d" % broker.port
    started = []

    def start(name="relay"):
        r = stack.Relay(tmp_path / name, db, url, SECRET, extra_env={"ARCADE_RESCAN": "0.2"}).start()
        started.append(r)
        return r

    yield {"db": db, "start": start}
    for r in started:
        r.stop()


def test_serves_prints_where_and_stops_cleanly_on_sigterm(relays):
    relay = relays["start"]()
    line = relay.wait_for(lambda ls: [x["text"] for x in ls if "listening on" in x.get("text", "")], 20,
                          "start-up line")[0]
    assert "http://127.0.0.1:%d" % relay.port in line
    assert "mqtt://relay:***@127.0.0.1" in line and "hunter2pw" not in line
    stack.wait_until(lambda: health(relay)[1]["broker"] == "ok", 20, what="broker ok")
    status, body = health(relay)
    assert status == 200 and body["db"] == "ok" and body["dispatcher"] == "running"
    relay.proc.send_signal(signal.SIGTERM)
    assert relay.proc.wait(15) == 0
    log = relay.log_path.read_text()
    assert "hunter2pw" not in log and SECRET not in log
    assert "stopped" in log


# SQLite only: on PostgreSQL every relay dispatches the cabinets it holds leases on (tests/test_multi_relay.py)
@pytest.mark.parametrize("relays", ["sqlite"], indirect=True)
def test_second_relay_on_one_database_serves_webhooks_without_a_second_dispatcher(relays):
    first = relays["start"]("first")
    stack.wait_until(lambda: health(first)[1]["broker"] == "ok", 20, what="first on the broker")
    second = relays["start"]("second")
    line = second.wait_for(lambda ls: [x["text"] for x in ls if "listening on" in x.get("text", "")], 20,
                           "start-up line")[0]
    assert "dispatcher in another relay process" in line
    assert health(second)[1]["dispatcher"] == "elsewhere"
    # A payment taken by the second is published by the first's dispatcher (its fallback re-scan).
    session, _, statuses = trigger.send(second.webhook_url, SECRET, "cab1", 100)
    assert statuses[0][0] == 200
    with open_ledger(relays["db"]) as ledger:
        stack.wait_until(lambda: ledger.get_payment(session)["state"] == "sent", 20, what="published by first")
    assert "client id arcade-relay-" not in second.log_path.read_text()
    if relays["db"].startswith("postgresql://"):
        password = relays["db"].split(":")[2].split("@")[0]
        assert password not in line and password not in first.log_path.read_text() + second.log_path.read_text()


def test_an_unreachable_postgresql_stops_the_relay_with_a_clear_message(tmp_path):
    url = "postgresql://arcade:hunter3pw@127.0.0.1:%d/arcade" % free_port()
    r = subprocess.run([sys.executable, "-m", "tools.cli", "relay", "--port", str(free_port())], cwd=str(tmp_path),
                       env=relay_env(tmp_path, ARCADE_DB=url, STRIPE_WEBHOOK_SECRET=SECRET), capture_output=True,
                       timeout=60)
    assert r.returncode == 2, r.stderr
    assert b"cannot connect to PostgreSQL at postgresql://arcade@127.0.0.1:" in r.stderr
    assert b"hunter3pw" not in r.stderr and b"Traceback" not in r.stderr


def test_killed_after_commit_delivers_on_restart(relays):
    relay = relays["start"]("one")
    stack.wait_until(lambda: health(relay)[1]["broker"] == "ok", 20, what="broker ok")
    relay.kill()                                   # SIGKILL: no clean shutdown, lock dropped by the kernel
    with open_ledger(relays["db"]) as ledger:      # a payment committed that no dispatcher published
        ledger.record_checkout("evt_k", "checkout.session.completed", "cs_test_k", "credit", cabinet_id="cab1",
                               amount=100, currency="usd", credits=1, pulses=1)
        relays["start"]("two")
        stack.wait_until(lambda: ledger.get_payment("cs_test_k")["state"] == "sent", 20, what="sent on restart")


def test_workers_serve_webhooks_from_several_processes_and_one_dispatcher_delivers_them(tmp_path, broker):
    """--workers 3: two forked web workers on the relay's socket; whichever process takes a webhook, the
    parent's dispatcher is woken and every credit pulses once; SIGTERM stops the workers too."""
    from tools.lab import stripe_events
    from tools.lab.bench import Http, children
    whsec = "whsec_workers_test"
    db = str(tmp_path / "arcade.db")
    with open_ledger(db) as ledger:
        secret = ledger.add_cabinet("cab1", price_cents=100)
    # no re-reading of the database for 10 min: only the wake-ups (the workers' through the pipe) deliver
    relay = stack.Relay(tmp_path, db, broker.url, whsec, extra_env={"ARCADE_RESCAN": "600"},
                        extra_args=["--workers", "3"]).start()
    cab = stack.Cabinet(tmp_path, "cab1", secret, broker.url, extra_args=["--pulse-ms", "20", "--gap-ms", "20"])
    workers = []
    try:
        stack.wait_until(lambda: len(children(relay.proc.pid)) == 2, 20, what="two web workers")
        workers = children(relay.proc.pid)
        cab.start().wait_connected(30)
        paid = []
        for _ in range(12):
            http = Http(relay.webhook_url)        # a new connection each time: spread over the processes
            session = stripe_events.checkout_session("cab1", 100, client_reference_id="cab1")
            body = stripe_events.encode(stripe_events.event(session))
            try:
                assert http.post(body, stripe_events.signature_header(body, whsec)) == 200
            finally:
                http.close()
            paid.append(session["id"])
            # idle again: the next credit needs a wake-up of its own (without one, the next periodic step
            # of the dispatcher, up to 30 s away, would send it)
            cab.wait_pulses(len(paid), timeout=10)
        pulses = [p["session"] for p in cab.pulses()]
        assert sorted(pulses) == sorted(paid), "each paid credit pulsed exactly once"
    finally:
        cab.stop()
        relay.stop()
    assert relay.proc.returncode == 0
    assert workers and not [pid for pid in workers if os.path.exists("/proc/%d" % pid)], "a worker outlived the relay"
    log = relay.log_path.read_text()
    assert "Traceback" not in log


def test_workers_must_be_at_least_one(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tools.cli", "relay", "--workers", "0"], capture_output=True,
                          text=True, env=relay_env(tmp_path), timeout=60)
    assert done.returncode == 2 and "--workers 0" in done.stderr
