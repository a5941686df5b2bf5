import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.lab.broker import Mosquitto  # noqa: E402


@pytest.fixture
def broker(tmp_path):
    """A real mosquitto on a free port with its own config and data directory."""
    with Mosquitto(tmp_path / "mosquitto") as b:
        yield b


PG_TESTS_DB = "tests"


@pytest.fixture(scope="session")
def postgres():
    """One private PostgreSQL cluster for the whole session (initdb in a temp dir, a free port; fsync off:
    no power cut to survive) with a database for the tests. Missing server binaries fail with what to
    install, never a skip."""
    from tools.lab.postgres import Postgres
    with Postgres(fsync=False) as pg:
        pg.create_database(PG_TESTS_DB)
        yield pg


@pytest.fixture
def pg_url(postgres, request):
    """A fresh, empty PostgreSQL ledger location for this test: its own schema in the session's test
    database (search_path in the URL), dropped afterwards. As isolated as a database per test for
    everything the ledger does, at milliseconds instead of ~0.5 s each; tests run one at a time, so the
    database-wide advisory locks are never contended by another test."""
    import re
    from relay import backends
    name = "t_%s_%d" % (re.sub(r"[^A-Za-z0-9]+", "_", request.node.name)[:40].lower(), id(request) % 100000)
    url = postgres.create_schema(name, PG_TESTS_DB)
    yield url
    backends.close_pools(url)
    postgres.drop_schema(name, PG_TESTS_DB)


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_db(request, tmp_path):
    """The ledger's database on each backend: a SQLite path, or a postgresql:// URL of a fresh database."""
    if request.param == "sqlite":
        return str(tmp_path / "arcade.db")
    return request.getfixturevalue("pg_url")


@pytest.fixture(scope="session")
def vectors():
    import json
    return json.loads((ROOT / "tests" / "vectors.json").read_text())


# A test module defines `app` (create_app with its own settings and cabinets); these two serve it.
@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def ledger(app):
    from relay.ledger import open_ledger
    with open_ledger(app.config["ARCADE_DB"]) as led:
        yield led
