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


def test_issue13_upgrade_counts_old_in_flight_credits_as_published(v1_db):
    """issue13_refunds: a credit queued or sent by a relay older than the publish claim may have been
    published, so it must not count as 'never published' (refundable as undelivered) after the upgrade."""
    before = dict(rows(v1_db, "SELECT session_id, state FROM payments"))
    with open_ledger(v1_db) as led:
        assert {"issue13_console", "issue13_refunds", "issue13_alerts"} <= set(led.migrations())
        for sid, state in before.items():
            published = led.get_payment(sid)["published_at"]
            if state in ("queued", "sent"):
                assert published is not None, sid
        queued = [sid for sid, state in before.items() if state == "queued"]
        assert queued, "the v1 database has a queued credit to check"
        with pytest.raises(ledger_mod.LedgerError, match="may still pulse"):
            led.claim_refund(queued[0], "t", "test")
        # the new tables work on the upgraded database
        led.add_operator("alice", "$argon2id$fake")
        led.audit("alice", "login")
        assert led.list_audit()[0]["who"] == "alice"
        assert led.open_incident("k", "offline", "cab1", "cab1 offline") is True
        assert led.open_incident("k", "offline", "cab1", "cab1 offline") is False
        assert led.close_incident("k")["subject"] == "cab1"
