"""The ledger's storage engines: SQLite (the embedded default) and PostgreSQL (ARCADE_DB=postgresql://...).

relay/ledger.py writes its SQL once, in the dialect both engines share (qmark placeholders `?`,
ON CONFLICT, RETURNING, SQLite's type names in DDL). This module is the seam for the few things that
differ, so that every method and every MIGRATIONS entry runs on both:

- connecting: SQLite opens a file per Ledger; PostgreSQL borrows a connection from one psycopg_pool
  pool per database URL (created on first use, closed at exit or by close_pools());
- the write transaction: SQLite's BEGIN IMMEDIATE takes the database's one write lock; PostgreSQL
  takes a transaction-scoped advisory lock (WRITE_LOCK) right after BEGIN, so check-then-write
  sequences (idempotency, sequence allocation) are serialised exactly as on SQLite, by every relay
  on that database. The wait is bounded by the busy timeout (SQLite's busy_timeout, PostgreSQL's
  lock_timeout) and fails with StorageError;
- catalogue questions (does a table or column exist): Dialect.has_table / columns;
- PostgreSQL's spelling: `?` becomes `%s` and a literal `%` becomes `%%` (psycopg's placeholders);
  in CREATE/ALTER TABLE, INTEGER becomes BIGINT, REAL becomes DOUBLE PRECISION (SQLite's REAL is
  8 bytes; PostgreSQL's is 4), BLOB becomes BYTEA and `INTEGER PRIMARY KEY` (SQLite's rowid alias)
  an identity column. Booleans are stored as 0/1 and integral NUMERIC results (SUM of integers)
  come back as int, as on SQLite.

A MIGRATIONS callable gets a cursor whose `dialect` attribute answers has_table / columns for
either engine; it should not use PRAGMA or sqlite_master directly.
"""
import atexit
import fcntl
import re
import select
import sqlite3
import threading
import urllib.parse

import psycopg
import psycopg_pool
from psycopg.adapt import Dumper, Loader
from psycopg.pq import TransactionStatus

# What a storage failure raises (the webhook answers 5xx so that Stripe retries).
StorageError = (sqlite3.Error, psycopg.Error)

# The advisory lock every PostgreSQL write transaction holds: b"arcade" as a number.
WRITE_LOCK = 0x617263616465
# The session-level advisory lock of the one dispatcher on a PostgreSQL database: b"arcdsp".
DISPATCHER_LOCK = 0x617263647370
# PostgreSQL: a committed credit is announced here (payload: its cabinet id), so that the relay holding
# that cabinet's lease publishes it at once, whichever relay's webhook recorded it.
CREDITS_CHANNEL = "arcade_credits"


def is_postgres(db):
    return str(db).startswith(("postgresql://", "postgres://"))


def redact(db):
    """The database named without its password, for messages and logs."""
    if not is_postgres(db):
        return str(db)
    u = urllib.parse.urlsplit(str(db))
    netloc = u.hostname or ""
    if u.port:
        netloc += ":%d" % u.port
    if u.username:
        netloc = u.username + "@" + netloc
    return urllib.parse.urlunsplit((u.scheme, netloc, u.path, "", ""))


def open_backend(db, busy_timeout_ms=5000):
    """The connection a Ledger uses, and its dialect: (connection, dialect)."""
    if is_postgres(db):
        return PostgreSQL.open(str(db), busy_timeout_ms)
    return SQLite.open(str(db), busy_timeout_ms)


class PerDatabase:
    """One `make()` per database path in this process, made on first use (thread-safe)."""

    def __init__(self, make):
        self._make, self._made, self._lock = make, {}, threading.Lock()

    def __call__(self, path):
        with self._lock:
            made = self._made.get(path)
            if made is None:
                made = self._made[path] = self._make()
            return made


# SQLite's writers in this process, per database file: they queue on this lock before BEGIN
# IMMEDIATE, so one waits exactly until the other commits, where SQLite's own busy handler would
# poll in sleeps of 1, 2, 5, 10... ms (a webhook behind a dispatcher's fsync lost milliseconds).
# Other processes (web workers, tools) still meet in SQLite's lock and its busy timeout.
_writer_lock = PerDatabase(threading.RLock)


