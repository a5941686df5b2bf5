"""The ledger: the one module that owns storage, SQLite in WAL mode (a file path, the default) or
PostgreSQL (ARCADE_DB=postgresql://user:pass@host:port/db).

Every SQL statement of the relay lives here, behind a narrow interface, written in plain DB-API
(qmark `?` placeholders) and the SQL that SQLite and PostgreSQL share (ON CONFLICT, RETURNING, no
engine-only functions). relay/backends.py is the seam for the few differences (connecting, the write
lock, catalogue questions, PostgreSQL's spelling of placeholders and DDL types), so a method or a
MIGRATIONS entry added here runs on both engines unchanged.

A Ledger wraps one connection and is used by one thread at a time: the web app opens one per
request, the dispatcher owns one. Writes take the database's write lock up front (SQLite: BEGIN
IMMEDIATE; PostgreSQL: an advisory lock every relay on that database shares) so that
check-then-write sequences (idempotency, sequence allocation) are serialised.

Payment states:
  pending    checkout completed, payment not yet settled (async methods); no credit yet
  paid       money received (recorded together with `queued`; kept for backends that split them)
  queued     credit with its sequence number, waiting to be published
  sent       the broker acknowledged the publish (PUBACK); waiting for the cabinet's ack
  applied    the cabinet pulsed it                               (final)
  duplicate  the cabinet had already applied it                  (final)
  rejected   the cabinet refused it; `reason` says why            (final)
  invalid    failed validation (unknown cabinet, wrong amount...) (final, no credit)
  failed     checkout.session.async_payment_failed                (final, no credit)
  expired    checkout.session.expired                             (final, no credit)
  refunding  an operator's refund holds it (never published, or no credit); Stripe is being asked
  refunded   refunded through Stripe before any pulse                (final, no credit)
"""
import json
import os
import re
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager

from relay import backends

CABINET_ID = re.compile(r"[A-Za-z0-9_-]{1,32}\Z")
# The relay's broker user name: a '.' can't be in a cabinet id, so no cabinet can log in as the relay.
RELAY_BROKER_USER = "arcade.relay"
PENDING = ("queued", "sent")
ACKED = ("applied", "duplicate", "rejected")
FINAL = ACKED + ("invalid", "failed", "expired", "refunded")
STATES = ("pending", "paid") + PENDING + FINAL + ("refunding",)
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE cabinets (
    id               TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    secret           TEXT NOT NULL,
    enabled          INTEGER NOT NULL DEFAULT 1,
    currency         TEXT NOT NULL,
    price_cents      INTEGER NOT NULL,
    bundles          TEXT NOT NULL DEFAULT '[]',
    coins_per_credit INTEGER NOT NULL DEFAULT 1,
    next_seq         INTEGER NOT NULL DEFAULT 1,
    last_seq         INTEGER NOT NULL DEFAULT 0,
    online           INTEGER NOT NULL DEFAULT 0,
    last_seen        REAL,
    status           TEXT,
    created_at       REAL NOT NULL
);
CREATE TABLE payments (
    session_id   TEXT PRIMARY KEY,
    cabinet_id   TEXT,
    state        TEXT NOT NULL,
    reason       TEXT NOT NULL DEFAULT '',
    credits      INTEGER NOT NULL DEFAULT 0,
    pulses       INTEGER NOT NULL DEFAULT 0,
    amount       INTEGER,
    currency     TEXT,
    seq          INTEGER,
    issued_ts    INTEGER,
    attempts     INTEGER NOT NULL DEFAULT 0,
    ack_pulses   INTEGER,
    ack_last     INTEGER,
    event_type   TEXT,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    paid_at      REAL,
    queued_at    REAL,
    sent_at      REAL,
    done_at      REAL
);
CREATE UNIQUE INDEX payments_cabinet_seq ON payments (cabinet_id, seq);
CREATE INDEX payments_pending ON payments (cabinet_id, seq) WHERE state IN ('queued', 'sent');
CREATE INDEX payments_created ON payments (created_at);
CREATE TABLE events (
    event_id    TEXT PRIMARY KEY,
    session_id  TEXT,
    type        TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    received_at REAL NOT NULL
);
"""

# Schema changes after version 1 (and the pay and config tables, created when missing): applied on
# open in this order, each once and in its own write transaction; each applied name is recorded in
# meta as "migration:<name>". Add a change at the END with a unique name (work in parallel adds
# entries, never renumbers) and a test in tests/test_migrations.py that upgrades a database made
# before it (tests/data/ledger-v1.sql is one made by schema version 1 with rows in every table).
# Each entry: (name, [SQL statements]) or (name, callable(cursor)); both run on SQLite and PostgreSQL
# (relay/backends.py translates; a callable asks cur.dialect.has_table(cur, t) / .columns(cur, t)
# rather than PRAGMA or sqlite_master).
MIGRATIONS = [
    # issue 13: operator accounts for the console and the audit log of every operator action.
    ("issue13_console", [
        "CREATE TABLE operators (name TEXT PRIMARY KEY, pw_hash TEXT NOT NULL, created_at REAL NOT NULL, "
        "last_login REAL)",
        "CREATE TABLE audit (id INTEGER PRIMARY KEY, at REAL NOT NULL, who TEXT NOT NULL, action TEXT NOT NULL, "
        "subject TEXT NOT NULL DEFAULT '', detail TEXT NOT NULL DEFAULT '')",
        "CREATE INDEX audit_at ON audit (at)",
    ]),
    # issue 13: refunds that can never also pay out. published_at is set by the dispatcher's claim
    # (next_deliveries) BEFORE a credit's first publish, so "never published" is a fact in the
    # ledger; credits already queued or sent by an older relay count as published.
    ("issue13_refunds", [
        "ALTER TABLE payments ADD COLUMN published_at REAL",
        "UPDATE payments SET published_at = COALESCE(sent_at, queued_at) WHERE state IN ('queued', 'sent') "
        "OR sent_at IS NOT NULL",
        "CREATE TABLE refunds (session_id TEXT PRIMARY KEY, state TEXT NOT NULL, prior_state TEXT NOT NULL, "
        "after_play INTEGER NOT NULL DEFAULT 0, refund_id TEXT, amount INTEGER, currency TEXT, "
        "reason TEXT NOT NULL DEFAULT '', who TEXT NOT NULL, source TEXT NOT NULL, error TEXT NOT NULL DEFAULT '', "
        "created_at REAL NOT NULL, updated_at REAL NOT NULL)",
        "CREATE TABLE disputes (dispute_id TEXT PRIMARY KEY, session_id TEXT, charge_id TEXT, payment_intent TEXT, "
        "amount INTEGER, currency TEXT, reason TEXT NOT NULL DEFAULT '', status TEXT NOT NULL, "
        "created_at REAL NOT NULL, updated_at REAL NOT NULL)",
    ]),
    # issue 13: alerts, once per incident: an open incident has closed_at NULL.
    ("issue13_alerts", [
        "CREATE TABLE alert_incidents (id INTEGER PRIMARY KEY, key TEXT NOT NULL, kind TEXT NOT NULL, "
        "subject TEXT NOT NULL DEFAULT '', message TEXT NOT NULL, opened_at REAL NOT NULL, closed_at REAL)",
        "CREATE INDEX alert_incidents_open ON alert_incidents (key) WHERE closed_at IS NULL",
    ]),
    # issue 10: pay-page attempts reserved before Stripe is called (rate limits that cannot race,
    # failures counted, an open session offered again to the same client for the same bundle).
    ("issue10_checkout_attempts", [
        "CREATE TABLE checkout_attempts (id INTEGER PRIMARY KEY, cabinet_id TEXT NOT NULL, client_key TEXT NOT NULL, "
        "option_key TEXT NOT NULL, credits INTEGER NOT NULL, amount INTEGER NOT NULL, state TEXT NOT NULL, "
        "session_id TEXT, url TEXT, reuse_until REAL, created_at REAL NOT NULL)",
        "CREATE INDEX checkout_attempts_rate ON checkout_attempts (cabinet_id, created_at)",
        "CREATE INDEX checkout_attempts_client ON checkout_attempts (cabinet_id, client_key, created_at)",
    ]),
]


def _issue9_broker_users(cur):
    # Each cabinet its own broker login (not its HMAC secret), the relay its own: a board's flash
    # then gives away that one cabinet's topics, never the relay's or another cabinet's.
    cur.execute("CREATE TABLE broker_users (username TEXT PRIMARY KEY, password TEXT NOT NULL, "
                "cabinet_id TEXT UNIQUE, created_at REAL NOT NULL)")
    now = time.time()
    cur.execute("INSERT INTO broker_users (username, password, cabinet_id, created_at) VALUES (?, ?, NULL, ?)",
                (RELAY_BROKER_USER, secrets.token_hex(16), now))
    cur.execute("SELECT id FROM cabinets ORDER BY id")
    for (cab,) in cur.fetchall():
        cur.execute("INSERT INTO broker_users (username, password, cabinet_id, created_at) VALUES (?, ?, ?, ?)",
                    (cab, secrets.token_hex(16), cab, now))


MIGRATIONS.append(("issue9_broker_users", _issue9_broker_users))
# The epoch each cabinet's journal announced last (docs/protocol.md, No replay after flash loss):
# credits are signed for it, so none signed for an earlier journal applies after the flash is lost.
# boot, n: the seal of the last status accepted in that epoch (an older one is a replay); retired:
# the cabinet's earlier epochs (JSON list, newest last, at most RETIRED_EPOCHS), never current again.
MIGRATIONS.append(("issue9_cabinet_epochs", ["CREATE TABLE cabinet_epochs (cabinet_id TEXT PRIMARY KEY, "
                                             "epoch TEXT NOT NULL, boot INTEGER NOT NULL DEFAULT 0, "
                                             "n INTEGER NOT NULL DEFAULT 0, retired TEXT NOT NULL DEFAULT '[]', "
                                             "seen_at REAL NOT NULL)"]))
RETIRED_EPOCHS = 16
# issue 13 (automatic refunds): exp, the signed expiry of every copy of a credit ever published (Unix
# seconds), fixed in the same write that marks it published (next_deliveries); 0: a copy without expiry
# went out (the cabinet's clock was unset), so it is never refunded automatically. NULL: not published
# by a relay that knew expiries (an older relay): never refunded automatically either.
# cabinets.clock_set: what the cabinet's last live online status said of its clock (1 set and close to
# ours, 0 unset or off; NULL never said): credits get an exp only while it is 1.
MIGRATIONS.append(("issue13b_credit_expiry", ["ALTER TABLE payments ADD COLUMN exp INTEGER",
                                              "ALTER TABLE cabinets ADD COLUMN clock_set INTEGER"]))
# The lines the cabinet's screen shows (issue 16), as carried by its config version issued last: the
# price line and the promotion on now ("" for none). relay/screenlines.py issues a new config version
# when what they should say differs.
MIGRATIONS.append(("issue16_screen_lines", ["CREATE TABLE screen_lines (cabinet_id TEXT PRIMARY KEY, "
                                            "price TEXT NOT NULL, promo TEXT NOT NULL, updated_at REAL NOT NULL)"]))
# issue 12: per-cabinet leases, so several relays on one PostgreSQL database each dispatch their own
# cabinets (relay/leases.py says how they are taken, renewed and fenced).
MIGRATIONS.append(("issue12_cabinet_leases", [
    "CREATE TABLE cabinet_leases (cabinet_id TEXT PRIMARY KEY, holder TEXT NOT NULL, token INTEGER NOT NULL, "
    "expires_at REAL NOT NULL, taken_at REAL NOT NULL)"]))
# issue 12: the leader lease, so the relay-wide duties (reconciliation, alerts, automatic refunds) move to
# another relay when their holder dies (relay/leadership.py); one row per role, shaped like cabinet_leases.
MIGRATIONS.append(("issue12_leader_lease", [
    "CREATE TABLE relay_leases (role TEXT PRIMARY KEY, holder TEXT NOT NULL, token INTEGER NOT NULL, "
    "expires_at REAL NOT NULL, taken_at REAL NOT NULL)"]))

_CABINET_COLS = ("id, name, secret, enabled, currency, price_cents, bundles, coins_per_credit, next_seq, "
                 "last_seq, online, last_seen, status, created_at")
_PAYMENT_COLS = ("session_id, cabinet_id, state, reason, credits, pulses, amount, currency, seq, issued_ts, "
                 "attempts, ack_pulses, ack_last, event_type, created_at, updated_at, paid_at, queued_at, "
                 "sent_at, done_at, published_at")


# What a storage failure raises (the webhook answers 5xx so that Stripe retries): a tuple of the
# engines' base errors, for `except StorageError`.
StorageError = backends.StorageError


class LedgerError(Exception):
    """Bad input to the ledger; nothing was changed."""


class CabinetExists(LedgerError):
    pass


class UnknownCabinet(LedgerError):
    pass


def valid_cabinet_id(cabinet_id):
    return isinstance(cabinet_id, str) and bool(CABINET_ID.match(cabinet_id))


def ledger_exists(db):
    """Whether `db` can name an existing ledger without creating one: a SQLite file that exists, or a
    postgresql:// URL (whether that server and database answer is for opening it to say)."""
    return backends.is_postgres(db) or os.path.exists(str(db))


