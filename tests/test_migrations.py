"""Schema changes, on both backends: a database made by schema version 1 (tests/data/ledger-v1.sql, rows
in every table; the same tables and rows made in PostgreSQL for the PostgreSQL run) opens under today's
code with every migration applied and nothing lost; each migration runs once, and one that fails
changes nothing. `arcade db upgrade` does the same from the command line."""
import time
import sqlite3
from pathlib import Path

import psycopg
import pytest

from relay import ledger as ledger_mod
from relay.ledger import StorageError, open_ledger
from tools.cli import main as arcade
from tools.lab.postgres import load_sqlite_dump

DUMP = Path(__file__).resolve().parent / "data" / "ledger-v1.sql"


@pytest.fixture
def v1_db(ledger_db):
    """A schema-version-1 database with rows in every table, on each backend."""
    if ledger_db.endswith(".db"):
        db = sqlite3.connect(ledger_db)
        db.executescript(DUMP.read_text())
        db.close()
    else:
        load_sqlite_dump(ledger_db, DUMP.read_text())
    return ledger_db


def rows(db, sql):
    """Read with the engine's own driver, not through the ledger under test."""
    if db.startswith("postgresql://"):
        with psycopg.connect(db) as conn:
            return [tuple(r) for r in conn.execute(sql).fetchall()]
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def columns(db, table):
    if db.startswith("postgresql://"):
        return [r[0] for r in rows(db, "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                                       "AND table_name = '%s'"
                                       % table)]
    return [r[1] for r in rows(db, "PRAGMA table_info(%s)" % table)]


def test_a_v1_database_upgrades_with_every_row_kept(v1_db):
    before_ids = rows(v1_db, "SELECT value FROM meta WHERE key = 'ledger_id'")
    before_payments = rows(v1_db, "SELECT session_id, cabinet_id, state, seq, pulses FROM payments ORDER BY 1")
    assert len(before_payments) == 3
    with open_ledger(v1_db) as led:
        assert not led.created_now
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
        # and new promotion ids after the old ones (PostgreSQL: the identity column continues)
        assert led.add_promotion("cab2", "bonus", 1, [5], 0, 60) == 2
    after = rows(v1_db, "SELECT session_id, cabinet_id, state, seq, pulses FROM payments WHERE session_id != "
                        "'cs_test_new' ORDER BY 1")
    assert after == before_payments