class SQLite:
    name = "sqlite"

    def __init__(self, busy_timeout_ms, path=None):
        self.busy_timeout_ms = int(busy_timeout_ms)
        self._writers = _writer_lock(path)

    @classmethod
    def open(cls, path, busy_timeout_ms):
        dialect = cls(busy_timeout_ms, path)
        # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) in Ledger._write().
        db = sqlite3.connect(path, timeout=busy_timeout_ms / 1000.0, isolation_level=None, factory=_SqliteConnection)
        try:
            db.execute("PRAGMA busy_timeout = %d" % dialect.busy_timeout_ms)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
        except BaseException:
            db.close()
            raise
        return db, dialect

    def begin(self, cur):
        """BEGIN IMMEDIATE, after this process's other writers on the file (end() lets the next in)."""
        if not self._writers.acquire(timeout=self.busy_timeout_ms / 1000.0):
            raise sqlite3.OperationalError("database is locked: another writer of this process held it for "
                                           "%d ms (the busy timeout)" % self.busy_timeout_ms)
        try:
            cur.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._writers.release()
            raise

    def end(self):
        """The transaction begin() opened has ended (committed or rolled back)."""
        self._writers.release()

    def notify_credit(self, cur, cabinet_id):
        """Nothing: one dispatcher per SQLite database, woken by its own process's webhooks (a web
        worker's through a pipe, relay/webworkers.py); other processes' credits wait for ARCADE_RESCAN."""

    def schema_cached(self, db):
        return None

    def remember_schema(self, db, ledger_id):
        pass

    @staticmethod
    def has_table(cur, name):
        cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        return cur.fetchone() is not None

    @staticmethod
    def columns(cur, table):
        cur.execute("SELECT name FROM pragma_table_info(?)", (table,))
        return [r[0] for r in cur.fetchall()]


class _SqliteCursor(sqlite3.Cursor):
    dialect = SQLite


class _SqliteConnection(sqlite3.Connection):
    """Its cursors (those of execute() too) carry `dialect`, like PostgreSQL's."""

    def cursor(self, factory=_SqliteCursor):
        return super().cursor(factory)


# -- PostgreSQL -------------------------------------------------------------------------------

_LITERAL = re.compile(r"('(?:[^']|'')*'|\"(?:[^\"]|\"\")*\")")
_DDL = re.compile(r"\s*(CREATE\s+TABLE|ALTER\s+TABLE)\b", re.I)
_DDL_TYPES = [
    (re.compile(r"\bINTEGER\s+PRIMARY\s+KEY(\s+AUTOINCREMENT)?\b", re.I),
     "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b", re.I), "BIGINT"),
    (re.compile(r"\bREAL\b", re.I), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b", re.I), "BYTEA"),
]
_translated = {}


def to_postgres(sql):
    """The ledger's shared SQL in PostgreSQL's (and psycopg's) spelling; cached."""
    out = _translated.get(sql)
    if out is None:
        ddl = bool(_DDL.match(sql))
        parts = []
        for i, part in enumerate(_LITERAL.split(sql)):
            if i % 2 == 0:              # outside quotes
                if ddl:
                    for pattern, repl in _DDL_TYPES:
                        part = pattern.sub(repl, part)
                part = part.replace("%", "%%").replace("?", "%s")
            else:
                part = part.replace("%", "%%")
            parts.append(part)
        out = _translated[sql] = "".join(parts)
    return out


class _BoolAsInt(Dumper):
    """SQLite stores True as 1; the ledger's flags are INTEGER columns on both engines."""
    oid = psycopg.adapters.types["int8"].oid

    def dump(self, obj):
        return b"1" if obj else b"0"


class _NumericAsNumber(Loader):
    """SUM() of integers is NUMERIC in PostgreSQL: give back int (or float), as SQLite does."""

    def load(self, data):
        text = bytes(data).decode()
        try:
            return int(text)
        except ValueError:
            return float(text)


