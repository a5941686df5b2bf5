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
