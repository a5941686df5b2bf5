"""relay/ledger.py: the storage interface the webhook, the dispatcher and the tools rely on, on both
backends (every test taking `ledger` runs on SQLite and on a fresh PostgreSQL database)."""
import sqlite3
import threading

import pytest

from relay.ledger import CabinetExists, LedgerError, StorageError, UnknownCabinet, open_ledger


@pytest.fixture
def ledger(ledger_db):
    with open_ledger(ledger_db) as ledger:
        yield ledger


def credit(ledger, n, cab="cab1", credits=1):
    return ledger.record_checkout("evt_%s" % n, "checkout.session.completed", "cs_%s" % n, "credit",
                                  cabinet_id=cab, amount=100 * credits, currency="usd", credits=credits,
                                  pulses=credits)


def test_a_database_keeps_its_random_ledger_id(tmp_path, ledger, ledger_db):
    assert ledger.backend == ("sqlite" if ledger_db.endswith(".db") else "postgresql")
    assert len(ledger.ledger_id) == 32 and int(ledger.ledger_id, 16) >= 0
    with open_ledger(ledger.path) as again:
        assert again.ledger_id == ledger.ledger_id
    with open_ledger(str(tmp_path / "other.db")) as other:
        assert other.ledger_id != ledger.ledger_id


def test_sqlite_is_durable_wal(tmp_path):
    with open_ledger(str(tmp_path / "arcade.db")) as led:
        assert led._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert led._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_postgresql_commits_are_synchronous_and_the_password_stays_out_of_messages(pg_url):
    from relay.backends import redact
    with open_ledger(pg_url) as led:
        assert led._db.execute("SHOW synchronous_commit").fetchone()[0] == "on"
    password = pg_url.split(":")[2].split("@")[0]
    assert password not in redact(pg_url) and redact(pg_url).startswith("postgresql://arcade@127.0.0.1:")


def test_add_and_get_cabinet(ledger):
    secret = ledger.add_cabinet("cab1", name="Galaga", currency="USD", price_cents=100, bundles=[(3, 250)],
                                coins_per_credit=2)
    assert len(secret) == 64 and int(secret, 16) >= 0
    cab = ledger.get_cabinet("cab1")
    assert {k: cab[k] for k in ("id", "name", "secret", "enabled", "currency", "price_cents", "bundles",
                                "coins_per_credit", "online", "last_seen")} == {
        "id": "cab1", "name": "Galaga", "secret": secret, "enabled": True, "currency": "usd", "price_cents": 100,
        "bundles": [(3, 250)], "coins_per_credit": 2, "online": False, "last_seen": None}
    assert ledger.get_cabinet("nope") is None
    assert ledger.add_cabinet("cab2") != secret


@pytest.mark.parametrize("kwargs, message", [
    ({"id": "bad id"}, "not valid"),
    ({"id": "x" * 33}, "not valid"),
    ({"id": ""}, "not valid"),
    ({"id": "c", "currency": "dollars"}, "3-letter"),
    ({"id": "c", "price_cents": 0}, "positive"),
    ({"id": "c", "price_cents": 1.5}, "positive"),
    ({"id": "c", "coins_per_credit": 0}, "1 to 255"),
    ({"id": "c", "bundles": [(3,)]}, "pair"),
    ({"id": "c", "bundles": [(0, 250)]}, "positive"),
    ({"id": "c", "bundles": [(3, 250), (3, 200)]}, "repeat"),
    ({"id": "c", "coins_per_credit": 100, "bundles": [(3, 250)]}, "255"),
], ids=["space", "too long", "empty", "currency", "zero price", "float price", "zero coins", "bundle shape",
        "bundle zero credits", "bundle repeated", "bundle too many pulses"])
def test_bad_cabinet_is_refused_and_nothing_stored(ledger, kwargs, message):
    with pytest.raises(LedgerError, match=message):
        ledger.add_cabinet(**kwargs)
    assert ledger.list_cabinets() == []


def test_duplicate_cabinet_is_refused_and_keeps_its_secret(ledger):
    secret = ledger.add_cabinet("cab1")
    with pytest.raises(CabinetExists, match="already exists"):
        ledger.add_cabinet("cab1", price_cents=5)
    assert ledger.get_cabinet("cab1")["secret"] == secret and ledger.get_cabinet("cab1")["price_cents"] == 100


def test_enable_disable(ledger):
    ledger.add_cabinet("cab1")
    ledger.set_enabled("cab1", False)
    assert ledger.get_cabinet("cab1")["enabled"] is False
    ledger.set_enabled("cab1", True)
    assert ledger.get_cabinet("cab1")["enabled"] is True
    with pytest.raises(UnknownCabinet):
        ledger.set_enabled("nope", False)