class PgCursor:
    """A psycopg cursor that takes the ledger's SQL (the subset of sqlite3.Cursor the ledger uses)."""

    def __init__(self, cur, dialect):
        self._cur = cur
        self.dialect = dialect

    def execute(self, sql, args=()):
        self._cur.execute(to_postgres(sql), tuple(args))
        return self

    def executemany(self, sql, seq):
        self._cur.executemany(to_postgres(sql), [tuple(a) for a in seq])
        return self

    def fetchone(self):
        return self._cur.fetchone() if self._cur.description is not None else None

    def fetchall(self):
        return self._cur.fetchall() if self._cur.description is not None else []

    def fetchmany(self, size=1):
        return self._cur.fetchmany(size) if self._cur.description is not None else []

    def __iter__(self):
        return iter(self.fetchall())

    @property
    def rowcount(self):
        return self._cur.rowcount

    @property
    def description(self):
        return self._cur.description

    lastrowid = None    # not in PostgreSQL: use RETURNING

    def close(self):
        self._cur.close()


class PgConnection:
    """A pooled psycopg connection that looks, to the ledger, like its sqlite3 connection."""

    def __init__(self, conn, pool, dialect):
        self._conn, self._pool, self.dialect = conn, pool, dialect

    def cursor(self):
        return PgCursor(self._conn.cursor(), self.dialect)

    def execute(self, sql, args=()):
        return self.cursor().execute(sql, args)

    def executemany(self, sql, seq):
        return self.cursor().executemany(sql, seq)

    @property
    def in_transaction(self):
        return self._conn.info.transaction_status != TransactionStatus.IDLE

    def close(self):
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.putconn(conn)     # the pool rolls back anything left open, or discards a broken one


class _Pool:
    def __init__(self, url):
        self.url = url
        self.ledger_id = None           # set once the schema is created and migrated in this process
        self.pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=_POOL_SIZE, open=False, name="arcade-ledger",
            kwargs={"autocommit": True}, configure=self._configure, check=psycopg_pool.ConnectionPool.check_connection)

    @staticmethod
    def _configure(conn):
        conn.adapters.register_dumper(bool, _BoolAsInt)
        conn.adapters.register_loader("numeric", _NumericAsNumber)
        # A relay that stops talking in the middle of a transaction (paused, cut off by the network)
        # must not hold the write lock (WRITE_LOCK) over every other relay for TCP's hours: the server
        # ends such a session after this long idle inside a transaction, below the 5 s lock_timeout
        # the others wait with. The relay's transactions never pause between statements.
        conn.execute("SET idle_in_transaction_session_timeout = %d" % IDLE_IN_TRANSACTION_MS)


_POOL_SIZE = 10
IDLE_IN_TRANSACTION_MS = 4000
_pools = {}
_pools_lock = threading.Lock()


def _get_pool(url, timeout):
    with _pools_lock:
        entry = _pools.get(url)
        if entry is None:
            # One plain connection first: a refused connection or a wrong password fails now, with
            # the server's reason, instead of after the pool's retries.
            try:
                psycopg.connect(url, connect_timeout=max(1, int(timeout))).close()
            except psycopg.OperationalError as e:
                raise psycopg.OperationalError("cannot connect to PostgreSQL at %s: %s (is the server running, and "
                                               "are ARCADE_DB's host, port, user and password right?)"
                                               % (redact(url), str(e).strip().replace(url, redact(url)))) from None
            entry = _Pool(url)
            try:
                entry.pool.open(wait=True, timeout=timeout)
            except psycopg_pool.PoolTimeout as e:
                entry.pool.close()
                raise psycopg.OperationalError("cannot connect to PostgreSQL at %s within %.0f s (%s)"
                                               % (redact(url), timeout, e)) from None
            _pools[url] = entry
        return entry


def close_pools(url=None):
    """Close the pool of `url` (or every pool): its connections end, its cached schema state is forgotten."""
    with _pools_lock:
        urls = [url] if url is not None else list(_pools)
        entries = [_pools.pop(u) for u in urls if u in _pools]
    for entry in entries:
        entry.pool.close()


atexit.register(close_pools)


