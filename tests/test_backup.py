"""Backups, restores and upgrades (issue 15): `arcade backup` while a stream of payments flows through a real
relay to a simulated cabinet, `arcade restore` of that copy (refused live and over an existing database
without --force), the relay started again on it, and Stripe delivering the payments made after the backup
again: the coin pulses on the cabinet's pin equal what was paid for, exactly. Then `arcade db upgrade` from
the previous schema."""
import contextlib
import io
import os
import sqlite3
import stat
import threading
from collections import Counter

import pytest

from relay import ledger as ledger_mod
from relay.ledger import inspect_database, open_ledger
from tools.commands import backup as backup_cmd
from tools.commands import db as db_cmd
from tools.commands import restore as restore_cmd
from tools.lab import stack, stripe_events, trigger
from tools.lab.broker import Mosquitto

WHSEC = "whsec_test_backup_stream"
WAIT = 60.0
FINAL = ("applied", "duplicate", "rejected")
PAYMENTS = 16


def run(main, argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        rc = main(argv)
    return rc, out.getvalue()


def consistent(path):
    """The copy is one moment of the ledger: per cabinet, the queued/sent/final payments carry seqs 1..n with
    no gap and the counter stands at n + 1 (they are written in one transaction)."""
    db = sqlite3.connect(str(path))
    try:
        seqs = sorted(r[0] for r in db.execute("SELECT seq FROM payments WHERE cabinet_id = 'cab1' AND seq IS NOT NULL"))
        next_seq = db.execute("SELECT next_seq FROM cabinets WHERE id = 'cab1'").fetchone()[0]
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()
    assert seqs == list(range(1, len(seqs) + 1)) and next_seq == len(seqs) + 1, (seqs, next_seq)
    return len(seqs)


def test_backup_during_a_payment_stream_and_the_restore_drill(tmp_path):
    broker = Mosquitto(tmp_path / "mosquitto").start()
    db = str(tmp_path / "arcade.db")
    with open_ledger(db) as led:
        secret = led.add_cabinet("cab1", price_cents=100, coins_per_credit=1)
    relay = stack.Relay(tmp_path, db, broker.url, WHSEC, extra_env={"ARCADE_ACK_TIMEOUT": "1", "ARCADE_RESCAN": "0.5",
                                                                    "ARCADE_RECONCILE_EVERY": "0"})
    cab = stack.Cabinet(tmp_path, "cab1", secret, broker.url, keepalive=5, extra_args=["--pulse-ms", "20",
                                                                                        "--gap-ms", "20"])
    events, answered = {}, []
    try:
        relay.start()
        cab.start()
        cab.wait_connected()
        stack.wait_until(lambda: relay.health().get("broker") == "ok", WAIT, 0.1, "relay on the broker")

        def pay(session_id=None):
            if session_id is None:
                session = stripe_events.checkout_session("cab1", 100, client_reference_id="cab1")
                session_id = session["id"]
                events[session_id] = stripe_events.encode(stripe_events.event(session))
            body = events[session_id]
            status, answer = trigger.post(relay.webhook_url, body, stripe_events.signature_header(body, WHSEC))
            assert status == 200, answer
            return session_id

        half = threading.Event()

        def stream():
            for i in range(PAYMENTS):
                answered.append(pay())
                if i == PAYMENTS // 2:
                    half.set()
            half.set()

        payer = threading.Thread(target=stream)
        payer.start()
        assert half.wait(WAIT)
        before = len(answered)                     # answered 200 before the copy started: must be in it
        rc, out = run(backup_cmd.main, [str(tmp_path), "--db", db])
        after = len(answered)                      # answered before the copy ended: at most these
        payer.join(WAIT)
        assert rc == 0, out
        copy = next(tmp_path.glob("arcade-*.db"))
        assert stat.S_IMODE(copy.stat().st_mode) == 0o600
        assert not list(tmp_path.glob("*.partial"))
        in_copy = consistent(copy)
        assert before <= in_copy <= after + 1, (before, in_copy, after)
        assert inspect_database(copy)["ledger_id"] == inspect_database(db)["ledger_id"]
        sessions_in_copy = {r[0] for r in sqlite3.connect(str(copy)).execute("SELECT session_id FROM payments")}

        stack.wait_until(lambda: cab_pulses(cab) >= PAYMENTS, WAIT, 0.1, "%d pulses" % PAYMENTS)

        # the drill: refused while the relay runs, refused over a database without --force
        rc, out = run(restore_cmd.main, [str(copy), "--db", db])
        assert rc == 2 and "a relay is running" in out and "systemctl stop arcade-relay" in out
        relay.stop()
        rc, out = run(restore_cmd.main, [str(copy), "--db", db])
        assert rc == 2 and "--force" in out
        rc, out = run(restore_cmd.main, [str(copy), "--db", db, "--force"])
        assert rc == 0, out
        assert "same ledger" in out and "arcade reconcile" in out
        kept = next(tmp_path.glob("arcade.db.before-restore-*"))
        assert consistent(kept) == PAYMENTS                  # what it replaced is kept, whole
        assert consistent(db) == in_copy
        assert stat.S_IMODE(os.stat(db).st_mode) == 0o600

        # the relay runs on the restored copy; Stripe delivers the later payments again (as reconciliation would)
        relay.start()
        stack.wait_until(lambda: relay.health().get("broker") == "ok", WAIT, 0.1, "relay on the broker")
        later = [s for s in answered if s not in sessions_in_copy]
        assert later, "the stream went on after the copy"
        print("backup during the stream: %d answered before it started, %d in the copy, %d answered when it ended; "
              "%d delivered again after the restore" % (before, in_copy, after, len(later)))
        for s in later:
            pay(s)
        states = stack.wait_until(lambda: final_states(db, answered), WAIT, 0.1, "every payment final")
        # the oracle: pulses on the cabinet's pin per session, against what was paid (one play, one coin each)
        seen = Counter(p["session"] for p in cab.pulses())
        assert seen == Counter({s: 1 for s in answered}), "a payment was lost or pulsed twice after the restore"
        assert all(states[s] == "duplicate" for s in later), states
    finally:
        cab.stop()
        relay.stop()
        broker.stop()


def cab_pulses(cab):
    return len(cab.pulses())


def final_states(db, sessions):
    with open_ledger(db) as led:
        got = {s: (led.get_payment(s) or {}).get("state") for s in sessions}
    return all(v in FINAL for v in got.values()) and got


# -- bad input ------------------------------------------------------------------------------------------------

def test_backup_refuses_to_overwrite_and_never_creates_a_database(tmp_path):
    rc, out = run(backup_cmd.main, [str(tmp_path / "b.db"), "--db", str(tmp_path / "none.db")])
    assert rc == 2 and "no database at" in out
    assert not (tmp_path / "none.db").exists() and not (tmp_path / "b.db").exists()
    with open_ledger(tmp_path / "a.db") as led:
        led.add_cabinet("cab1")
    (tmp_path / "b.db").write_text("precious")
    rc, out = run(backup_cmd.main, [str(tmp_path / "b.db"), "--db", str(tmp_path / "a.db")])
    assert rc == 2 and "never overwrites" in out
    assert (tmp_path / "b.db").read_text() == "precious"


def test_restore_refuses_what_is_not_a_backup_and_changes_nothing(tmp_path):
    with open_ledger(tmp_path / "a.db") as led:
        led.add_cabinet("cab1")
    before = (tmp_path / "a.db").read_bytes()
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    rc, out = run(restore_cmd.main, [str(tmp_path / "junk.db"), "--db", str(tmp_path / "a.db"), "--force"])
    assert rc == 2 and "not an arcade ledger" in out
    assert (tmp_path / "a.db").read_bytes() == before


def test_restore_into_an_empty_place_and_over_another_ledger(tmp_path):
    with open_ledger(tmp_path / "a.db") as led:
        led.add_cabinet("cab1")
    rc, out = run(backup_cmd.main, [str(tmp_path / "copy.db"), "--db", str(tmp_path / "a.db")])
    assert rc == 0, out
    rc, out = run(restore_cmd.main, [str(tmp_path / "copy.db"), "--db", str(tmp_path / "new" / "arcade.db")])
    assert rc == 0, out
    assert inspect_database(tmp_path / "new" / "arcade.db")["cabinets"] == ["cab1"]
    with open_ledger(tmp_path / "other.db") as led:
        other = led.ledger_id
    rc, out = run(restore_cmd.main, [str(tmp_path / "copy.db"), "--db", str(tmp_path / "other.db"), "--force"])
    assert rc == 0 and "the ledger changes from %s" % other[:8] in out, out


# -- upgrades ---------------------------------------------------------------------------------------------------

@pytest.fixture
def v1_db(tmp_path):
    path = tmp_path / "v1.db"
    db = sqlite3.connect(str(path))
    db.executescript((stack.ROOT / "tests" / "data" / "ledger-v1.sql").read_text())
    db.close()
    return path


def test_db_upgrade_from_the_previous_schema_takes_a_backup_first(v1_db, tmp_path, monkeypatch):
    # the next release's change, as an entry at the end of MIGRATIONS
    monkeypatch.setattr(ledger_mod, "MIGRATIONS", ledger_mod.MIGRATIONS +
                        [("test_issue15_next", ["ALTER TABLE cabinets ADD COLUMN colour TEXT NOT NULL DEFAULT ''"])])
    rc, out = run(db_cmd.main, ["status", "--db", str(v1_db)])
    assert rc == 1 and "test_issue15_next" in out and "arcade db upgrade" in out
    rc, out = run(db_cmd.main, ["upgrade", "--db", str(v1_db), "--backup-dir", str(tmp_path)])
    assert rc == 0 and "applied" in out and "test_issue15_next" in out, out
    copy = next(tmp_path.glob("arcade-*.db"))
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert "test_issue15_next" in inspect_database(copy)["missing"]          # the copy is the database before
    assert inspect_database(v1_db)["missing"] == []
    cols = [r[1] for r in sqlite3.connect(str(v1_db)).execute("PRAGMA table_info(cabinets)")]
    assert "colour" in cols
    with open_ledger(v1_db) as led:
        assert led.get_payment("cs_test_applied")["state"] == "applied"      # nothing lost
    rc, out = run(db_cmd.main, ["upgrade", "--db", str(v1_db)])
    assert rc == 0 and "nothing to do" in out
    rc, out = run(db_cmd.main, ["status", "--db", str(v1_db)])
    assert rc == 0 and "none missing" in out


# -- PostgreSQL: pg_dump and pg_restore ---------------------------------------------------------------------------

def test_postgresql_backup_and_restore_with_the_password_out_of_argv(postgres, tmp_path, monkeypatch):
    import psycopg

    from relay import backends
    url = postgres.create_database("issue15_backup")
    shims = tmp_path / "bin"
    shims.mkdir()
    for tool in ("pg_dump", "pg_restore"):     # record the argv each tool is given, then run the real one
        real = __import__("shutil").which(tool)
        assert real, "%s is not installed: apt-get install postgresql-client (make setup)" % tool
        (shims / tool).write_text('#!/bin/sh\necho "$@" >> %s\nexec %s "$@"\n' % (tmp_path / "argv.log", real))
        (shims / tool).chmod(0o755)
    monkeypatch.setenv("PATH", "%s:%s" % (shims, os.environ["PATH"]))
    try:
        with open_ledger(url) as led:
            led.add_cabinet("cab1", price_cents=100)
            assert led.record_checkout("evt_1", "checkout.session.completed", "cs_test_pg1", "credit", cabinet_id="cab1",
                                       amount=100, currency="usd", credits=1, pulses=1) == "queued"
            ledger_id = led.ledger_id
        rc, out = run(backup_cmd.main, [str(tmp_path / "arcade.pgdump"), "--db", url])
        assert rc == 0 and "pg_dump" in out, out
        assert stat.S_IMODE((tmp_path / "arcade.pgdump").stat().st_mode) == 0o600
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DELETE FROM payments")
        rc, out = run(restore_cmd.main, [str(tmp_path / "arcade.pgdump"), "--db", url])
        assert rc == 2 and "--force" in out
        rc, out = run(restore_cmd.main, [str(tmp_path / "arcade.pgdump"), "--db", url, "--force"])
        assert rc == 0, out
        assert postgres.password not in out
        backends.close_pools(url)
        with open_ledger(url) as led:
            assert led.get_payment("cs_test_pg1")["state"] == "queued" and led.ledger_id == ledger_id
        argv = (tmp_path / "argv.log").read_text()
        assert argv.count("\n") == 2 and postgres.password not in argv
    finally:
        backends.close_pools(url)
        postgres.drop_database("issue15_backup")