def _create_private(path):
    """Create a missing database file 0600 (it holds the cabinets' secrets): SQLite gives its -wal
    and -shm files the database file's mode."""
    if path == ":memory:" or path.startswith("file:") or os.path.exists(path):
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError:
        pass    # a bad path: sqlite3.connect says why, as before


def exposed_files(path):
    """[(file, mode)] of the database and its side files that its group or others can read or write."""
    out = []
    for name in (path, path + "-wal", path + "-shm", path + "-journal"):
        try:
            mode = os.stat(name).st_mode & 0o777
        except OSError:
            continue
        if mode & 0o077:
            out.append((name, mode))
    return out

def inspect_database(path):
    """What a database file is, read only (it is neither created nor migrated): a dict with ledger_id,
    created_at, schema_version, cabinets (ids), migrations (applied) and `missing` (the MIGRATIONS it
    has not had). Raises LedgerError if
    the file is missing or is not a ledger, StorageError if it cannot be read."""
    if backends.is_postgres(path):
        raise LedgerError("%s is a PostgreSQL database: inspect_database reads SQLite files" % backends.redact(path))
    if not os.path.isfile(str(path)):
        raise LedgerError("no database at %s" % (path,))
    db = sqlite3.connect("file:%s?mode=ro" % _uri_path(path), uri=True, timeout=5.0)
    try:
        try:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            cabinets = [r[0] for r in db.execute("SELECT id FROM cabinets ORDER BY id").fetchall()]
        except sqlite3.DatabaseError as e:
            if "no such table" in str(e) or "not a database" in str(e):
                raise LedgerError("%s is not an arcade ledger database (%s)" % (path, e))
            raise
    finally:
        db.close()
    if "ledger_id" not in meta:
        raise LedgerError("%s is not an arcade ledger database (no ledger id)" % (path,))
    done = sorted(k[len("migration:"):] for k in meta if k.startswith("migration:"))
    return {"ledger_id": meta["ledger_id"], "created_at": float(meta.get("created_at") or 0),
            "schema_version": int(meta.get("schema_version") or 0), "cabinets": cabinets, "migrations": done,
            "missing": [name for name, _ in MIGRATIONS if name not in done]}


def backup_database(src_path, dest_path, pages=256, progress=None, journal_mode="DELETE"):
    """A consistent copy of the database at `src_path` into `dest_path` (which may exist, empty or an
    older database: it is replaced), by SQLite's online backup API: a relay keeps reading and writing
    meanwhile and the copy is one moment's snapshot, WAL content included. Neither side is migrated.
    The copy is left in `journal_mode` (DELETE: one self-contained file; WAL: a database the relay
    uses, as restore makes). `progress(remaining, total)`
    is called between steps of `pages` pages."""
    src = sqlite3.connect("file:%s?mode=ro" % _uri_path(src_path), uri=True, timeout=30.0)
    try:
        dest = sqlite3.connect(str(dest_path), isolation_level=None, timeout=30.0)
        try:
            src.backup(dest, pages=pages,
                       progress=(lambda status, remaining, total: progress(remaining, total)) if progress else None)
            dest.execute("PRAGMA journal_mode = %s" % ("WAL" if journal_mode == "WAL" else "DELETE"))
            bad = dest.execute("PRAGMA integrity_check").fetchall()
            if bad != [("ok",)]:
                raise StorageError("the copy of %s fails SQLite's integrity check: %s" % (src_path, bad[:3]))
        finally:
            dest.close()
    finally:
        src.close()


def _uri_path(path):
    from urllib.parse import quote
    return quote(os.path.abspath(str(path)))


def open_ledger(path, busy_timeout_ms=5000):
    """Open (creating and migrating if needed) the ledger at `path`: a SQLite file or a postgresql:// URL."""
    return Ledger(path, busy_timeout_ms)


class _CommitGroup:
    """Group commit for the webhooks of one process on one SQLite database.

    A caller queues its work; if no caller is committing, it leads: it takes everything queued, runs
    each work in a savepoint of one BEGIN IMMEDIATE transaction on its own connection, commits (one
    fsync for the lot) and hands each caller its result or its error. Whoever queued meanwhile waits
    for that commit to end; then the first of them leads the next batch with everything queued by then.
    Nobody answers before the commit that holds its own row has returned, and an idle relay commits a
    lone webhook at once (no timer). A failure of the transaction itself (BEGIN, COMMIT, a statement
    error that ends the transaction) fails every work in the batch: nothing of theirs was committed."""

    def __init__(self):
        self._lock = threading.Lock()
        self._queue = []
        self._leading = False

    def run(self, ledger, work):
        item = _Work(work)
        with self._lock:
            self._queue.append(item)
            if not self._leading:
                self._leading = item.lead = True
        if not item.lead:
            item.done.wait()            # set by the leader of its batch, or to make it lead the next one
        if item.lead:
            with self._lock:
                batch, self._queue = self._queue, []
            try:
                self._commit(ledger, batch)
            finally:
                for other in batch:
                    if other is not item:
                        other.done.set()
                with self._lock:
                    if self._queue:
                        self._queue[0].lead = True
                        self._queue[0].done.set()
                    else:
                        self._leading = False
        if item.error is not None:
            raise item.error
        return item.result

    @staticmethod
    def _commit(ledger, batch):
        db = ledger._db
        cur = db.cursor()
        begun = False
        try:
            ledger.dialect.begin(cur)
            begun = True
            for item in batch:
                cur.execute("SAVEPOINT arcade_work")
                try:
                    item.result = item.work(cur)
                except Exception as e:
                    if not db.in_transaction:
                        raise           # the engine ended the whole transaction: the batch fails
                    cur.execute("ROLLBACK TO arcade_work")
                    item.error = e
                cur.execute("RELEASE arcade_work")
            cur.execute("COMMIT")
        except BaseException as e:
            if db.in_transaction:
                db.execute("ROLLBACK")
            for item in batch:
                if item.error is None:
                    item.result, item.error = None, e
            if not isinstance(e, Exception):
                raise
        finally:
            cur.close()
            if begun:
                ledger.dialect.end()


class _Work:
    __slots__ = ("work", "done", "lead", "result", "error")

    def __init__(self, work):
        self.work, self.done, self.lead, self.result, self.error = work, threading.Event(), False, None, None


_commit_group = backends.PerDatabase(_CommitGroup)