def test_arcade_db_upgrade_migrates_a_v1_database_and_says_what_it_did(v1_db, capsys, monkeypatch):
    monkeypatch.setattr(ledger_mod, "MIGRATIONS", ledger_mod.MIGRATIONS + [
        ("test_cli_column", ["ALTER TABLE cabinets ADD COLUMN colour TEXT NOT NULL DEFAULT 'red'"])])
    monkeypatch.setenv("ARCADE_DB", v1_db)
    assert arcade(["db", "upgrade"]) == 0
    out = capsys.readouterr().out
    assert "applied migration test_cli_column" in out and "up to date" in out
    assert rows(v1_db, "SELECT id, colour FROM cabinets ORDER BY id") == [("cab1", "red"), ("cab2", "red")]
    password = v1_db.split(":")[2].split("@")[0] if v1_db.startswith("postgresql://") else None
    assert password is None or password not in out
    assert arcade(["db", "upgrade"]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_arcade_db_upgrade_creates_a_new_ledger(ledger_db, capsys):
    assert arcade(["db", "upgrade", "--db", ledger_db]) == 0
    assert "created the ledger's schema" in capsys.readouterr().out
    assert len(rows(ledger_db, "SELECT value FROM meta WHERE key = 'ledger_id'")[0][0]) == 32


def test_arcade_db_upgrade_of_an_unreachable_server_says_so(capsys):
    from tools.lab.broker import free_port
    url = "postgresql://arcade:s3cret-pw@127.0.0.1:%d/arcade?connect_timeout=2" % free_port()
    assert arcade(["db", "upgrade", "--db", url]) == 2
    err = capsys.readouterr().err
    assert "cannot connect to PostgreSQL" in err and "s3cret-pw" not in err


def test_each_migration_runs_once(ledger_db):
    calls = []
    migrations = [("test_add_column", ["ALTER TABLE cabinets ADD COLUMN colour TEXT NOT NULL DEFAULT 'red'"]),
                  ("test_callable", lambda cur: calls.append((tuple(cur.execute("SELECT COUNT(*) FROM cabinets")
                                                                    .fetchone()),
                                                              cur.dialect.has_table(cur, "cabinets"),
                                                              "colour" in cur.dialect.columns(cur, "cabinets"))))]
    with open_ledger(ledger_db) as led:
        assert led._migrate(migrations) == ["test_add_column", "test_callable"]
        assert led._migrate(migrations) == []
        assert calls == [((0,), True, True)]
        assert "test_add_column" in led.migrations()
    assert rows(ledger_db, "SELECT colour FROM cabinets") == []


def test_a_failing_migration_changes_nothing(ledger_db):
    broken = [("test_broken", ["ALTER TABLE cabinets ADD COLUMN colour TEXT",
                               "ALTER TABLE no_such_table ADD COLUMN x TEXT"])]
    with open_ledger(ledger_db) as led:
        with pytest.raises(StorageError, match="no_such_table"):
            led._migrate(broken)
        assert "test_broken" not in led.migrations()
    assert "colour" not in columns(ledger_db, "cabinets"), "the first statement of a failed migration must be rolled back"


def test_migration_sql_is_spelled_for_postgresql():
    from relay.backends import to_postgres
    assert to_postgres("SELECT key FROM meta WHERE key LIKE 'migration:%' AND value = ?") == \
        "SELECT key FROM meta WHERE key LIKE 'migration:%%' AND value = %s"
    assert to_postgres("SELECT '?' || ? FROM t") == "SELECT '?' || %s FROM t", "a ? inside quotes is not a placeholder"
    assert to_postgres("CREATE TABLE t (id INTEGER PRIMARY KEY, at REAL NOT NULL, n integer, b BLOB, "
                       "note TEXT DEFAULT 'REAL')") == \
        ("CREATE TABLE t (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, at DOUBLE PRECISION NOT NULL, "
         "n BIGINT, b BYTEA, note TEXT DEFAULT 'REAL')")
    assert to_postgres("ALTER TABLE t ADD COLUMN x REAL") == "ALTER TABLE t ADD COLUMN x DOUBLE PRECISION"
    assert to_postgres("UPDATE t SET real_total = 1") == "UPDATE t SET real_total = 1", "only DDL types change"


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


def test_issue10_checkout_attempts_on_an_upgraded_v1_database(v1_db):
    """The pay page's attempts table arrives by migration; reservations work on the old database."""
    assert not columns(v1_db, "checkout_attempts")
    with open_ledger(v1_db) as led:
        assert "issue10_checkout_attempts" in led.migrations()
        got = [led.reserve_checkout("cab1", "client-a", "1", 1, 100, 1000.0 + i, (2, 600), (60, 600), 600)
               for i in range(3)]
        assert [g[0] for g in got] == ["new", "new", "client_limit"]
        led.finish_checkout_attempt(got[0][1], "cs_test_reuse", "https://checkout.example/x", reuse_until=2000.0)
        assert led.reserve_checkout("cab1", "client-a", "1", 1, 100, 1500.0, (2, 600), (60, 600), 600) == \
            ("reuse", "https://checkout.example/x")
    assert {"cabinet_id", "client_key", "state", "session_id", "reuse_until"} <= set(columns(v1_db, "checkout_attempts"))


def test_issue13b_upgrade_leaves_old_in_flight_credits_without_expiry_so_never_refunded_automatically(v1_db):
    """issue13b_credit_expiry: a credit an older relay published carried no exp (any copy of it may
    still pulse whenever its cabinet returns), so it must never be refunded automatically."""
    before = dict(rows(v1_db, "SELECT session_id, state FROM payments"))
    with open_ledger(v1_db) as led:
        assert "issue13b_credit_expiry" in led.migrations()
        pending = [sid for sid, state in before.items() if state in ("queued", "sent")]
        assert pending, "the v1 database has credits in flight to check"
        far = time.time() + 10 * 365 * 86400
        due = {r["session_id"] for r in led.auto_refund_due(far, 900, 300)}
        assert not due & set(pending), "an old in-flight credit would be refunded automatically"
        for sid in pending:
            assert led.claim_auto_refund(sid, far, 900, 300) is None
        cab = led.list_cabinets()[0]["id"]
        assert led.cabinet_clock_set(cab) is False      # never said: its credits get no exp
        led.record_status(cab, True, clock_set=True)
        assert led.cabinet_clock_set(cab) is True
def test_issue16_screen_lines_issue_a_version_for_an_old_provisioned_cabinet(v1_db):
    """issue16_screen_lines: an upgraded cabinet has no lines issued yet; its first lines issue a new
    config version (carried by pending_configs), the same lines again issue none."""
    with open_ledger(v1_db) as led:
        cab = led.list_cabinets()[0]["id"]
        led.set_board(cab, "esp32-devkitc")
        assert [r["price"] for r in led.screen_cabinets() if r["cabinet_id"] == cab] == [None]
        ver = led.set_screen_lines(cab, "from $1.00 a play", "", now=2_000_000_000)
        assert ver >= 2_000_000_000
        assert led.set_screen_lines(cab, "from $1.00 a play", "", now=2_000_000_001) is None
        row = [r for r in led.pending_configs() if r["cabinet_id"] == cab][0]
        assert (row["ver"], row["price"], row["promo"]) == (ver, "from $1.00 a play", "")
def test_issue12_cabinet_leases_upgrade_adds_an_empty_lease_table_that_works(v1_db):
    """issue12_cabinet_leases: an upgraded database has the lease table, empty (nobody holds a cabinet
    yet), and a relay can take a lease on one of its old cabinets."""
    from relay.leases import Leases
    with open_ledger(v1_db) as led:
        assert "issue12_cabinet_leases" in led.migrations()
        cab = led.list_cabinets()[0]["id"]
        assert Leases("r1").acquire(led, cab)
    assert columns(v1_db, "cabinet_leases") == ["cabinet_id", "holder", "token", "expires_at", "taken_at"]
    assert [r[0] for r in rows(v1_db, "SELECT token FROM cabinet_leases")] == [1]


def test_issue12_leader_lease_upgrade_adds_an_empty_role_table_that_works(v1_db):
    """issue12_leader_lease: an upgraded database has the leader lease's table, empty (no relay leads
    yet), and a relay can take the leader role, then another only after it ran out."""
    from relay.leases import RoleLeases
    with open_ledger(v1_db) as led:
        assert "issue12_leader_lease" in led.migrations()
        assert RoleLeases("r1").acquire(led, "leader")
        assert not RoleLeases("r2").acquire(led, "leader")
    assert columns(v1_db, "relay_leases") == ["role", "holder", "token", "expires_at", "taken_at"]
    assert [(r[0], r[1].split("/")[0], r[2]) for r in rows(v1_db, "SELECT role, holder, token FROM relay_leases")] \
        == [("leader", "r1", 1)]