class PostgreSQL:
    name = "postgresql"

    def __init__(self, entry, busy_timeout_ms):
        self._entry = entry
        self.busy_timeout_ms = int(busy_timeout_ms)

    @classmethod
    def open(cls, url, busy_timeout_ms):
        timeout = max(busy_timeout_ms / 1000.0, 10.0)
        entry = _get_pool(url, timeout)
        dialect = cls(entry, busy_timeout_ms)
        conn = entry.pool.getconn(timeout=timeout)
        return PgConnection(conn, entry.pool, dialect), dialect

    def begin(self, cur):
        # One round trip: simple-query protocol (no parameters) runs the three statements in turn.
        cur._cur.execute("BEGIN; SET LOCAL lock_timeout = %d; SELECT pg_advisory_xact_lock(%d)"
                         % (self.busy_timeout_ms, WRITE_LOCK))

    def end(self):
        pass        # the advisory lock ends with the transaction

    def notify_credit(self, cur, cabinet_id):
        """Announce a credit of `cabinet_id` on CREDITS_CHANNEL when this transaction commits (never if
        it, or the savepoint around it, rolls back): listen_credits() wakes every relay's dispatcher."""
        cur.execute("SELECT pg_notify(?, ?)", (CREDITS_CHANNEL, cabinet_id))

    def schema_cached(self, db):
        """The ledger id when this process has already created/migrated this database's schema."""
        return self._entry.ledger_id

    def remember_schema(self, db, ledger_id):
        self._entry.ledger_id = ledger_id

    @staticmethod
    def has_table(cur, name):
        cur.execute("SELECT to_regclass(?) IS NOT NULL", (name,))
        return bool(cur.fetchone()[0])

    @staticmethod
    def columns(cur, table):
        cur.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                    "AND table_name = ? ORDER BY ordinal_position", (table,))
        return [r[0] for r in cur.fetchall()]


# -- the dispatcher's lock: one dispatcher (one broker client id) per database --------------------

class _FileLock:
    def __init__(self, f):
        self._f = f

    def release(self):
        if self._f is not None:
            self._f.close()     # closing the descriptor drops the flock
            self._f = None


class _PgSessionLock:
    """Held as long as its own connection lives: a killed relay's lock goes with its connection."""

    def __init__(self, conn):
        self._conn = conn

    def release(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def take_dispatcher_lock(db):
    """The database's dispatcher lock, or None when another process holds it. SQLite: an exclusive
    flock on DB.dispatcher.lock (one host); PostgreSQL: a session advisory lock on a connection of
    its own (any host on that database)."""
    if is_postgres(db):
        conn = psycopg.connect(db, autocommit=True, connect_timeout=10)
        try:
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (DISPATCHER_LOCK,)).fetchone()[0]
        except BaseException:
            conn.close()
            raise
        if not got:
            conn.close()
            return None
        return _PgSessionLock(conn)
    f = open(str(db) + ".dispatcher.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return _FileLock(f)


def listen_credits(url, timeout=10.0):
    """A connection of its own (not the pool's: it stays in LISTEN) that hears CREDITS_CHANNEL; wait on
    it with wait_credits(). Raises psycopg.Error (a StorageError) when the server can't be reached."""
    conn = psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(timeout)))
    try:
        conn.execute("LISTEN %s" % CREDITS_CHANNEL)
    except BaseException:
        conn.close()
        raise
    return conn


def wait_credits(conn, timeout):
    """Wait up to `timeout` s on a listen_credits() connection: True when one or more credit notices
    came. Reads libpq directly, its own buffer first: psycopg's notifies(timeout=...) can leave a
    notice that arrived as its timeout ran out in libpq's buffer, unseen until the socket next has
    data (a payment waited ~2 s for the rescan in the bench). Raises psycopg.Error on a lost connection."""
    pgconn = conn.pgconn
    got = False
    while pgconn.notifies() is not None:
        got = True
    if got:
        return True
    readable, _, _ = select.select([pgconn.socket], [], [], timeout)
    if readable:
        pgconn.consume_input()          # raises psycopg.OperationalError when the server has gone
        while pgconn.notifies() is not None:
            got = True
    if pgconn.status != psycopg.pq.ConnStatus.OK:
        raise psycopg.OperationalError("the connection listening for credits was lost")
    return got