class Ledger:
    def __init__(self, path, busy_timeout_ms=5000):
        self.path = str(path)
        if not backends.is_postgres(self.path):
            _create_private(self.path)
        # Autocommit mode: transactions are explicit (BEGIN + the write lock ... COMMIT) in _write().
        self._db, self.dialect = backends.open_backend(self.path, busy_timeout_ms)
        self.created_now = False
        self.migrated_now = []          # the MIGRATIONS this open applied (`arcade db upgrade` prints them)
        try:
            self.ledger_id = self.dialect.schema_cached(self._db)
            if self.ledger_id is None:
                self.ledger_id = self._meta("ledger_id") or self._create()
                self._ensure_pay_tables()
                self._ensure_config_table()
                self.migrated_now = self._migrate()
                self.dialect.remember_schema(self._db, self.ledger_id)
        except BaseException:
            self._db.close()
            raise

    @property
    def backend(self):
        """The engine: "sqlite" or "postgresql"."""
        return self.dialect.name

    def close(self):
        self._db.close()

    @property
    def in_transaction(self):
        return self._db.in_transaction

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- plumbing ----------------------------------------------------------------------------

    @contextmanager
    def _write(self):
        """One write transaction holding the database lock from its start."""
        cur = self._db.cursor()
        self.dialect.begin(cur)
        try:
            yield cur
            cur.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        finally:
            cur.close()
            self.dialect.end()

    def _grouped(self, work):
        """work(cur) in a write transaction, answered once that transaction is durable. On SQLite,
        concurrent callers in this process share one transaction and so one commit (one fsync, with
        synchronous=FULL): group commit (_CommitGroup). Each work runs in its own savepoint, so it
        succeeds or fails alone, exactly as in a transaction of its own. PostgreSQL: _write()."""
        if self.dialect.name != "sqlite":
            with self._write() as cur:
                return work(cur)
        return _commit_group(self.path).run(self, work)

    def _rows(self, sql, args=()):
        cur = self._db.execute(sql, args)
        try:
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]
        finally:
            cur.close()

    def _has_table(self, name):
        cur = self._db.cursor()
        try:
            return self.dialect.has_table(cur, name)
        finally:
            cur.close()

    def _meta(self, key):
        if not self._has_table("meta"):
            return None
        rows = self._rows("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0]["value"] if rows else None

    def _create(self):
        with self._write() as cur:
            # Another process may have created it between our check and our lock.
            if not self.dialect.has_table(cur, "meta"):
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        cur.execute(statement)
                ledger_id = secrets.token_hex(16)
                self.created_now = True
                cur.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                                [("ledger_id", ledger_id), ("schema_version", str(SCHEMA_VERSION)),
                                 ("created_at", repr(time.time()))])
        return self._meta("ledger_id")

    def _migrate(self, migrations=None):
        """Apply the MIGRATIONS this database has not had yet; returns the names applied now."""
        done = {r["key"][len("migration:"):] for r in self._rows("SELECT key FROM meta WHERE key LIKE 'migration:%'")}
        applied = []
        for name, change in (MIGRATIONS if migrations is None else migrations):
            if name in done:
                continue
            with self._write() as cur:
                # another process may have applied it between our read and our lock
                cur.execute("SELECT 1 FROM meta WHERE key = ?", ("migration:" + name,))
                if cur.fetchone() is not None:
                    continue
                if callable(change):
                    change(cur)
                else:
                    for statement in change:
                        cur.execute(statement)
                cur.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ("migration:" + name, repr(time.time())))
            applied.append(name)
        return applied

    def migrations(self):
        """The names of the migrations this database has had."""
        return sorted(r["key"][len("migration:"):] for r in self._rows("SELECT key FROM meta WHERE key LIKE "
                                                                       "'migration:%'"))

    def ping(self):
        """Raise if the database cannot be read."""
        self._rows("SELECT 1 AS one")

    @property
    def created_at(self):
        return float(self._meta("created_at"))

    # -- cabinets ----------------------------------------------------------------------------

    def add_cabinet(self, id, name=None, currency="usd", price_cents=100, bundles=(), coins_per_credit=1):
        """Register a cabinet; returns its new secret (64 hex digits). Raises LedgerError on bad input."""
        if not valid_cabinet_id(id):
            raise LedgerError("cabinet id %r is not valid: use 1 to 32 letters, digits, '-' or '_'" % (id,))
        currency, clean = self.check_prices(currency, price_cents, bundles, coins_per_credit)
        secret = secrets.token_hex(32)
        now = time.time()
        with self._write() as cur:
            cur.execute("INSERT INTO cabinets (id, name, secret, enabled, currency, price_cents, bundles, "
                        "coins_per_credit, created_at) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (id) DO NOTHING",
                        (id, name or id, secret, currency, price_cents, json.dumps(clean), coins_per_credit, now))
            if cur.rowcount != 1:
                raise CabinetExists("cabinet %r already exists: pick another id, or use `arcade cabinet list`" % id)
            cur.execute("INSERT INTO broker_users (username, password, cabinet_id, created_at) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (username) DO UPDATE SET password = excluded.password",
                        (id, secrets.token_hex(16), id, now))
        return secret

    @staticmethod
    def check_prices(currency, price_cents, bundles, coins_per_credit):
        """Validated (currency, [[credits, cents], ...]); raises LedgerError saying what is wrong."""
        currency = str(currency).lower()
        if not re.fullmatch(r"[a-z]{3}", currency):
            raise LedgerError("currency %r is not a 3-letter ISO code like usd or eur" % (currency,))
        if not isinstance(price_cents, int) or isinstance(price_cents, bool) or price_cents <= 0:
            raise LedgerError("price %r must be a positive whole number of cents" % (price_cents,))
        if not isinstance(coins_per_credit, int) or not 1 <= coins_per_credit <= 255:
            raise LedgerError("coins per credit %r must be a whole number from 1 to 255" % (coins_per_credit,))
        clean = []
        for bundle in bundles or ():
            try:
                credits, cents = bundle
            except (TypeError, ValueError):
                raise LedgerError("bundle %r must be a pair (credits, cents)" % (bundle,))
            if not (isinstance(credits, int) and isinstance(cents, int) and credits > 0 and cents > 0):
                raise LedgerError("bundle %r needs a positive number of credits and of cents" % (bundle,))
            if credits * coins_per_credit > 255:
                raise LedgerError("bundle %r would need %d coin pulses; at most 255 fit in one credit message"
                                  % (bundle, credits * coins_per_credit))
            clean.append([credits, cents])
        if len({c for c, _ in clean}) != len(clean) or len({p for _, p in clean}) != len(clean):
            raise LedgerError("bundles %r repeat a number of credits or a price" % (bundles,))
        return currency, clean

    def set_prices(self, id, name=None, price_cents=None, bundles=None):
        """Change a cabinet's name, price and/or bundles (None: keep), validated like add_cabinet;
        raises LedgerError (nothing changed)."""
        cab = self.get_cabinet(id)
        if cab is None:
            raise UnknownCabinet("no cabinet %r: see `arcade cabinet list`" % (id,))
        if name is not None and (not isinstance(name, str) or not name.strip() or len(name) > 64):
            raise LedgerError("name %r must be 1 to 64 characters" % (name,))
        _, clean = self.check_prices(cab["currency"], cab["price_cents"] if price_cents is None else price_cents,
                                      cab["bundles"] if bundles is None else bundles, cab["coins_per_credit"])
        with self._write() as cur:
            cur.execute("UPDATE cabinets SET name = COALESCE(?, name), price_cents = COALESCE(?, price_cents), "
                        "bundles = ? WHERE id = ?", (name.strip() if name else None, price_cents, json.dumps(clean), id))

    # -- broker logins (relay/mosquitto.py writes them as a mosquitto password file and ACL) ---------

    def broker_password(self, cabinet_id):
        """The cabinet's own broker password (its user name is its id), or None."""
        rows = self._rows("SELECT password FROM broker_users WHERE cabinet_id = ?", (cabinet_id,))
        return rows[0]["password"] if rows else None

    def broker_logins(self):
        """{"relay": (user, password), "cabinets": [(id, password)]}: the enabled cabinets only, so a
        disabled one (a board taken out of service, or stolen) can no longer log in."""
        relay = self._rows("SELECT username, password FROM broker_users WHERE username = ?", (RELAY_BROKER_USER,))[0]
        cabs = self._rows("SELECT b.cabinet_id, b.password FROM broker_users b JOIN cabinets c ON c.id = b.cabinet_id "
                          "WHERE c.enabled = 1 ORDER BY b.cabinet_id")
        relays = self._rows("SELECT username, password FROM broker_users WHERE cabinet_id IS NULL AND username LIKE ? "
                            "ORDER BY username", (RELAY_BROKER_USER + ".%",))
        return {"relay": (relay["username"], relay["password"]),
                "cabinets": [(r["cabinet_id"], r["password"]) for r in cabs],
                "relays": [(r["username"], r["password"]) for r in relays]}

    def relay_login(self, name):
        """Relay `name`'s own broker login, made on first use: (user, password). Several relays on one
        database each need one (the broker takes the login as the client id: use_username_as_clientid)."""
        user = "%s.%s" % (RELAY_BROKER_USER, name)
        with self._write() as cur:
            cur.execute("SELECT password FROM broker_users WHERE username = ?", (user,))
            row = cur.fetchone()
            if row is not None:
                return user, row[0]
            password = secrets.token_hex(16)
            cur.execute("INSERT INTO broker_users (username, password, cabinet_id, created_at) VALUES (?, ?, NULL, ?)",
                        (user, password, time.time()))
            return user, password

    def cabinet_epoch(self, cabinet_id):
        """The epoch the cabinet announced last ("" if none yet)."""
        rows = self._rows("SELECT epoch FROM cabinet_epochs WHERE cabinet_id = ?", (cabinet_id,))
        return rows[0]["epoch"] if rows else ""

    def set_cabinet_epoch(self, cabinet_id, epoch, boot=None, n=None, now=None, status=None):
        """Record what the cabinet said about its journal: `epoch`, with the (boot, n) seal of a status
        (None: from an ack, no seal). Returns "new" (another epoch than the current one: the old one is
        retired), "fresh" (same epoch, a higher seal or none), or "stale" (a retired epoch, or a seal not
        above the last one accepted: a replay), in one transaction. `status`: the keyword arguments of
        record_status for the status that said it, recorded in that same transaction unless stale."""
        now = time.time() if now is None else now
        with self._write() as cur:
            verdict = self._set_epoch(cur, cabinet_id, epoch, boot, n, now)
            if status is not None and verdict != "stale":
                self._update_status(cur, cabinet_id, **status)
            return verdict

    @staticmethod
    def _set_epoch(cur, cabinet_id, epoch, boot, n, now):
        cur.execute("SELECT epoch, boot, n, retired FROM cabinet_epochs WHERE cabinet_id = ?", (cabinet_id,))
        row = cur.fetchone()
        retired = json.loads(row[3]) if row else []
        if epoch in retired:
            return "stale"
        if row is not None and row[0] == epoch:
            if boot is None:
                return "fresh"
            if (boot, n) <= (row[1], row[2]):
                return "stale"
            cur.execute("UPDATE cabinet_epochs SET boot = ?, n = ?, seen_at = ? WHERE cabinet_id = ?",
                        (boot, n, now, cabinet_id))
            return "fresh"
        if row is not None and row[0]:
            retired = (retired + [row[0]])[-RETIRED_EPOCHS:]
        cur.execute("INSERT INTO cabinet_epochs (cabinet_id, epoch, boot, n, retired, seen_at) VALUES "
                    "(?, ?, ?, ?, ?, ?) ON CONFLICT (cabinet_id) DO UPDATE SET epoch = excluded.epoch, "
                    "boot = excluded.boot, n = excluded.n, retired = excluded.retired, seen_at = excluded.seen_at",
                    (cabinet_id, epoch, boot or 0, n or 0, json.dumps(retired), now))
        return "new"

    def rekey_cabinet(self, cabinet_id, secret=None, now=None):
        """A new HMAC secret for the cabinet (`arcade provision` makes one for every board it writes):
        credits signed for the old board stop verifying. Its retained config gets a new version, so the
        dispatcher signs and publishes it again with the new secret. Returns the secret."""
        secret = secret or secrets.token_hex(32)
        now = time.time() if now is None else now
        with self._write() as cur:
            cur.execute("UPDATE cabinets SET secret = ? WHERE id = ?", (secret, cabinet_id))
            if cur.rowcount != 1:
                raise UnknownCabinet("cabinet %r is not in the database" % (cabinet_id,))
            if self.dialect.has_table(cur, "cabinet_config"):
                cur.execute("UPDATE cabinet_config SET ver = CASE WHEN ver + 1 > ? THEN ver + 1 ELSE ? END, ts = ?, "
                            "updated_at = ? WHERE cabinet_id = ? AND ver > 0", (int(now), int(now), int(now), now,
                                                                                 cabinet_id))
        return secret

    def rekey_broker(self, cabinet_id):
        """A new broker password for a cabinet (a board replaced, or its flash read); returns it."""
        password = secrets.token_hex(16)
        with self._write() as cur:
            cur.execute("UPDATE broker_users SET password = ? WHERE cabinet_id = ?", (password, cabinet_id))
            if cur.rowcount != 1:
                raise UnknownCabinet("cabinet %r is not in the database" % (cabinet_id,))
        return password

    @staticmethod
    def _cabinet(row):
        row["enabled"] = bool(row["enabled"])
        row["online"] = bool(row["online"])
        row["bundles"] = [tuple(b) for b in json.loads(row["bundles"])]
        row["status"] = json.loads(row["status"]) if row["status"] else None
        return row

    def get_cabinet(self, id):
        rows = self._rows("SELECT %s FROM cabinets WHERE id = ?" % _CABINET_COLS, (id,))
        return self._cabinet(rows[0]) if rows else None

    def list_cabinets(self):
        """All cabinets, each with `pending` = credits queued or sent and not yet acknowledged."""
        rows = self._rows("SELECT %s, (SELECT COUNT(*) FROM payments p WHERE p.cabinet_id = c.id AND "
                          "p.state IN ('queued', 'sent')) AS pending FROM cabinets c ORDER BY id"
                          % ", ".join("c." + c.strip() for c in _CABINET_COLS.split(",")))
        return [self._cabinet(r) for r in rows]

    def set_enabled(self, id, enabled):
        with self._write() as cur:
            cur.execute("UPDATE cabinets SET enabled = ? WHERE id = ?", (1 if enabled else 0, id))
            if cur.rowcount != 1:
                raise UnknownCabinet("no cabinet %r: see `arcade cabinet list`" % (id,))

    def record_status(self, id, online, status=None, seen_at=None, clock_set=None):
        """The cabinet's retained status (or any sign of life): online flag, last seen, status JSON, and,
        from a live one, whether its clock is set (and close to ours; None: unchanged), in one write."""
        with self._write() as cur:
            return self._update_status(cur, id, online, status, seen_at, clock_set)

    @staticmethod
    def _update_status(cur, id, online, status=None, seen_at=None, clock_set=None):
        cur.execute("UPDATE cabinets SET online = ?, last_seen = ?, status = COALESCE(?, status), "
                    "clock_set = COALESCE(?, clock_set) WHERE id = ?",
                    (1 if online else 0, seen_at or time.time(), json.dumps(status) if status is not None else None,
                     None if clock_set is None else (1 if clock_set else 0), id))
        return cur.rowcount == 1

    # -- payments: the webhook side ----------------------------------------------------------

    def record_checkout(self, event_id, event_type, session_id, outcome, cabinet_id=None, amount=None,
                        currency=None, credits=0, pulses=0, reason="", publish_first=None):
        """Record one Stripe event about one Checkout Session, idempotently, in one transaction.

        outcome: "credit" (queue a credit of `credits`/`pulses` for `cabinet_id`, allocating its seq),
                 "pending", "invalid", "failed" or "expired" (no credit).
        Returns what happened: "queued", "pending", "invalid", "failed", "expired", "duplicate_event"
        (this event id was seen before) or "duplicate_session" (the session already has an outcome
        this event cannot change). Only a "pending" session can still change.

        publish_first: a dict from a dispatcher of this process that can publish the credit the moment
        it is committed (Dispatcher.first_publish). When the new credit is its cabinet's only
        unacknowledged one, the same transaction marks it published with its signed exp, as
        next_deliveries would (`publish_first["expiry"](queued_at, clock_set)`), and puts the row to
        publish (next_deliveries' columns and the cabinet's epoch) in `publish_first["row"]`, to be
        used only once this call has returned: committed, durable.
        """
        if outcome not in ("credit", "pending", "invalid", "failed", "expired"):
            raise ValueError("unknown outcome %r" % (outcome,))

        def record(cur):
            now = time.time()  # taken under the lock, so times follow commit (and seq) order
            cur.execute("INSERT INTO events (event_id, session_id, type, outcome, received_at) "
                        "VALUES (?, ?, ?, '', ?) ON CONFLICT (event_id) DO NOTHING",
                        (event_id, session_id, event_type, now))
            if cur.rowcount != 1:
                return "duplicate_event"
            cur.execute("SELECT state FROM payments WHERE session_id = ?", (session_id,))
            row = cur.fetchone()
            if row is not None and (row[0] != "pending" or outcome == "pending"):
                result = "duplicate_session"
            else:
                seq = issued = None
                state = outcome
                if outcome == "credit":
                    state = "queued"
                    cur.execute("UPDATE cabinets SET next_seq = next_seq + 1 WHERE id = ? RETURNING next_seq - 1",
                                (cabinet_id,))
                    got = cur.fetchone()
                    if got is None:
                        raise UnknownCabinet("no cabinet %r" % (cabinet_id,))
                    seq, issued = got[0], int(now)
                paid_at = now if outcome == "credit" else None
                queued_at = now if outcome == "credit" else None
                done_at = now if state in FINAL else None
                if row is None:
                    cur.execute("INSERT INTO payments (session_id, cabinet_id, state, reason, credits, pulses, "
                                "amount, currency, seq, issued_ts, event_type, created_at, updated_at, paid_at, "
                                "queued_at, done_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                (session_id, cabinet_id, state, reason, credits, pulses, amount, currency, seq,
                                 issued, event_type, now, now, paid_at, queued_at, done_at))
                else:
                    cur.execute("UPDATE payments SET cabinet_id = ?, state = ?, reason = ?, credits = ?, "
                                "pulses = ?, amount = ?, currency = ?, seq = ?, issued_ts = ?, event_type = ?, "
                                "updated_at = ?, paid_at = ?, queued_at = ?, done_at = ? WHERE session_id = ?",
                                (cabinet_id, state, reason, credits, pulses, amount, currency, seq, issued,
                                 event_type, now, paid_at, queued_at, done_at, session_id))
                result = state
                if state == "queued":
                    self.dialect.notify_credit(cur, cabinet_id)
                if publish_first is not None and state == "queued":
                    publish_first["row"] = self._mark_first(cur, publish_first["expiry"], session_id, cabinet_id,
                                                            seq, credits, pulses, issued, now)
            cur.execute("UPDATE events SET outcome = ? WHERE event_id = ?", (result, event_id))
            return result

        return self._grouped(record)

    @staticmethod
    def _mark_first(cur, expiry, session_id, cabinet_id, seq, credits, pulses, issued, now):
        """record_checkout's publish_first: None when an older credit of the cabinet is unacknowledged
        (it goes first: the dispatcher sends this one after its ack)."""
        cur.execute("SELECT 1 FROM payments WHERE cabinet_id = ? AND state IN ('queued', 'sent') AND seq < ? LIMIT 1",
                    (cabinet_id, seq))
        if cur.fetchone() is not None:
            return None
        cur.execute("SELECT c.secret, c.clock_set, (SELECT e.epoch FROM cabinet_epochs e WHERE e.cabinet_id = c.id) "
                    "FROM cabinets c WHERE c.id = ?", (cabinet_id,))
        secret, clock_set, epoch = cur.fetchone()
        exp = int(expiry(now, bool(clock_set)))
        cur.execute("UPDATE payments SET published_at = ?, exp = ? WHERE session_id = ?", (now, exp, session_id))
        return {"session_id": session_id, "cabinet_id": cabinet_id, "seq": seq, "credits": credits, "pulses": pulses,
                "issued_ts": issued, "state": "queued", "queued_at": now, "published_at": now, "exp": exp,
                "secret": secret, "epoch": epoch or ""}

    # -- payments: reading -------------------------------------------------------------------

    def get_payment(self, session_id):
        rows = self._rows("SELECT %s FROM payments WHERE session_id = ?" % _PAYMENT_COLS, (session_id,))
        return rows[0] if rows else None

    def list_payments(self, limit=50, stuck=False, stuck_after=60.0):
        """Newest first. stuck=True: only credits queued or sent and unacknowledged for `stuck_after` s."""
        if stuck:
            return self._rows("SELECT %s FROM payments WHERE state IN ('queued', 'sent') AND queued_at < ? "
                              "ORDER BY queued_at LIMIT ?" % _PAYMENT_COLS, (time.time() - stuck_after, int(limit)))
        return self._rows("SELECT %s FROM payments ORDER BY created_at DESC LIMIT ?" % _PAYMENT_COLS,
                          (int(limit),))

    def list_payments_since(self, since, states=None):
        """Payments recorded at or after `since` (Unix seconds), oldest first; only `states` if given."""
        if states:
            return self._rows("SELECT %s FROM payments WHERE created_at >= ? AND state IN (%s) ORDER BY created_at"
                              % (_PAYMENT_COLS, ", ".join("?" * len(states))), (since,) + tuple(states))
        return self._rows("SELECT %s FROM payments WHERE created_at >= ? ORDER BY created_at" % _PAYMENT_COLS,
                          (since,))

    def sent_unacked(self, cabinet_id):
        """Credits the broker took for `cabinet_id` (state sent) that the cabinet has not acked, by seq."""
        return self._rows("SELECT %s FROM payments WHERE cabinet_id = ? AND state = 'sent' ORDER BY seq"
                          % _PAYMENT_COLS, (cabinet_id,))

    def count_pending(self):
        return self._rows("SELECT COUNT(*) AS n FROM payments WHERE state IN ('queued', 'sent')")[0]["n"]

    # -- deliveries: the dispatcher side -----------------------------------------------------

    def next_deliveries(self, exclude=(), expiry=None):
        """For each cabinet with unacknowledged credits (and not in `exclude`), its lowest-seq one,
        with the cabinet's secret: everything needed to build the message.

        A credit returned here for the first time is first marked published (published_at), in a
        write transaction that re-checks it is still pending: a refund that claimed it before
        (claim_refund) wins and it is not returned, and a refund after sees it was published. So a
        refunded credit is never published, and a published one is never refunded as undelivered.
        The same write fixes its signed expiry, `expiry(row)` (Unix seconds, 0 for none; relay/expiry.py).
        A credit another process marked between the read and that write is returned with its mark."""
        # per cabinet, one lookup in the payments_pending index (not a scan of every pending credit:
        # cabinets that are offline may hold thousands)
        rows = self._rows("WITH h AS MATERIALIZED (SELECT c.id AS cabinet_id, c.secret AS secret, "
                          "(SELECT MIN(q.seq) FROM payments q WHERE q.cabinet_id = c.id AND q.state IN ('queued', 'sent')) "
                          "AS seq FROM cabinets c) "
                          "SELECT p.session_id, p.cabinet_id, p.seq, p.credits, p.pulses, p.issued_ts, p.state, "
                          "p.queued_at, p.published_at, p.exp, h.secret FROM h "
                          "JOIN payments p ON p.cabinet_id = h.cabinet_id AND p.seq = h.seq "
                          "WHERE h.seq IS NOT NULL AND p.state IN ('queued', 'sent') ORDER BY p.cabinet_id")
        rows = [row for row in rows if row["cabinet_id"] not in exclude]
        fresh = [row for row in rows if row["published_at"] is None]
        if fresh:
            lost = set()
            with self._write() as cur:
                now = time.time()
                for row in fresh:
                    row["exp"] = int(expiry(row)) if expiry is not None else 0
                    cur.execute("UPDATE payments SET published_at = ?, exp = ? WHERE session_id = ? AND seq = ? "
                                "AND published_at IS NULL AND state IN ('queued', 'sent')",
                                (now, row["exp"], row["session_id"], row["seq"]))
                    if cur.rowcount == 1:
                        continue
                    # marked meanwhile by another relay's dispatcher (PostgreSQL: every relay reads every
                    # cabinet's next credit; the lease decides who publishes): its mark and exp stand, and
                    # it is still this relay's to publish if it holds the lease. Gone only if no longer
                    # pending (a refund claimed it).
                    cur.execute("SELECT published_at, exp FROM payments WHERE session_id = ? AND seq = ? "
                                "AND state IN ('queued', 'sent')", (row["session_id"], row["seq"]))
                    marked = cur.fetchone()
                    if marked is None or marked[0] is None:
                        lost.add(row["session_id"])
                    else:
                        row["published_at"], row["exp"] = marked[0], marked[1]
            rows = [row for row in rows if row["session_id"] not in lost]
        return rows

    def cabinet_clock_set(self, cabinet_id):
        rows = self._rows("SELECT clock_set FROM cabinets WHERE id = ?", (cabinet_id,))
        return bool(rows and rows[0]["clock_set"])

    def drop_expiry(self, session_id, seq):
        """A copy of this credit without expiry is about to be published (the cabinet's clock is unset):
        from now on it is never refunded automatically. True if it was still pending."""
        with self._write() as cur:
            cur.execute("UPDATE payments SET exp = 0, updated_at = ? WHERE session_id = ? AND seq = ? "
                        "AND state IN ('queued', 'sent')", (time.time(), session_id, seq))
            return cur.rowcount == 1

    def still_pending(self, session_id, seq):
        """Is this credit still to be delivered (queued or sent)? False once revoked or settled."""
        rows = self._rows("SELECT 1 AS x FROM payments WHERE session_id = ? AND seq = ? AND state IN "
                          "('queued', 'sent')", (session_id, seq))
        return bool(rows)

    def auto_refund_due(self, now, refund_after, margin):
        """Payments an automatic refund may take now (relay/autorefund.py): a credit never published
        and queued `refund_after` ago; a published one whose every copy expires (exp > 0) and whose
        exp + `margin` has passed without an ack; one the cabinet refused as expired."""
        return self._rows("SELECT session_id, cabinet_id, seq, state, exp, queued_at, published_at, reason FROM payments "
                          "WHERE (state = 'queued' AND published_at IS NULL AND queued_at <= ?) "
                          "OR (state IN ('queued', 'sent') AND exp > 0 AND exp + ? <= ?) "
                          "OR (state = 'rejected' AND reason = 'expired') ORDER BY queued_at",
                          (now - refund_after, margin, now))

    def claim_auto_refund(self, session_id, now, refund_after, margin):
        """Hold one payment for an automatic refund, re-checking under the database lock that it is
        still due (auto_refund_due's rule): state `refunding`, so the dispatcher drops it. Returns
        (refund row, note), or None when it is no longer due (acked, published meanwhile...)."""
        with self._write() as cur:
            cur.execute("SELECT state, published_at, exp, queued_at, amount, currency, reason FROM payments "
                        "WHERE session_id = ?", (session_id,))
            row = cur.fetchone()
            if row is None:
                return None
            state, published_at, exp, queued_at, amount, currency, reason = row
            cur.execute("SELECT state FROM refunds WHERE session_id = ?", (session_id,))
            old = cur.fetchone()
            if old is not None and old[0] in ("succeeded", "requested", "unknown"):
                return None
            if state == "queued" and published_at is None and queued_at <= now - refund_after:
                note = "never published within %d s: withdrawn" % refund_after
            elif state in ("queued", "sent") and exp and exp > 0 and exp + margin <= now:
                note = "expired at %d unacknowledged (refunded %d s after exp)" % (exp, now - exp)
            elif state == "rejected" and reason == "expired":
                note = "the cabinet refused it as expired"
            else:
                return None
            cur.execute("UPDATE payments SET state = 'refunding', updated_at = ? WHERE session_id = ? AND state = ?",
                        (now, session_id, state))
            cur.execute("INSERT INTO refunds (session_id, state, prior_state, after_play, amount, currency, reason, "
                        "who, source, created_at, updated_at) VALUES (?, 'requested', ?, 0, ?, ?, ?, 'relay', 'auto', "
                        "?, ?) ON CONFLICT (session_id) DO UPDATE SET state = 'requested', prior_state = "
                        "excluded.prior_state, after_play = 0, reason = excluded.reason, who = 'relay', "
                        "source = 'auto', error = '', updated_at = excluded.updated_at",
                        (session_id, state, amount, currency, "automatic: " + note, now, now))
            return self._refund_row(cur, session_id), note

    def late_ack(self, session_id, seq, result):
        """A cabinet acked `result` (applied/duplicate) for a credit refunded automatically: the play
        was given before exp and its ack came after the refund. Recorded as refunded after play.
        True if a refund of this relay matched."""
        now = time.time()
        with self._write() as cur:
            cur.execute("UPDATE refunds SET after_play = 1, error = ?, updated_at = ? WHERE session_id = ? AND "
                        "source = 'auto' AND after_play = 0",
                        ("the cabinet acked %s after the automatic refund: played and refunded" % result, now,
                         session_id))
            return cur.rowcount == 1

    def mark_sent(self, session_id, seq):
        """The broker acknowledged a publish of this credit (PUBACK). Returns True if it was still pending."""
        now = time.time()
        with self._write() as cur:
            cur.execute("UPDATE payments SET state = 'sent', attempts = attempts + 1, "
                        "sent_at = COALESCE(sent_at, ?), updated_at = ? "
                        "WHERE session_id = ? AND seq = ? AND state IN ('queued', 'sent')",
                        (now, now, session_id, seq))
            return cur.rowcount == 1

    def record_ack(self, session_id, seq, result, reason="", ack_pulses=None, ack_last=None):
        """A verified ack for this credit: final state applied / duplicate / rejected."""
        if result not in ACKED:
            raise ValueError("unknown ack result %r" % (result,))
        now = time.time()
        with self._write() as cur:
            cur.execute("UPDATE payments SET state = ?, reason = ?, ack_pulses = ?, ack_last = ?, done_at = ?, "
                        "updated_at = ? WHERE session_id = ? AND seq = ? AND state IN ('queued', 'sent') "
                        "RETURNING cabinet_id",
                        (result, reason or "", ack_pulses, ack_last, now, now, session_id, seq))
            row = cur.fetchone()
            if row is None:
                return False
            if ack_last is not None:
                cur.execute("UPDATE cabinets SET last_seq = ?, last_seen = ? WHERE id = ?", (ack_last, now, row[0]))
            return True

    def resequence(self, cabinet_id, last):
        """The cabinet refused a seq as stale (its `last` is ahead of our counter: a database restored
        from a backup). In one transaction raise its counter past `last` and give every unacknowledged
        credit of that cabinet numbered at or below `last` a new seq, keeping their order.
        Returns [(session_id, old_seq, new_seq), ...]."""
        now = time.time()
        changed = []
        with self._write() as cur:
            cur.execute("UPDATE cabinets SET next_seq = CASE WHEN next_seq > ? THEN next_seq ELSE ? END, "
                        "last_seq = ? WHERE id = ? RETURNING next_seq", (last, last + 1, last, cabinet_id))
            got = cur.fetchone()
            if got is None:
                raise UnknownCabinet("no cabinet %r" % (cabinet_id,))
            next_seq = got[0]
            cur.execute("SELECT session_id, seq FROM payments WHERE cabinet_id = ? AND seq <= ? "
                        "AND state IN ('queued', 'sent') ORDER BY seq", (cabinet_id, last))
            for session_id, old in cur.fetchall():
                changed.append((session_id, old, next_seq))
                next_seq += 1
            # Two passes so that the (cabinet_id, seq) unique index never sees a collision midway.
            for session_id, old, new in changed:
                cur.execute("UPDATE payments SET seq = ? WHERE session_id = ?", (-new, session_id))
            for session_id, old, new in changed:
                cur.execute("UPDATE payments SET seq = ?, state = 'queued', issued_ts = ?, updated_at = ? "
                            "WHERE session_id = ?", (new, int(now), now, session_id))
            cur.execute("UPDATE cabinets SET next_seq = ? WHERE id = ?", (next_seq, cabinet_id))
        return changed

    # -- pay page (issue 5): expected checkouts, promotions, payment links ------------------------
    # Tables created on open when missing (older databases too); same portable SQL as above.

    _PAY_SCHEMA = """
    CREATE TABLE IF NOT EXISTS checkouts (
        session_id      TEXT PRIMARY KEY,
        cabinet_id      TEXT NOT NULL,
        option_key      TEXT NOT NULL,
        credits         INTEGER NOT NULL,
        amount          INTEGER NOT NULL,
        currency        TEXT NOT NULL,
        promo_id        INTEGER,
        client_key      TEXT NOT NULL,
        idempotency_key TEXT NOT NULL,
        created_at      REAL NOT NULL
    );
    CREATE INDEX IF NOT EXISTS checkouts_rate ON checkouts (cabinet_id, created_at);
    CREATE TABLE IF NOT EXISTS promotions (
        id         INTEGER PRIMARY KEY,
        cabinet_id TEXT,
        kind       TEXT NOT NULL,
        value      INTEGER NOT NULL,
        days       TEXT NOT NULL,
        start_min  INTEGER NOT NULL,
        end_min    INTEGER NOT NULL,
        label      TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL
    );
    CREATE TABLE IF NOT EXISTS payment_links (
        link_id    TEXT PRIMARY KEY,
        cabinet_id TEXT NOT NULL,
        url        TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL
    );
    """

    def _ensure_pay_tables(self):
        if self._has_table("payment_links"):
            return
        with self._write() as cur:
            for statement in self._PAY_SCHEMA.split(";"):
                if statement.strip():
                    cur.execute(statement)

    def record_expected_checkout(self, session_id, cabinet_id, option_key, credits, amount, currency, promo_id,
                                 client_key, idempotency_key):
        """What a Checkout Session this relay created must pay, and for how many credits. The same
        session recorded twice (an idempotent retry) keeps its first record."""
        with self._write() as cur:
            cur.execute("INSERT INTO checkouts (session_id, cabinet_id, option_key, credits, amount, currency, "
                        "promo_id, client_key, idempotency_key, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (session_id) DO NOTHING",
                        (session_id, cabinet_id, option_key, credits, amount, currency, promo_id, client_key,
                         idempotency_key, time.time()))
            return cur.rowcount == 1

    def get_expected_checkout(self, session_id):
        rows = self._rows("SELECT session_id, cabinet_id, option_key, credits, amount, currency, promo_id, "
                          "created_at FROM checkouts WHERE session_id = ?", (session_id,))
        return rows[0] if rows else None

    def count_checkouts(self, cabinet_id, since, client_key=None):
        if client_key is None:
            return self._rows("SELECT COUNT(*) AS n FROM checkouts WHERE cabinet_id = ? AND created_at >= ?",
                              (cabinet_id, since))[0]["n"]
        return self._rows("SELECT COUNT(*) AS n FROM checkouts WHERE cabinet_id = ? AND client_key = ? "
                          "AND created_at >= ?", (cabinet_id, client_key, since))[0]["n"]

    def reserve_checkout(self, cabinet_id, client_key, option_key, credits, amount, now, rate, cabinet_rate,
                         ceiling):
        """Reserve one pay-page attempt, atomically (under the write lock, before Stripe is called).

        Returns ("reuse", url) when this client has an open session for the same bundle that no
        payment has used; ("new", attempt_id); ("client_limit", None) when the client spent its
        `rate` = (count, window); ("cabinet_limit", None) when the cabinet spent its `cabinet_rate`
        and this client has already tried in the window (a first attempt still passes, up to
        `ceiling`), so one client cannot lock the others out."""
        with self._write() as cur:
            cur.execute("SELECT url FROM checkout_attempts a WHERE cabinet_id = ? AND client_key = ? AND "
                        "option_key = ? AND credits = ? AND amount = ? AND state = 'open' AND reuse_until > ? AND "
                        "NOT EXISTS (SELECT 1 FROM payments p WHERE p.session_id = a.session_id) "
                        "ORDER BY id DESC LIMIT 1", (cabinet_id, client_key, option_key, credits, amount, now))
            row = cur.fetchone()
            if row is not None:
                return "reuse", row[0]
            count, window = rate
            cur.execute("SELECT COUNT(*) FROM checkout_attempts WHERE cabinet_id = ? AND client_key = ? AND "
                        "created_at >= ?", (cabinet_id, client_key, now - window))
            mine = cur.fetchone()[0]
            if mine >= count:
                return "client_limit", None
            count, window = cabinet_rate
            cur.execute("SELECT COUNT(*) FROM checkout_attempts WHERE cabinet_id = ? AND created_at >= ?",
                        (cabinet_id, now - window))
            total = cur.fetchone()[0]
            if total >= ceiling or (total >= count and mine > 0):
                return "cabinet_limit", None
            cur.execute("INSERT INTO checkout_attempts (cabinet_id, client_key, option_key, credits, amount, state, "
                        "created_at) VALUES (?, ?, ?, ?, ?, 'reserved', ?) RETURNING id",
                        (cabinet_id, client_key, option_key, credits, amount, now))
            return "new", cur.fetchone()[0]

    def finish_checkout_attempt(self, attempt_id, session_id, url, reuse_until=None):
        """The attempt's outcome: open (a session to offer again) or failed (still counted)."""
        with self._write() as cur:
            cur.execute("UPDATE checkout_attempts SET state = ?, session_id = ?, url = ?, reuse_until = ? "
                        "WHERE id = ?", ("open" if url else "failed", session_id, url,
                                         reuse_until if url else None, attempt_id))

    def add_promotion(self, cabinet_id, kind, value, days, start_min, end_min, label=""):
        """Store a rule (validated by relay/promotions.py first); returns its id."""
        if cabinet_id is not None and self.get_cabinet(cabinet_id) is None:
            raise UnknownCabinet("no cabinet %r: see `arcade cabinet list`" % (cabinet_id,))
        with self._write() as cur:
            cur.execute("INSERT INTO promotions (cabinet_id, kind, value, days, start_min, end_min, label, "
                        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                        (cabinet_id, kind, value, ",".join(str(d) for d in sorted(days)), start_min, end_min,
                         label or "", time.time()))
            return cur.fetchone()[0]

    def list_promotions(self):
        rows = self._rows("SELECT id, cabinet_id, kind, value, days, start_min, end_min, label FROM promotions "
                          "ORDER BY id")
        for row in rows:
            row["days"] = [int(d) for d in row["days"].split(",") if d]
        return rows

    def remove_promotion(self, promo_id):
        with self._write() as cur:
            cur.execute("DELETE FROM promotions WHERE id = ?", (promo_id,))
            if cur.rowcount != 1:
                raise LedgerError("no promotion %r: see `arcade promo list`" % (promo_id,))

    def link_payment_link(self, link_id, cabinet_id, url=""):
        """Map a Stripe Payment Link (plink_...) to a cabinet (replacing an earlier mapping)."""
        if not re.fullmatch(r"plink_[A-Za-z0-9]{1,200}", str(link_id)):
            raise LedgerError("payment link id %r is not valid: it looks like plink_1AbC... (from Stripe's "
                              "dashboard, Payment Links)" % (link_id,))
        if self.get_cabinet(cabinet_id) is None:
            raise UnknownCabinet("no cabinet %r: see `arcade cabinet list`" % (cabinet_id,))
        with self._write() as cur:
            cur.execute("INSERT INTO payment_links (link_id, cabinet_id, url, created_at) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (link_id) DO UPDATE SET cabinet_id = excluded.cabinet_id, url = excluded.url",
                        (link_id, cabinet_id, url or "", time.time()))

    def payment_link_cabinet(self, link_id):
        rows = self._rows("SELECT cabinet_id FROM payment_links WHERE link_id = ?", (link_id,))
        return rows[0]["cabinet_id"] if rows else None

    def list_payment_links(self, cabinet_id=None):
        if cabinet_id is None:
            return self._rows("SELECT link_id, cabinet_id, url FROM payment_links ORDER BY cabinet_id, link_id")
        return self._rows("SELECT link_id, cabinet_id, url FROM payment_links WHERE cabinet_id = ? ORDER BY link_id",
                          (cabinet_id,))

    # -- per-cabinet pulse timing and test pulses (issue 4) --------------------------------------
    # One row per cabinet that was ever configured, provisioned or test-pulsed; created on open when
    # missing. `ver` is the config version the relay issued last, `published_ver` the highest one the
    # broker has acknowledged (retained); ver > published_ver means the dispatcher still owes a publish.

    _CONFIG_SCHEMA = """
    CREATE TABLE IF NOT EXISTS cabinet_config (
        cabinet_id       TEXT PRIMARY KEY,
        pulse_ms         INTEGER NOT NULL DEFAULT 0,
        gap_ms           INTEGER NOT NULL DEFAULT 0,
        coins_per_credit INTEGER NOT NULL DEFAULT 1,
        ver              INTEGER NOT NULL DEFAULT 0,
        ts               INTEGER NOT NULL DEFAULT 0,
        published_ver    INTEGER NOT NULL DEFAULT 0,
        test_n           INTEGER NOT NULL DEFAULT 0,
        board            TEXT,
        updated_at       REAL NOT NULL
    );
    """
    TIMING_MAX_MS = 10000   # the firmware's hard limit for any profile's range (firmware/config.py)

    def _ensure_config_table(self):
        if self._has_table("cabinet_config"):
            return
        with self._write() as cur:
            cur.execute(self._CONFIG_SCHEMA)

    def cabinet_config(self, id):
        """The cabinet's timing override and config/test counters (zeros when never set), with its
        secret and current coins per credit; None for an unknown cabinet."""
        rows = self._rows("SELECT c.id AS cabinet_id, c.secret, c.coins_per_credit AS cabinet_coins, "
                          "COALESCE(k.pulse_ms, 0) AS pulse_ms, COALESCE(k.gap_ms, 0) AS gap_ms, "
                          "COALESCE(k.coins_per_credit, c.coins_per_credit) AS coins_per_credit, "
                          "COALESCE(k.ver, 0) AS ver, COALESCE(k.ts, 0) AS ts, "
                          "COALESCE(k.published_ver, 0) AS published_ver, COALESCE(k.test_n, 0) AS test_n, "
                          "k.board FROM cabinets c LEFT JOIN cabinet_config k ON k.cabinet_id = c.id "
                          "WHERE c.id = ?", (id,))
        return rows[0] if rows else None

    def _config_row(self, cur, id, now):
        cur.execute("SELECT coins_per_credit, bundles FROM cabinets WHERE id = ?", (id,))
        cab = cur.fetchone()
        if cab is None:
            raise UnknownCabinet("no cabinet %r: see `arcade cabinet list`" % (id,))
        cur.execute("INSERT INTO cabinet_config (cabinet_id, coins_per_credit, updated_at) VALUES (?, ?, ?) "
                    "ON CONFLICT (cabinet_id) DO NOTHING", (id, cab[0], now))
        return cab

    def set_cabinet_config(self, id, pulse_ms=None, gap_ms=None, coins_per_credit=None, now=None):
        """Store a timing override (None: keep; 0: the board profile's default) and/or coins per credit,
        and issue a new config version max(last + 1, Unix seconds) in the same transaction. Returns
        cabinet_config(id). Raises LedgerError on bad input, changing nothing. Ranges against the
        cabinet's board profile are the caller's check (the cabinet checks them again)."""
        for name, value in (("pulse_ms", pulse_ms), ("gap_ms", gap_ms)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or not 0 <= value <= self.TIMING_MAX_MS):
                raise LedgerError("%s %r must be a whole number of ms from 1 to %d, or 0 for the board's "
                                  "default" % (name, value, self.TIMING_MAX_MS))
        if coins_per_credit is not None and (not isinstance(coins_per_credit, int) or isinstance(coins_per_credit, bool)
                                             or not 1 <= coins_per_credit <= 255):
            raise LedgerError("coins per credit %r must be a whole number from 1 to 255" % (coins_per_credit,))
        now = time.time() if now is None else now
        with self._write() as cur:
            coins, bundles = self._config_row(cur, id, now)
            if coins_per_credit is not None:
                for credits, cents in json.loads(bundles):
                    if credits * coins_per_credit > 255:
                        raise LedgerError("coins per credit %d: the bundle of %d credits would need %d coin pulses; "
                                          "at most 255 fit in one credit message"
                                          % (coins_per_credit, credits, credits * coins_per_credit))
                # sessions the pay page created and not yet paid are owed their recorded credits
                cur.execute("SELECT MAX(k.credits) FROM checkouts k WHERE k.cabinet_id = ? AND k.created_at >= ? "
                            "AND NOT EXISTS (SELECT 1 FROM payments p WHERE p.session_id = k.session_id)",
                            (id, now - 25 * 3600))
                owed = cur.fetchone()[0] or 0
                if owed * coins_per_credit > 255:
                    raise LedgerError("coins per credit %d: a Checkout Session still open for %d credits would need "
                                      "%d coin pulses; at most 255 fit in one credit message (wait until it is paid "
                                      "or expires, at most 24 h)" % (coins_per_credit, owed, owed * coins_per_credit))
                coins = coins_per_credit
                cur.execute("UPDATE cabinets SET coins_per_credit = ? WHERE id = ?", (coins, id))
            cur.execute("SELECT ver FROM cabinet_config WHERE cabinet_id = ?", (id,))
            ver = max(cur.fetchone()[0] + 1, int(now))
            cur.execute("UPDATE cabinet_config SET pulse_ms = COALESCE(?, pulse_ms), gap_ms = COALESCE(?, gap_ms), "
                        "coins_per_credit = ?, ver = ?, ts = ?, updated_at = ? WHERE cabinet_id = ?",
                        (pulse_ms, gap_ms, coins, ver, int(now), now, id))
        return self.cabinet_config(id)

    def pending_configs(self):
        """Configs issued and not yet acknowledged by the broker: what the dispatcher must publish (with
        the screen's lines, price and promo: None when the relay never issued any for the cabinet)."""
        return self._rows("SELECT k.cabinet_id, k.pulse_ms, k.gap_ms, k.coins_per_credit, k.ver, k.ts, c.secret, "
                          "s.price, s.promo FROM cabinet_config k JOIN cabinets c ON c.id = k.cabinet_id "
                          "LEFT JOIN screen_lines s ON s.cabinet_id = k.cabinet_id "
                          "WHERE k.ver > k.published_ver ORDER BY k.cabinet_id")

    def screen_cabinets(self):
        """Provisioned cabinets (a board profile on record) with the screen lines issued to them (None
        when none yet): the ones relay/screenlines.py keeps up to date."""
        return self._rows("SELECT k.cabinet_id, s.price, s.promo FROM cabinet_config k "
                          "LEFT JOIN screen_lines s ON s.cabinet_id = k.cabinet_id "
                          "WHERE k.board IS NOT NULL ORDER BY k.cabinet_id")

    def set_screen_lines(self, id, price, promo, now=None):
        """Issue a new config version carrying these screen lines, unless they are the ones issued last.
        Returns the new version, or None when nothing changed."""
        now = time.time() if now is None else now
        with self._write() as cur:
            self._config_row(cur, id, now)
            cur.execute("SELECT price, promo FROM screen_lines WHERE cabinet_id = ?", (id,))
            if tuple(cur.fetchone() or ()) == (price, promo):
                return None
            cur.execute("INSERT INTO screen_lines (cabinet_id, price, promo, updated_at) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (cabinet_id) DO UPDATE SET price = excluded.price, promo = excluded.promo, "
                        "updated_at = excluded.updated_at", (id, price, promo, now))
            cur.execute("UPDATE cabinet_config SET ver = CASE WHEN ver + 1 > ? THEN ver + 1 ELSE ? END, ts = ?, "
                        "updated_at = ? WHERE cabinet_id = ? RETURNING ver", (int(now), int(now), int(now), now, id))
            return cur.fetchone()[0]

    def mark_config_published(self, id, ver):
        """The broker acknowledged the retained config `ver` of this cabinet."""
        with self._write() as cur:
            cur.execute("UPDATE cabinet_config SET published_ver = ? WHERE cabinet_id = ? AND published_ver < ?",
                        (ver, id, ver))
            return cur.rowcount == 1

    def mark_config_unpublished(self, id):
        """The broker no longer holds this cabinet's retained config: publish it again."""
        with self._write() as cur:
            cur.execute("UPDATE cabinet_config SET published_ver = 0 WHERE cabinet_id = ?", (id,))

    def published_configs(self):
        """Cabinets whose issued config the broker acknowledged (it should hold it retained)."""
        return [r["cabinet_id"] for r in self._rows("SELECT cabinet_id FROM cabinet_config WHERE ver > 0 AND "
                                                    "published_ver >= ver ORDER BY cabinet_id")]

    def next_test_n(self, id, now=None):
        """Allocate a test pulse number max(last + 1, Unix seconds) for this cabinet; returns it."""
        now = time.time() if now is None else now
        with self._write() as cur:
            self._config_row(cur, id, now)
            cur.execute("UPDATE cabinet_config SET test_n = CASE WHEN test_n + 1 > ? THEN test_n + 1 ELSE ? END, "
                        "updated_at = ? WHERE cabinet_id = ? RETURNING test_n", (int(now), int(now), now, id))
            return cur.fetchone()[0]

    def set_board(self, id, board):
        """Remember which board profile the cabinet was provisioned with (ranges for `cabinet set`)."""
        now = time.time()
        with self._write() as cur:
            self._config_row(cur, id, now)
            cur.execute("UPDATE cabinet_config SET board = ?, updated_at = ? WHERE cabinet_id = ?", (board, now, id))

    # -- the operator's side (issue 13): operators, audit, refunds, disputes, alerts, search ------

    OPERATOR_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}\Z")

    def add_operator(self, name, pw_hash):
        """A console account. The hash is made by the caller (argon2); raises LedgerError if it exists."""
        if not isinstance(name, str) or not self.OPERATOR_NAME.match(name):
            raise LedgerError("operator name %r is not valid: use 1 to 32 lower-case letters, digits, '.', '-' "
                              "or '_', starting with a letter or digit" % (name,))
        with self._write() as cur:
            cur.execute("INSERT INTO operators (name, pw_hash, created_at) VALUES (?, ?, ?) "
                        "ON CONFLICT (name) DO NOTHING", (name, pw_hash, time.time()))
            if cur.rowcount != 1:
                raise LedgerError("operator %r already exists: pick another name, or `arcade admin passwd %s`"
                                  % (name, name))

    def set_operator_hash(self, name, pw_hash):
        with self._write() as cur:
            cur.execute("UPDATE operators SET pw_hash = ? WHERE name = ?", (pw_hash, name))
            if cur.rowcount != 1:
                raise LedgerError("no operator %r: see `arcade admin list`" % (name,))

    def remove_operator(self, name):
        with self._write() as cur:
            cur.execute("DELETE FROM operators WHERE name = ?", (name,))
            if cur.rowcount != 1:
                raise LedgerError("no operator %r: see `arcade admin list`" % (name,))

    def get_operator(self, name):
        rows = self._rows("SELECT name, pw_hash, created_at, last_login FROM operators WHERE name = ?", (name,))
        return rows[0] if rows else None

    def list_operators(self):
        return self._rows("SELECT name, created_at, last_login FROM operators ORDER BY name")

    def note_login(self, name):
        with self._write() as cur:
            cur.execute("UPDATE operators SET last_login = ? WHERE name = ?", (time.time(), name))

    def audit(self, who, action, subject="", detail=""):
        """Write one line of the audit log: who did what to what, when."""
        with self._write() as cur:
            cur.execute("INSERT INTO audit (at, who, action, subject, detail) VALUES (?, ?, ?, ?, ?)",
                        (time.time(), str(who)[:64], str(action)[:64], str(subject)[:255], str(detail)[:1000]))

    def list_audit(self, limit=200, who=None):
        if who:
            return self._rows("SELECT id, at, who, action, subject, detail FROM audit WHERE who = ? "
                              "ORDER BY id DESC LIMIT ?", (who, int(limit)))
        return self._rows("SELECT id, at, who, action, subject, detail FROM audit ORDER BY id DESC LIMIT ?",
                          (int(limit),))

    def search_payments(self, session=None, cabinet=None, states=None, since=None, until=None, limit=200,
                        stuck_after=None, refunded=False, disputed=False, now=None):
        """Payments newest first, filtered; each with `refund_state` and `dispute_status` (or None)."""
        where, args = [], []
        if session:
            where.append("p.session_id LIKE ?")
            args.append("%" + session.replace("%", "").replace("_", "\\_") + "%")
            where[-1] += " ESCAPE '\\'"
        if cabinet:
            where.append("p.cabinet_id = ?")
            args.append(cabinet)
        if states:
            where.append("p.state IN (%s)" % ", ".join("?" * len(states)))
            args.extend(states)
        if since is not None:
            where.append("p.created_at >= ?")
            args.append(since)
        if until is not None:
            where.append("p.created_at < ?")
            args.append(until)
        if stuck_after is not None:
            where.append("p.state IN ('queued', 'sent') AND p.queued_at < ?")
            args.append((time.time() if now is None else now) - stuck_after)
        if refunded:
            where.append("r.session_id IS NOT NULL")
        if disputed:
            where.append("EXISTS (SELECT 1 FROM disputes d WHERE d.session_id = p.session_id)")
        sql = ("SELECT %s, r.state AS refund_state, r.after_play AS refund_after_play, "
               "(SELECT d.status FROM disputes d WHERE d.session_id = p.session_id ORDER BY d.created_at DESC "
               "LIMIT 1) AS dispute_status FROM payments p LEFT JOIN refunds r ON r.session_id = p.session_id"
               % ", ".join("p." + c.strip() for c in _PAYMENT_COLS.split(",")))
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY p.created_at DESC LIMIT ?"
        args.append(int(limit))
        return self._rows(sql, args)

    def payment_events(self, session_id):
        """The Stripe events recorded for a session, oldest first (its timeline's outside half)."""
        return self._rows("SELECT event_id, type, outcome, received_at FROM events WHERE session_id = ? "
                          "ORDER BY received_at", (session_id,))

    def takings(self, since, until=None):
        """Per cabinet and currency: plays (credits applied) and money (cents) of payments that bought
        credits (queued/sent/applied/duplicate) recorded in [since, until), less refunds."""
        until = time.time() + 1 if until is None else until
        return self._rows("SELECT p.cabinet_id, p.currency, COUNT(*) AS payments, "
                          "SUM(CASE WHEN p.state IN ('refunded', 'refunding') THEN 0 ELSE p.credits END) AS credits, "
                          "SUM(p.amount) AS amount, SUM(CASE WHEN r.state = 'succeeded' THEN r.amount ELSE 0 END) "
                          "AS refunded FROM payments p LEFT JOIN refunds r ON r.session_id = p.session_id "
                          "WHERE p.created_at >= ? AND p.created_at < ? AND p.seq IS NOT NULL "
                          "GROUP BY p.cabinet_id, p.currency ORDER BY p.cabinet_id", (since, until))

    def last_payment_at(self):
        """cabinet id -> time of its newest payment that bought credits."""
        return {r["cabinet_id"]: r["at"] for r in self._rows(
            "SELECT cabinet_id, MAX(created_at) AS at FROM payments WHERE seq IS NOT NULL GROUP BY cabinet_id")}

    def count_by_state(self):
        return {r["state"]: r["n"] for r in self._rows("SELECT state, COUNT(*) AS n FROM payments GROUP BY state")}

    # refunds --------------------------------------------------------------------------------

    def get_refund(self, session_id):
        rows = self._rows("SELECT session_id, state, prior_state, after_play, refund_id, amount, currency, reason, "
                          "who, source, error, created_at, updated_at FROM refunds WHERE session_id = ?",
                          (session_id,))
        return rows[0] if rows else None

    def list_refunds(self, limit=100):
        return self._rows("SELECT session_id, state, after_play, refund_id, amount, currency, reason, who, source, "
                          "error, created_at, updated_at FROM refunds ORDER BY updated_at DESC LIMIT ?", (int(limit),))

    def claim_refund(self, session_id, who, source, reason="", force=False):
        """Decide, under the database lock, whether this payment may be refunded, and hold it.

        Returns (refund row, note). A credit never published (state queued, published_at NULL) moves to
        state `refunding`: the dispatcher's claim (next_deliveries) can no longer publish it. A payment
        without a credit (invalid) or a credit the cabinet refused (rejected) moves to `refunding` too.
        An applied/duplicate credit is refunded only with force (the play was given; the payment keeps
        its state, the refund says after_play). Anything that may still pulse (published and not
        acknowledged) is refused. Raises LedgerError saying why; nothing is changed then."""
        with self._write() as cur:
            cur.execute("SELECT state, published_at, sent_at, amount, currency, seq FROM payments WHERE "
                        "session_id = ?", (session_id,))
            row = cur.fetchone()
            if row is None:
                raise LedgerError("no payment %r in the ledger: nothing refunded (see `arcade payments`)"
                                  % (session_id,))
            state, published_at, sent_at, amount, currency, seq = row
            cur.execute("SELECT state, prior_state, after_play FROM refunds WHERE session_id = ?", (session_id,))
            old = cur.fetchone()
            now = time.time()
            if old is not None and old[0] == "succeeded":
                raise LedgerError("payment %s is already refunded: nothing to do" % session_id)
            if old is not None and old[0] in ("requested", "unknown"):
                # a refund whose answer from Stripe never came: try again with the same idempotency key
                cur.execute("UPDATE refunds SET state = 'requested', updated_at = ? WHERE session_id = ?",
                            (now, session_id))
                return self._refund_row(cur, session_id), "retry"
            after_play = 0
            if state == "queued" and published_at is None and sent_at is None:
                note = "never published: the credit is withdrawn and will not be sent"
            elif state in ("invalid", "rejected"):
                note = "no credit was given (%s)" % state
            elif state in ("applied", "duplicate"):
                if not force:
                    raise LedgerError("payment %s was played: the cabinet pulsed its credit (%s). Refunding it "
                                      "gives the money back after the play; confirm with --force "
                                      "(console: tick the confirmation)" % (session_id, state))
                after_play = 1
                note = "refund after the play was given (forced)"
            elif state in ("queued", "sent"):
                raise LedgerError("payment %s: credit seq %s was published to the cabinet and is not acknowledged "
                                  "yet, so it may still pulse; nothing refunded. Wait for the cabinet's ack (or "
                                  "bring it online) and try again" % (session_id, seq))
            elif state in ("pending", "failed", "expired"):
                raise LedgerError("payment %s is %s: no money was taken, nothing to refund" % (session_id, state))
            else:
                raise LedgerError("payment %s is %s: it cannot be refunded from here" % (session_id, state))
            if not after_play:
                cur.execute("UPDATE payments SET state = 'refunding', updated_at = ? WHERE session_id = ? "
                            "AND state = ?", (now, session_id, state))
            cur.execute("INSERT INTO refunds (session_id, state, prior_state, after_play, amount, currency, reason, "
                        "who, source, created_at, updated_at) VALUES (?, 'requested', ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (session_id) DO UPDATE SET state = 'requested', prior_state = excluded.prior_state, "
                        "after_play = excluded.after_play, reason = excluded.reason, who = excluded.who, "
                        "source = excluded.source, error = '', updated_at = excluded.updated_at",
                        (session_id, state, after_play, amount, currency, str(reason)[:500], who, source, now, now))
            return self._refund_row(cur, session_id), note

    def _refund_row(self, cur, session_id):
        cur.execute("SELECT session_id, state, prior_state, after_play, amount, currency, reason, who, source "
                    "FROM refunds WHERE session_id = ?", (session_id,))
        names = [d[0] for d in cur.description]
        return dict(zip(names, cur.fetchone()))

    def settle_refund(self, session_id, refund_id, amount=None, source=None):
        """Stripe made the refund: the refund succeeded; a held payment becomes `refunded` (final)."""
        now = time.time()
        with self._write() as cur:
            cur.execute("UPDATE refunds SET state = 'succeeded', refund_id = ?, amount = COALESCE(?, amount), "
                        "error = '', updated_at = ? WHERE session_id = ?", (refund_id, amount, now, session_id))
            cur.execute("UPDATE payments SET state = 'refunded', done_at = ?, updated_at = ? WHERE session_id = ? "
                        "AND state = 'refunding'", (now, now, session_id))

    def fail_refund(self, session_id, error, definite):
        """Stripe refused (definite: the payment goes back to what it was, nothing changed) or did not
        answer (not definite: the payment stays held, `unknown`, until the refund is tried again)."""
        now = time.time()
        with self._write() as cur:
            cur.execute("SELECT prior_state FROM refunds WHERE session_id = ?", (session_id,))
            row = cur.fetchone()
            if row is None:
                return
            if definite:
                cur.execute("UPDATE payments SET state = ?, updated_at = ? WHERE session_id = ? AND "
                            "state = 'refunding'", (row[0], now, session_id))
                cur.execute("UPDATE refunds SET state = 'failed', error = ?, updated_at = ? WHERE session_id = ?",
                            (str(error)[:500], now, session_id))
            else:
                cur.execute("UPDATE refunds SET state = 'unknown', error = ?, updated_at = ? WHERE session_id = ?",
                            (str(error)[:500], now, session_id))

    def refund_failed_later(self, session_id, refund_id, why):
        """Stripe says a refund it had made failed (refund.updated status failed): mark it failed with
        the reason. The payment keeps its state (a withdrawn credit stays withdrawn: the operator
        decides). True when a refund of this relay matched."""
        now = time.time()
        with self._write() as cur:
            cur.execute("UPDATE refunds SET state = 'failed', error = ?, updated_at = ? WHERE session_id = ? "
                        "AND (refund_id = ? OR refund_id IS NULL OR ? IS NULL)",
                        ("Stripe: the refund failed later (%s)" % (why or "no reason given"), now, session_id,
                         refund_id, refund_id))
            return cur.rowcount == 1

    def record_outside_refund(self, session_id, refund_id, amount, currency, reason="refunded in Stripe"):
        """A refund made outside the relay (Stripe's Dashboard). A credit never published is withdrawn
        (state refunded); one that may pulse or has pulsed is recorded as refunded after play.
        Returns the payment's state before, or None when the session is unknown."""
        now = time.time()
        with self._write() as cur:
            cur.execute("SELECT state, published_at, sent_at FROM payments WHERE session_id = ?", (session_id,))
            row = cur.fetchone()
            if row is None:
                return None
            state, published_at, sent_at = row
            withdraw = (state == "queued" and published_at is None and sent_at is None) or state in (
                "invalid", "rejected", "refunding")
            if withdraw:
                cur.execute("UPDATE payments SET state = 'refunded', done_at = ?, updated_at = ? WHERE "
                            "session_id = ?", (now, now, session_id))
            cur.execute("INSERT INTO refunds (session_id, state, prior_state, after_play, refund_id, amount, currency, "
                        "reason, who, source, created_at, updated_at) VALUES (?, 'succeeded', ?, ?, ?, ?, ?, ?, "
                        "'stripe', 'dashboard', ?, ?) ON CONFLICT (session_id) DO UPDATE SET state = 'succeeded', "
                        "refund_id = excluded.refund_id, amount = excluded.amount, updated_at = excluded.updated_at",
                        (session_id, state, 0 if withdraw else 1, refund_id, amount, currency, reason, now, now))
            return state

    # disputes -------------------------------------------------------------------------------

    def record_dispute(self, dispute_id, status, session_id=None, charge_id=None, payment_intent=None, amount=None,
                       currency=None, reason=""):
        """charge.dispute.created / updated / closed: insert or update the dispute's status."""
        now = time.time()
        with self._write() as cur:
            cur.execute("INSERT INTO disputes (dispute_id, session_id, charge_id, payment_intent, amount, currency, "
                        "reason, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                        "ON CONFLICT (dispute_id) DO UPDATE SET status = excluded.status, "
                        "session_id = COALESCE(disputes.session_id, excluded.session_id), "
                        "updated_at = excluded.updated_at",
                        (dispute_id, session_id, charge_id, payment_intent, amount, currency, str(reason)[:100],
                         str(status)[:40], now, now))

    def list_disputes(self, open_only=False, limit=100):
        sql = ("SELECT dispute_id, session_id, charge_id, payment_intent, amount, currency, reason, status, created_at, "
               "updated_at FROM disputes")
        if open_only:
            sql += " WHERE status NOT IN ('won', 'lost', 'warning_closed')"
        return self._rows(sql + " ORDER BY created_at DESC LIMIT ?", (int(limit),))

    def session_for_payment_intent(self, payment_intent):
        rows = self._rows("SELECT session_id FROM disputes WHERE payment_intent = ? AND session_id IS NOT NULL "
                          "LIMIT 1", (payment_intent,))
        return rows[0]["session_id"] if rows else None

    # alert incidents ------------------------------------------------------------------------

    def open_incidents(self):
        return self._rows("SELECT id, key, kind, subject, message, opened_at FROM alert_incidents WHERE closed_at "
                          "IS NULL ORDER BY opened_at")

    def open_incident(self, key, kind, subject, message, now=None):
        """Open an incident unless one with this key is open; True when opened now (alert once)."""
        with self._write() as cur:
            cur.execute("SELECT 1 FROM alert_incidents WHERE key = ? AND closed_at IS NULL", (key,))
            if cur.fetchone() is not None:
                return False
            cur.execute("INSERT INTO alert_incidents (key, kind, subject, message, opened_at) VALUES (?, ?, ?, ?, ?)",
                        (key, kind, subject, message, time.time() if now is None else now))
            return True

    def close_incident(self, key, now=None):
        """Close the open incident with this key; returns it (to say resolved) or None."""
        with self._write() as cur:
            cur.execute("UPDATE alert_incidents SET closed_at = ? WHERE key = ? AND closed_at IS NULL "
                        "RETURNING id, key, kind, subject, message, opened_at",
                        (time.time() if now is None else now, key))
            row = cur.fetchone()
            if row is None:
                return None
            return dict(zip(("id", "key", "kind", "subject", "message", "opened_at"), row))

    # figures for /metrics ----------------------------------------------------------------------

    def refund_counts(self):
        return self._rows("SELECT state, after_play, COUNT(*) AS n FROM refunds GROUP BY state, after_play")

    def dispute_counts(self):
        return self._rows("SELECT status, COUNT(*) AS n FROM disputes GROUP BY status")

    def applied_latency(self, buckets):
        """(count, sum of seconds, [count <= b for b in buckets]) from record to applied ack."""
        cases = ", ".join("SUM(CASE WHEN done_at - created_at <= ? THEN 1 ELSE 0 END) AS b%d" % i
                          for i in range(len(buckets)))
        row = self._rows("SELECT COUNT(*) AS n, COALESCE(SUM(done_at - created_at), 0) AS total%s FROM payments "
                         "WHERE state = 'applied' AND done_at IS NOT NULL" % (", " + cases if cases else ""),
                         tuple(float(b) for b in buckets))[0]
        return row["n"], row["total"], [row["b%d" % i] or 0 for i in range(len(buckets))]

    def drop_incident(self, key):
        """Forget an open incident whose alert no channel took (so the next check alerts again)."""
        with self._write() as cur:
            cur.execute("DELETE FROM alert_incidents WHERE key = ? AND closed_at IS NULL", (key,))