def test_seqs_are_per_cabinet_and_start_at_one(ledger):
    ledger.add_cabinet("cab1")
    ledger.add_cabinet("cab2")
    for n in range(3):
        credit(ledger, "a%d" % n, "cab1")
        credit(ledger, "b%d" % n, "cab2")
    assert [ledger.get_payment("cs_a%d" % n)["seq"] for n in range(3)] == [1, 2, 3]
    assert [ledger.get_payment("cs_b%d" % n)["seq"] for n in range(3)] == [1, 2, 3]


def test_concurrent_writers_on_separate_connections_get_distinct_increasing_seqs(ledger):
    ledger.add_cabinet("cab1")
    errors = []

    def writer(k):
        try:
            with open_ledger(ledger.path) as mine:
                for n in range(10):
                    credit(mine, "%d-%d" % (k, n))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    rows = ledger.list_payments(limit=100)
    assert sorted(r["seq"] for r in rows) == list(range(1, 41))
    by_time = sorted(rows, key=lambda r: (r["queued_at"], r["seq"]))
    assert [r["seq"] for r in by_time] == sorted(r["seq"] for r in by_time), "seq not increasing with commit order"
    assert ledger.get_cabinet("cab1")["next_seq"] == 41


def test_concurrent_webhooks_sharing_a_commit_each_succeed_or_fail_alone(ledger):
    """Group commit (SQLite): concurrent record_checkout calls may share one transaction; each runs in
    its own savepoint, so a failing one (unknown cabinet) or a duplicate event leaves the others whole."""
    ledger.add_cabinet("cab1")
    barrier = threading.Barrier(12)
    out, errors = {}, {}

    def writer(k):
        barrier.wait(30)
        with open_ledger(ledger.path) as mine:
            try:
                if k % 4 == 3:
                    out[k] = credit(mine, "bad%d" % k, cab="nope")
                elif k % 4 == 2:
                    out[k] = credit(mine, "dup")        # the same event id from three threads
                else:
                    out[k] = credit(mine, k)
            except UnknownCabinet as e:
                errors[k] = e

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(errors) == [3, 7, 11]
    assert sorted(out[k] for k in (2, 6, 10)) == ["duplicate_event", "duplicate_event", "queued"]
    assert all(out[k] == "queued" for k in (0, 1, 4, 5, 8, 9))
    assert all(ledger.get_payment("cs_bad%d" % k) is None for k in (3, 7, 11))
    rows = ledger.list_payments(limit=100)
    assert sorted(r["seq"] for r in rows) == list(range(1, 8)), "one seq per recorded credit, no gap"
    assert ledger.get_cabinet("cab1")["next_seq"] == 8


