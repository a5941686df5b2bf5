"""tools/lab/postgres.py: the tests' private PostgreSQL is really private, and a missing server fails
with what to install (never a skip)."""
import os

import psycopg
import pytest

from relay.ledger import StorageError, open_ledger
from tools.lab import postgres as pg_lab


def test_a_missing_server_fails_with_what_to_install(monkeypatch):
    monkeypatch.delenv("PG_BIN", raising=False)
    monkeypatch.setattr(pg_lab.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(pg_lab.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install postgresql"):
        pg_lab.Postgres().start()


def test_the_cluster_is_private(postgres):
    with psycopg.connect(postgres.url()) as conn:
        settings = dict(conn.execute("SELECT name, setting FROM pg_settings WHERE name IN ('port', "
                                     "'unix_socket_directories', 'listen_addresses', 'data_directory')").fetchall())
    assert settings["port"] == str(postgres.port) != "5432"
    assert settings["listen_addresses"] == "127.0.0.1"
    assert settings["unix_socket_directories"] == str(postgres.workdir)
    assert settings["data_directory"] == str(postgres.data_dir) and not str(postgres.workdir).startswith("/var/")
    assert not (postgres.workdir / "pwfile").exists(), "the password file outlived initdb"
    assert oct(os.stat(postgres.workdir).st_mode & 0o777) == "0o700"


def test_a_wrong_password_is_refused_and_not_echoed(postgres):
    url = postgres.url().replace(postgres.password, "not-the-password")
    with pytest.raises(StorageError, match="password authentication failed") as e:
        open_ledger(url)
    assert "not-the-password" not in str(e.value)
