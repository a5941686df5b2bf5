"""Schema changes: a database made by schema version 1 (tests/data/ledger-v1.sql, rows in every table)
opens under today's code with every migration applied and nothing lost; each migration runs once, and
one that fails changes nothing."""
import sqlite3
from pathlib import Path

import pytest

from relay import ledger as ledger_mod
from relay.ledger import open_ledger

DUMP = Path(__file__).resolve().parent / "data" / "ledger-v1.sql"


@pytest.fixture
def v1_db(tmp_path):
    path = tmp_path / "v1.db"
    db = sqlite3.connect(str(path))
    db.executescript(DUMP.read_text())
    db.close()
    return path


def rows(path, sql):
    db = sqlite3.connect(str(path))
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def test_a_v1_database_upgrades_with_every_row_kept(v1_db):
    before_ids = rows(v1_db, "SELECT value FROM meta WHERE key = 'ledger_id'")
    before_payments = rows(v1_db, "SELECT session_id, cabinet_id, state, seq, pulses FROM payments ORDER BY 1")
    assert len(before_payments) == 3
    with open_ledger(v1_db) as led:
        assert led.migrations() == sorted(name for name, _ in ledger_mod.MIGRATIONS)
        assert [(led.ledger_id,)] == before_ids
        assert {c["id"] for c in led.list_cabinets()} == {"cab1", "cab2"}
        assert led.get_payment("cs_test_applied")["state"] == "applied"
        assert led.get_payment("cs_test_queued")["state"] == "queued"
        assert led.list_promotions() and led.payment_link_cabinet("plink_1AbC") == "cab2"
        # the upgraded database still allocates the next sequence number after the old ones
        assert led.record_checkout("evt_new", "checkout.session.completed", "cs_test_new", "credit",
                                   cabinet_id="cab1", amount=100, currency="usd", credits=1, pulses=2) == "queued"
        assert led.get_payment("cs_test_new")["seq"] == max(p[3] for p in before_payments if p[3]) + 1
    after = rows(v1_db, "SELECT session_id, cabinet_id, state, seq, pulses FROM payments WHERE session_id != "
                        "'cs_test_new' ORDER BY 1")
    assert after == before_payments


def test_each_migration_runs_once(tmp_path):
    calls = []
    migrations = [("test_add_column", ["ALTER TABLE cabinets ADD COLUMN colour TEXT NOT NULL DEFAULT 'red'"]),
                  ("test_callable", lambda cur: calls.append(cur.execute("SELECT COUNT(*) FROM cabinets").fetchone()))]
    with open_ledger(tmp_path / "a.db") as led:
        assert led._migrate(migrations) == ["test_add_column", "test_callable"]
        assert led._migrate(migrations) == []
        assert calls == [(0,)]
        assert "test_add_column" in led.migrations()
    assert rows(tmp_path / "a.db", "SELECT colour FROM cabinets") == []


def test_a_failing_migration_changes_nothing(tmp_path):
    broken = [("test_broken", ["ALTER TABLE cabinets ADD COLUMN colour TEXT", "ALTER TABLE no_such_table ADD x"])]
    with open_ledger(tmp_path / "b.db") as led:
        with pytest.raises(sqlite3.OperationalError, match="no_such_table"):
            led._migrate(broken)
        assert "test_broken" not in led.migrations()
    cols = [r[1] for r in rows(tmp_path / "b.db", "PRAGMA table_info(cabinets)")]
    assert "colour" not in cols, "the first statement of a failed migration must be rolled back"


def test_issue9_broker_users_gives_every_old_cabinet_and_the_relay_a_login(v1_db):
    secrets_ = dict(rows(v1_db, "SELECT id, secret FROM cabinets"))
    with open_ledger(v1_db) as led:
        assert "issue9_broker_users" in led.migrations()
        logins = led.broker_logins()
        user, relay_pw = logins["relay"]
        assert user == "arcade.relay" and len(relay_pw) == 32
        cabs = dict(logins["cabinets"])
        enabled = {c["id"] for c in led.list_cabinets() if c["enabled"]}
        assert set(cabs) == enabled and enabled
        passwords = [relay_pw] + [led.broker_password(c) for c in secrets_]
        assert len(set(passwords)) == len(passwords), "every login has its own password"
        assert not set(passwords) & set(secrets_.values()), "a broker password is never the HMAC secret"
        # a cabinet added after the upgrade gets its login with it; re-keying changes only its own
        led.add_cabinet("cab3", price_cents=100)
        old = led.broker_password("cab3")
        assert old and led.rekey_broker("cab3") != old
        assert led.broker_logins()["relay"] == (user, relay_pw)
        # issue9_cabinet_epochs: no epoch known for an old cabinet until it announces one
        assert led.cabinet_epoch("cab1") == ""
        assert led.set_cabinet_epoch("cab1", "0f1e2d3c4b5a6978", 1, 5) == "new"
        assert led.set_cabinet_epoch("cab1", "0f1e2d3c4b5a6978", 1, 5) == "stale"      # the same status again
        assert led.set_cabinet_epoch("cab1", "0f1e2d3c4b5a6978", 2, 1) == "fresh"      # rebooted
        assert led.set_cabinet_epoch("cab1", "1" * 16, 1, 1) == "new"                  # flash lost
        assert led.set_cabinet_epoch("cab1", "0f1e2d3c4b5a6978", 9, 9) == "stale"      # the old journal's, replayed
        assert led.cabinet_epoch("cab1") == "1" * 16