def test_a_shared_commit_that_fails_fails_every_webhook_in_it_and_a_retry_records_them(tmp_path):
    db = str(tmp_path / "arcade.db")
    with open_ledger(db) as ledger:
        ledger.add_cabinet("cab1")
    locker = sqlite3.connect(db, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")           # another program holds the write lock past the busy timeout
    errors = []

    def writer(k):
        with open_ledger(db, busy_timeout_ms=200) as mine:
            try:
                credit(mine, k)
            except StorageError as e:
                errors.append(e)

    try:
        threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert len(errors) == 4
    with open_ledger(db) as ledger:
        assert ledger.list_payments() == []
        assert [credit(ledger, k) for k in range(4)] == ["queued"] * 4, "nothing of the failed commit was kept"


def test_a_failed_transaction_changes_nothing(ledger):
    with pytest.raises(UnknownCabinet):
        credit(ledger, 1, cab="nope")
    assert ledger.get_payment("cs_1") is None
    # The event id was not kept either: Stripe's retry will be processed.
    ledger.add_cabinet("nope")
    assert credit(ledger, 1, cab="nope") == "queued"


def test_delivery_life_cycle(ledger):
    ledger.add_cabinet("cab1")
    credit(ledger, 1)
    credit(ledger, 2)
    heads = ledger.next_deliveries()
    assert [(h["session_id"], h["seq"]) for h in heads] == [("cs_1", 1)]
    assert ledger.next_deliveries(exclude={"cab1"}) == []
    assert ledger.mark_sent("cs_1", 1) and ledger.mark_sent("cs_1", 1)
    assert not ledger.mark_sent("cs_1", 2), "a PUBACK for another seq moved the payment"
    p = ledger.get_payment("cs_1")
    assert (p["state"], p["attempts"]) == ("sent", 2)
    assert ledger.record_ack("cs_1", 1, "applied", "", 1, 1)
    assert not ledger.record_ack("cs_1", 1, "duplicate", "", 0, 1), "a final state changed"
    assert ledger.get_payment("cs_1")["state"] == "applied"
    assert [h["session_id"] for h in ledger.next_deliveries()] == ["cs_2"]
    assert [c["pending"] for c in ledger.list_cabinets()] == [1]


def test_resequence_moves_the_counter_past_last_and_keeps_order(ledger):
    ledger.add_cabinet("cab1")
    for n in range(3):
        credit(ledger, n)
    ledger.mark_sent("cs_0", 1)
    changed = ledger.resequence("cab1", 50)
    assert changed == [("cs_0", 1, 51), ("cs_1", 2, 52), ("cs_2", 3, 53)]
    assert [(ledger.get_payment("cs_%d" % n)["seq"], ledger.get_payment("cs_%d" % n)["state"]) for n in range(3)] \
        == [(51, "queued"), (52, "queued"), (53, "queued")]
    credit(ledger, 3)
    assert ledger.get_payment("cs_3")["seq"] == 54


def test_stuck_lists_only_old_unacknowledged_credits(ledger):
    ledger.add_cabinet("cab1")
    credit(ledger, 1)
    assert ledger.list_payments(stuck=True, stuck_after=3600) == []
    assert [p["session_id"] for p in ledger.list_payments(stuck=True, stuck_after=0)] == ["cs_1"]


def test_status_is_recorded(ledger):
    ledger.add_cabinet("cab1")
    assert ledger.record_status("cab1", True, {"fw": "0.1.0"}, seen_at=123.0)
    cab = ledger.get_cabinet("cab1")
    assert (cab["online"], cab["last_seen"], cab["status"]) == (True, 123.0, {"fw": "0.1.0"})
    assert not ledger.record_status("nope", True)


def test_a_writer_held_past_the_busy_timeout_is_a_storage_error_the_webhook_can_catch(ledger):
    from relay.ledger import StorageError
    with open_ledger(ledger.path) as locker, locker._write():
        with open_ledger(ledger.path, busy_timeout_ms=50) as busy, pytest.raises(StorageError):
            busy.add_cabinet("cab9")
    assert ledger.get_cabinet("cab9") is None


def test_another_programs_hold_on_the_write_lock_keeps_writers_off(ledger_db):
    """Another program's write transaction (not a Ledger's) holds writers off too."""
    from relay.ledger import StorageError
    if not ledger_db.endswith(".db"):
        import psycopg
        from relay.backends import WRITE_LOCK
        locker = psycopg.connect(ledger_db, autocommit=True)
        hold, release = "SELECT pg_advisory_lock(%d)" % WRITE_LOCK, "SELECT pg_advisory_unlock(%d)" % WRITE_LOCK
    else:
        locker = sqlite3.connect(ledger_db, isolation_level=None)
        hold, release = "BEGIN IMMEDIATE", "ROLLBACK"
    open_ledger(ledger_db).close()
    try:
        locker.execute(hold)
        with open_ledger(ledger_db, busy_timeout_ms=50) as busy, pytest.raises(StorageError):
            busy.add_cabinet("cab9")
    finally:
        locker.execute(release)
        locker.close()


def exp_of(ledger, session):
    return ledger._rows("SELECT exp FROM payments WHERE session_id = ?", (session,))[0]["exp"]


def test_publish_first_marks_only_the_cabinets_lowest_pending_credit_in_the_same_transaction(ledger):
    """record_checkout's publish_first (a dispatcher of this process about to publish the credit itself):
    the only unacknowledged credit of its cabinet is marked published with the exp the caller computes
    from the cabinet's clock, and its row handed back; a credit behind another is left to the dispatcher."""
    ledger.add_cabinet("cab1")
    seen = []

    def expiry(queued_at, clock_set):
        seen.append(clock_set)
        return int(queued_at) + 60 if clock_set else 0

    first = {"expiry": expiry}
    assert ledger.record_checkout("evt_1", "checkout.session.completed", "cs_1", "credit", cabinet_id="cab1",
                                  amount=100, currency="usd", credits=1, pulses=1, publish_first=first) == "queued"
    row, pay = first["row"], ledger.get_payment("cs_1")
    assert seen == [False] and row["exp"] == exp_of(ledger, "cs_1") == 0 and pay["published_at"] == row["published_at"]
    assert (row["session_id"], row["seq"], row["pulses"], row["epoch"]) == ("cs_1", pay["seq"], 1, "")
    assert row["secret"] == ledger.get_cabinet("cab1")["secret"]
    second = {"expiry": expiry}
    assert ledger.record_checkout("evt_2", "checkout.session.completed", "cs_2", "credit", cabinet_id="cab1",
                                  amount=100, currency="usd", credits=1, pulses=1, publish_first=second) == "queued"
    assert second["row"] is None and ledger.get_payment("cs_2")["published_at"] is None
    # the first acked: the next credit is the only pending one again; a set clock gives it an exp
    assert ledger.record_ack("cs_1", pay["seq"], "applied", ack_pulses=1, ack_last=pay["seq"])
    ledger.record_status("cab1", True, clock_set=True)
    ledger.set_cabinet_epoch("cab1", "0123456789abcdef")
    third = {"expiry": expiry}
    assert ledger.record_checkout("evt_3", "checkout.session.completed", "cs_3", "credit", cabinet_id="cab1",
                                  amount=100, currency="usd", credits=1, pulses=1, publish_first=third) == "queued"
    assert third["row"] is None, "cs_2 is still unacknowledged and goes first"
    # a duplicate event or an invalid payment is no credit: nothing marked, no row
    dup = {"expiry": expiry}
    assert ledger.record_checkout("evt_1", "checkout.session.completed", "cs_1", "credit", cabinet_id="cab1",
                                  amount=100, currency="usd", credits=1, pulses=1,
                                  publish_first=dup) == "duplicate_event"
    assert "row" not in dup
    assert ledger.record_ack("cs_2", ledger.get_payment("cs_2")["seq"], "applied")
    ledger.record_ack("cs_3", ledger.get_payment("cs_3")["seq"], "applied")
    fourth = {"expiry": expiry}
    ledger.record_checkout("evt_4", "checkout.session.completed", "cs_4", "credit", cabinet_id="cab1",
                           amount=100, currency="usd", credits=1, pulses=1, publish_first=fourth)
    pay = ledger.get_payment("cs_4")
    assert fourth["row"]["epoch"] == "0123456789abcdef" and fourth["row"]["exp"] == exp_of(ledger, "cs_4") == int(
        pay["queued_at"]) + 60


def test_writers_of_one_process_queue_for_each_other_and_the_wait_is_bounded(tmp_path):
    """SQLite writers in one process wait on a lock of their own (relay/backends.py) instead of SQLite's
    sleeping busy handler: the second writer goes the moment the first commits; one held past the busy
    timeout fails the other with a storage error, which changes nothing."""
    db = str(tmp_path / "w.db")
    with open_ledger(db) as led:
        led.add_cabinet("cab1")
    inside, release, done = threading.Event(), threading.Event(), []

    def hold():
        with open_ledger(db, 5000) as holder, holder._write() as cur:
            cur.execute("UPDATE cabinets SET name = 'held' WHERE id = 'cab1'")
            inside.set()
            release.wait(10)

    def patient():
        with open_ledger(db, 10000) as led:
            done.append(led.set_enabled("cab1", False))

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert inside.wait(10)
        with open_ledger(db, 300) as waiter:
            with pytest.raises(sqlite3.OperationalError, match="busy timeout"):
                waiter.set_enabled("cab1", False)       # waits 300 ms for the other writer, then gives up
            assert waiter.get_cabinet("cab1")["enabled"], "the refused write changed nothing"
        w = threading.Thread(target=patient)
        w.start()
    finally:
        release.set()
        t.join(10)
    w.join(10)
    with open_ledger(db) as led:
        row = led.get_cabinet("cab1")
    assert done == [None] and not row["enabled"] and row["name"] == "held"


def test_a_credit_another_relay_marked_published_meanwhile_is_still_returned_with_its_exp(ledger, ledger_db):
    """PostgreSQL's relays all read every cabinet's next credit, and one without the lease may mark it
    published first: the lease holder must still get it (with that mark's exp), or it waits for the
    next round (seen as ~1 s edges in the bench). A credit a refund took meanwhile is not returned."""
    ledger.add_cabinet("cab1")
    ledger.add_cabinet("cab2")
    credit(ledger, 1)
    credit(ledger, 2, cab="cab2")
    real = ledger._rows
    other = open_ledger(ledger_db)

    def read_then_race(sql, args=()):
        rows = real(sql, args)
        if "WITH h AS" in sql:          # next_deliveries' read: another relay marks cs_1, a refund takes cs_2
            other.next_deliveries(exclude={"cab2"}, expiry=lambda row: 4242)
            assert other.claim_refund("cs_2", "op", "console") is not None
        return rows

    try:
        ledger._rows = read_then_race
        rows = ledger.next_deliveries(expiry=lambda row: 9999)
    finally:
        ledger._rows = real
        other.close()
    assert [(r["session_id"], r["exp"]) for r in rows] == [("cs_1", 4242)]
    assert rows[0]["published_at"] is not None
