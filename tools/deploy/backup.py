"""Backups, restores and schema upgrades of the relay's database (docs/deploy.md, Backups).

SQLite: SQLite's online backup API (relay.ledger.backup_database) while the relay runs. PostgreSQL
(an ARCADE_DB of postgresql://...): pg_dump's custom format and pg_restore, the password passed in
the environment (PGPASSWORD), never in argv. Every file written is 0600.
"""
import fcntl
import os
import shutil
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

from relay import backends
from relay.ledger import LedgerError, backup_database, inspect_database, open_ledger


class BackupError(Exception):
    """What went wrong and what to do; nothing was changed."""


def is_postgres(db):
    return backends.is_postgres(db)


def _stamp():
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def _private_file(path):
    """Create `path` empty and 0600 (refusing one that exists), so no byte of a copy is ever readable by others."""
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)


def _pg_env(url):
    """(url without its password, environment with PGPASSWORD): the password stays out of argv."""
    parts = urlsplit(url)
    env = dict(os.environ)
    if parts.password is not None:
        env["PGPASSWORD"] = parts.password
        netloc = parts.netloc.rsplit("@", 1)
        user = parts.username or ""
        parts = parts._replace(netloc="%s@%s" % (user, netloc[1]) if user else netloc[1])
    return parts.geturl(), env


def _tool(name):
    found = shutil.which(name)
    if not found:
        raise BackupError("%s is not installed: apt-get install postgresql-client" % name)
    return found


def backup(db, dest, progress=None):
    """Copy the database `db` to `dest` (a file that must not exist, or a directory: a dated name is
    made in it). Returns (path written, a dict describing it)."""
    dest = Path(dest)
    if is_postgres(db):
        path = dest / ("arcade-%s.pgdump" % _stamp()) if dest.is_dir() else dest
        if path.exists():
            raise BackupError("%s exists: give a new file name or a directory" % path)
        url, env = _pg_env(db)
        _private_file(path)
        done = subprocess.run([_tool("pg_dump"), "--format=custom", "--file", str(path), "--dbname", url],
                              env=env, capture_output=True, text=True)
        if done.returncode != 0:
            path.unlink()
            raise BackupError("pg_dump failed: %s" % done.stderr.strip())
        return path, {"kind": "pg_dump", "size": path.stat().st_size}
    try:
        info = inspect_database(db)
    except LedgerError as e:
        raise BackupError("%s: check ARCADE_DB (the relay's environment file has it)" % e)
    path = dest / ("arcade-%s-%s.db" % (info["ledger_id"][:8], _stamp())) if dest.is_dir() else dest
    if path.exists():
        raise BackupError("%s exists: give a new file name or a directory (a backup never overwrites one)" % path)
    if not path.parent.is_dir():
        raise BackupError("%s: the folder %s does not exist" % (path, path.parent))
    partial = path.with_name(path.name + ".partial")
    if partial.exists():
        partial.unlink()      # a copy interrupted before: never renamed, never a backup
    _private_file(partial)
    try:
        backup_database(db, partial, progress=progress)
        os.replace(partial, path)
    except BaseException:
        if partial.exists():
            partial.unlink()
        raise
    copy = inspect_database(path)
    return path, dict(copy, kind="sqlite", size=path.stat().st_size, payments=_count(path))


def _count(path):
    import sqlite3
    db = sqlite3.connect("file:%s?mode=ro" % os.path.abspath(path), uri=True)
    try:
        return db.execute("SELECT COUNT(*) FROM payments").fetchone()[0]
    finally:
        db.close()


