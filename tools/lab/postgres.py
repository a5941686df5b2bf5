"""Start and stop a private PostgreSQL: initdb in a temporary directory, its own free loopback port
and its own socket directory.

Used by the test suite (one cluster per session, a fresh database per test), `make soak
BACKEND=postgresql` and the benchmarks. Nothing here touches the machine's PostgreSQL service or
its data: the cluster lives and dies in its own directory. The superuser's password is random, goes
to initdb through a 0600 file (never argv) and is only in the URLs this object hands out.

PostgreSQL refuses to run as root: as root, the cluster's files belong to the `postgres` user (made
by Debian's package; `nobody` otherwise) and the server runs as that user.
"""
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tools.lab.broker import end_process, free_port

INSTALL_HINT = ("PostgreSQL's server is not installed: run `make setup` (installs it with apt) or "
                "`apt-get install postgresql` (the tests need initdb and postgres, any version from 13)")


def bin_dir():
    """Where initdb and postgres are: $PG_BIN, then the newest /usr/lib/postgresql/N/bin, then PATH."""
    candidates = [os.environ.get("PG_BIN")] if os.environ.get("PG_BIN") else []
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    found.sort(key=lambda p: int(p.split("/")[-3]) if p.split("/")[-3].isdigit() else 0, reverse=True)
    candidates += [os.path.dirname(p) for p in found]
    if shutil.which("initdb"):
        candidates.append(os.path.dirname(shutil.which("initdb")))
    for d in candidates:
        if os.path.exists(os.path.join(d, "initdb")) and os.path.exists(os.path.join(d, "postgres")):
            return d
    raise RuntimeError(INSTALL_HINT)