def relay_holding(db):
    """True if a relay process holds the database's dispatcher lock (it is live)."""
    lock = str(db) + ".dispatcher.lock"
    if not os.path.exists(lock):
        return False
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def restore(src, db, force=False):
    """Put the backup `src` in place as the database `db`. Returns a dict: what was replaced (kept
    where), the ledger ids, migrations applied, and notes (the ledger rules that now apply).
    Refuses (BackupError, nothing changed) a live database or an existing one without `force`."""
    if is_postgres(db):
        return _restore_pg(src, db, force)
    try:
        new = inspect_database(src)
    except LedgerError as e:
        raise BackupError("%s: give a file `arcade backup` wrote" % e)
    live = relay_holding(db)
    old = None
    if os.path.exists(db):
        try:
            old = inspect_database(db)
        except LedgerError:
            old = {"ledger_id": "(not a ledger)", "created_at": 0.0}
    if live and not force:
        raise BackupError("a relay is running on %s: stop it first (systemctl stop arcade-relay), restore, then "
                          "start it; --force restores under the running relay (then restart it at once)" % db)
    if old is not None and not force:
        raise BackupError("%s exists (ledger %s): --force replaces it (a copy of it is kept beside it first)"
                          % (db, old["ledger_id"][:8]))
    out = {"replaced": None, "live": live, "old_ledger": old and old["ledger_id"], "ledger": new["ledger_id"],
           "notes": []}
    if old is not None:
        keep = Path(str(db) + ".before-restore-" + _stamp())
        _private_file(keep)
        backup_database(db, keep)
        out["replaced"] = str(keep)
    else:
        Path(db).parent.mkdir(parents=True, exist_ok=True)
        _private_file(db)
    backup_database(src, db, journal_mode="WAL")
    os.chmod(db, 0o600)
    _chown_like_parent(db)
    with open_ledger(db) as led:       # brings an older backup's schema up to date
        out["migrated"] = [m for m in new["missing"] if m in led.migrations()]
    after = inspect_database(db)
    out["cabinets"] = len(after["cabinets"])
    out["payments"] = _count(db)
    if old is not None and old["ledger_id"] == new["ledger_id"]:
        out["notes"].append("same ledger %s, older counters: a cabinet that already used a sequence number "
                            "answers stale_seq and the relay gives the credit the next one; a payment applied "
                            "after the backup comes back as duplicate, not pulsed again (docs/protocol.md, "
                            "ledger rule)" % new["ledger_id"][:8])
    elif old is not None:
        out["notes"].append("the ledger changes from %s to %s: each cabinet adopts it with its next credit "
                            "(docs/protocol.md, ledger rule 3); payments recorded only in the replaced database "
                            "are in %s" % (old["ledger_id"][:8], new["ledger_id"][:8], out["replaced"]))
    out["notes"].append("payments made after the backup are not in it: run `arcade reconcile --since 72h --dry-run`, "
                        "then without --dry-run, to bring them back from Stripe (sessions created before the "
                        "ledger was are never fulfilled automatically)")
    return out


def _chown_like_parent(path):
    if os.geteuid() != 0:
        return
    st = os.stat(os.path.dirname(os.path.abspath(path)))
    os.chown(path, st.st_uid, st.st_gid)


def _restore_pg(src, db, force):
    if not force:
        raise BackupError("restoring into PostgreSQL replaces every table of %s: stop the relay, then run again "
                          "with --force" % urlsplit(db)._replace(netloc=urlsplit(db).hostname or "").geturl())
    url, env = _pg_env(db)
    done = subprocess.run([_tool("pg_restore"), "--clean", "--if-exists", "--no-owner", "--dbname", url, str(src)],
                          env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise BackupError("pg_restore failed: %s" % done.stderr.strip())
    return {"replaced": None, "live": None, "old_ledger": None, "ledger": None, "notes": [], "migrated": [],
            "cabinets": None, "payments": None}


def backup_before_upgrade(db, backup_dir=None):
    """Copy a SQLite database that lacks migrations before they are applied (beside it, or into
    `backup_dir`); returns the copy's path, or None (nothing to migrate, no file yet, PostgreSQL)."""
    if is_postgres(db) or not os.path.exists(str(db)):
        return None
    info = inspect_database(db)
    if not info["missing"]:
        return None
    path, _ = backup(db, Path(backup_dir) if backup_dir else Path(str(db) + ".before-upgrade-" + _stamp()))
    return path