def _run_as():
    """(uid, gid) to run the server as: ourselves, or an unprivileged user when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
            return pw.pw_uid, pw.pw_gid
        except KeyError:
            continue
    raise RuntimeError("running as root and there is no `postgres` or `nobody` user to run PostgreSQL as")


def load_sqlite_dump(url, dump_sql):
    """Make in the PostgreSQL database at `url` the same tables, rows and indexes as a SQLite dump
    (`sqlite3 db .dump`), spelled for PostgreSQL the way the ledger spells its own schema: how the
    tests get a PostgreSQL database made by an older release of the schema."""
    import sqlite3

    import psycopg

    from relay.backends import to_postgres
    src = sqlite3.connect(":memory:")
    try:
        src.executescript(dump_sql)
        objects = src.execute("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE sql IS NOT NULL "
                              "ORDER BY type = 'index', name").fetchall()
        with psycopg.connect(url) as dst, dst.cursor() as cur:    # one transaction
            for kind, name, table, sql in objects:
                cur.execute(to_postgres(sql).replace("%%", "%"))
                if kind != "table":
                    continue
                data = src.execute('SELECT * FROM "%s"' % name)
                cols = [d[0] for d in data.description]
                rows = data.fetchall()
                if rows:
                    cur.executemany('INSERT INTO "%s" (%s) VALUES (%s)' % (name, ", ".join(cols),
                                                                          ", ".join(["%s"] * len(cols))), rows)
                for col in cols:     # identity columns continue after the copied ids
                    cur.execute("SELECT pg_get_serial_sequence(%s, %s)", (name, col))
                    seq = cur.fetchone()[0]
                    if seq and rows:
                        cur.execute('SELECT setval(%%s, (SELECT MAX(%s) FROM "%s"))' % (col, name), (seq,))
    finally:
        src.close()


class Postgres:
    """A PostgreSQL cluster in a temporary directory, listening on 127.0.0.1:port and its own socket dir.

    fsync=False is for the test suite (many small databases, no power cuts to survive); the soak and
    the benchmarks keep the default, fsync on, like a production server.
    """

    USER = "arcade"

    def __init__(self, workdir=None, port=None, fsync=True):
        self.workdir = Path(workdir) if workdir else None
        self._own_workdir = workdir is None
        self.port = port or free_port()
        self.fsync = fsync
        self.password = secrets.token_hex(16)
        self.proc = None

    @property
    def data_dir(self):
        return self.workdir / "data"

    @property
    def log_path(self):
        return self.workdir / "postgres.log"

    def url(self, dbname="postgres"):
        return "postgresql://%s:%s@127.0.0.1:%d/%s" % (self.USER, self.password, self.port, dbname)

    def _popen_user(self):
        ids = _run_as()
        return {} if ids is None else {"user": ids[0], "group": ids[1], "extra_groups": []}

    def start(self, timeout=60.0):
        bins = bin_dir()
        if self.workdir is None:
            # not under pytest's tmp_path: those are 0700 root-owned, where the postgres user can't go
            self.workdir = Path(tempfile.mkdtemp(prefix="arcade-pg-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        ids = _run_as()
        if ids is not None:
            os.chown(self.workdir, *ids)
        os.chmod(self.workdir, 0o700)
        pwfile = self.workdir / "pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        if ids is not None:
            os.chown(pwfile, *ids)
        try:
            with open(self.workdir / "initdb.log", "wb") as log:
                done = subprocess.run([os.path.join(bins, "initdb"), "-D", str(self.data_dir), "-U", self.USER,
                                       "--pwfile", str(pwfile), "-A", "scram-sha-256", "-E", "UTF8",
                                       "--locale", "C", "--no-instructions"] + ([] if self.fsync else ["--no-sync"]),
                                      stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      timeout=timeout, **self._popen_user())
        finally:
            pwfile.unlink()
        if done.returncode != 0:
            raise RuntimeError("initdb failed (exit %d): see %s" % (done.returncode, self.workdir / "initdb.log"))
        settings = {"listen_addresses": "127.0.0.1", "port": self.port, "unix_socket_directories": str(self.workdir),
                    "fsync": "on" if self.fsync else "off", "shared_buffers": "32MB", "max_connections": 200,
                    "log_min_messages": "warning"}
        argv = [os.path.join(bins, "postgres"), "-D", str(self.data_dir)]
        for k, v in settings.items():
            argv += ["-c", "%s=%s" % (k, v)]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     **self._popen_user())
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout):
        import psycopg
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code is not None:
                self.stop()
                raise RuntimeError("postgres exited with %s at start-up: see %s" % (code, self.log_path))
            try:
                with psycopg.connect(self.url(), connect_timeout=2):
                    return
            except psycopg.OperationalError as e:
                last = e
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("postgres did not accept connections on port %d within %.0f s (%s): see %s"
                           % (self.port, timeout, last, self.log_path))

    def _admin(self, sql, dbname="postgres"):
        import psycopg
        with psycopg.connect(self.url(dbname), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql)

    def create_schema(self, name, dbname):
        """A new empty schema in database `dbname`; returns a URL whose connections use only it
        (search_path): as isolated as a new database for the ledger, for a fraction of the cost
        (CREATE DATABASE takes ~0.5 s on a loaded machine, CREATE SCHEMA milliseconds)."""
        import urllib.parse
        if not name.replace("_", "").isalnum():
            raise ValueError("schema name %r: use letters, digits and _" % (name,))
        self._admin('CREATE SCHEMA "%s"' % name, dbname)
        return self.url(dbname) + "?options=" + urllib.parse.quote("-csearch_path=%s" % name)

    def drop_schema(self, name, dbname):
        self._admin('DROP SCHEMA IF EXISTS "%s" CASCADE' % name, dbname)

    def create_database(self, name):
        """A new empty database; returns its URL."""
        if not name.replace("_", "").isalnum():
            raise ValueError("database name %r: use letters, digits and _" % (name,))
        self._admin('CREATE DATABASE "%s"' % name)
        return self.url(name)

    def drop_database(self, name):
        self._admin('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)

    def stop(self, sig=signal.SIGINT, timeout=30.0):
        """SIGINT is PostgreSQL's fast shutdown (clients cut off, a clean checkpoint); SIGKILL is a crash."""
        if self.proc is not None:
            end_process(self.proc, sig, timeout)
            self.proc = None
            self._log.close()

    def remove(self):
        self.stop()
        if self._own_workdir and self.workdir is not None and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.remove()
