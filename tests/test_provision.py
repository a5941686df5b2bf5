"""arcade provision: config.json exactly as firmware/config.py expects, private, validated by the
firmware's own loaders; bad input is a clear error that writes nothing and never shows a secret."""
import io
import json
import os
import stat
from pathlib import Path

import pytest

from relay.ledger import open_ledger
from tools import cli
from tools.hostsim.boards import fw_config

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "wifi-pass-7f3a91"
KEYS = {"wifi_ssid", "wifi_password", "broker", "cabinet", "secret", "board", "prefix", "keepalive"}
CA_PEM = b"-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIUfake\n-----END CERTIFICATE-----\n"


@pytest.fixture
def env(tmp_path, monkeypatch):
    db = str(tmp_path / "arcade.db")
    monkeypatch.setenv("ARCADE_DB", db)
    monkeypatch.delenv("MQTT_URL", raising=False)
    monkeypatch.delenv("ARCADE_TOPIC_PREFIX", raising=False)
    monkeypatch.chdir(tmp_path)
    with open_ledger(db) as ledger:
        secret = ledger.add_cabinet("galaga-1", price_cents=100)
    (tmp_path / "ca.crt").write_bytes(CA_PEM)
    return {"db": db, "secret": secret, "out": tmp_path / "build", "tmp": tmp_path}


def provision(capsys, env, *extra, cab="galaga-1", board="esp32-devkitc", broker="mqtt://relay:brokerpw@192.168.1.5"):
    argv = ["provision", cab, "--board", board, "--wifi-ssid", "Arcade", "--wifi-password", PASSWORD,
            "--out", str(env["out"])]
    if broker is not None:
        argv += ["--broker", broker]
    code = cli.main(argv + list(extra))
    out, err = capsys.readouterr()
    return code, out, err


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_config_board_and_nothing_secret_on_screen(env, capsys):
    code, out, err = provision(capsys, env)
    assert code == 0, err
    d = env["out"] / "galaga-1"
    assert sorted(p.name for p in d.iterdir()) == ["board.json", "config.json"]
    assert mode(d) == 0o700 and mode(d / "config.json") == 0o600
    cfg = json.loads((d / "config.json").read_text())
    assert set(cfg) == KEYS
    with open_ledger(env["db"]) as ledger:
        own_pw = ledger.broker_password("galaga-1")
        new_secret = ledger.get_cabinet("galaga-1")["secret"]
    # provisioning always makes a new secret (issue 9): the old board's credits stop verifying
    assert new_secret != env["secret"] and len(new_secret) == 64
    # the cabinet's own broker login, never the relay's from --broker (issue 9)
    assert cfg == {"wifi_ssid": "Arcade", "wifi_password": PASSWORD,
                   "broker": "mqtt://galaga-1:%s@192.168.1.5:1883" % own_pw,
                   "cabinet": "galaga-1", "secret": new_secret, "board": "esp32-devkitc", "prefix": "arcade",
                   "keepalive": 30}
    assert (d / "board.json").read_bytes() == (ROOT / "boards" / "esp32-devkitc.json").read_bytes()
    # what the board does at boot accepts it
    fw = fw_config()
    root = str(d) + "/"
    checked = fw.load_config(root, fw.load_board(root))
    assert checked["mqtt"] == {"host": "192.168.1.5", "port": 1883, "user": "galaga-1", "password": own_pw,
                               "ssl": False}
    assert "brokerpw" not in (d / "config.json").read_text()
    for secret in (env["secret"], new_secret, PASSWORD, "brokerpw", own_pw):
        assert secret not in out + err
    assert "mqtt://galaga-1:***@192.168.1.5:1883" in out
    with open_ledger(env["db"]) as ledger:
        assert ledger.cabinet_config("galaga-1")["board"] == "esp32-devkitc"


def test_several_brokers_become_the_boards_list_with_its_own_login(env, capsys):
    """A broker cluster's nodes, comma-separated: config.json's `broker` is the list, each URL with the
    cabinet's own login; the firmware's loader takes it; 5 nodes or mixed schemes are refused."""
    code, out, err = provision(capsys, env, broker="mqtt://relay:brokerpw@10.0.0.1:4001,mqtt://relay:brokerpw@"
                                                   "10.0.0.2:4002, mqtt://10.0.0.3")
    assert code == 0, err
    d = env["out"] / "galaga-1"
    cfg = json.loads((d / "config.json").read_text())
    with open_ledger(env["db"]) as ledger:
        own_pw = ledger.broker_password("galaga-1")
    assert cfg["broker"] == ["mqtt://galaga-1:%s@10.0.0.%d:%d" % (own_pw, i, p)
                             for i, p in ((1, 4001), (2, 4002), (3, 1883))]
    fw = fw_config()
    checked = fw.load_config(str(d) + "/", fw.load_board(str(d) + "/"))
    assert checked["mqtt"]["hosts"] == (("10.0.0.1", 4001), ("10.0.0.2", 4002), ("10.0.0.3", 1883))
    assert own_pw not in out + err and "brokerpw" not in out + err + (d / "config.json").read_text()
    for bad, says in ((",".join(["mqtt://10.0.0.%d" % i for i in range(1, 6)]), "1 to 4 brokers"),
                      ("mqtt://10.0.0.1,mqtts://10.0.0.2", "all mqtt:// or all mqtts://"),
                      ("mqtt://10.0.0.1,mqtt://127.0.0.1", "the board itself")):
        code, out, err = provision(capsys, env, broker=bad)
        assert code != 0 and says in err, (bad, err)


def test_tls_broker_with_ca_and_broker_from_the_environment(env, capsys, monkeypatch):
    monkeypatch.setenv("MQTT_URL", "mqtts://cab:pw@broker.example.net")
    monkeypatch.setenv("ARCADE_TOPIC_PREFIX", "arcade-eu")
    code, out, err = provision(capsys, env, "--ca", str(env["tmp"] / "ca.crt"), board="esp32-c3", broker=None)
    assert code == 0, err
    d = env["out"] / "galaga-1"
    cfg = json.loads((d / "config.json").read_text())
    assert (cfg["broker"], cfg["ca"], cfg["prefix"], cfg["board"]) == \
        ("mqtts://galaga-1:%s@broker.example.net:8883" % cfg["broker"].split(":")[2].split("@")[0], "ca.pem",
         "arcade-eu", "esp32-c3")
    assert "cab:pw" not in cfg["broker"]
    assert (d / "ca.pem").read_bytes() == CA_PEM
    fw = fw_config()
    root = str(d) + "/"
    checked = fw.load_config(root, fw.load_board(root))
    assert checked["mqtt"]["ssl"] and checked["mqtt"]["port"] == 8883 and checked["ca"] == root + "ca.pem"
    # provisioned again without TLS: the old CA does not linger
    code, _, err = provision(capsys, env)
    assert code == 0, err
    assert sorted(p.name for p in d.iterdir()) == ["board.json", "config.json"]


def test_wifi_password_from_standard_input(env, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("from stdin pw\n"))
    code = cli.main(["provision", "galaga-1", "--board", "esp32-s3-devkitc", "--wifi-ssid", "Arcade",
                     "--wifi-password", "-", "--broker", "mqtt://10.0.0.2", "--out", str(env["out"])])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads((env["out"] / "galaga-1" / "config.json").read_text())["wifi_password"] == "from stdin pw"
    assert "from stdin pw" not in out + err


@pytest.mark.parametrize("change, shown", [
    ({"cab": "nope"}, "cabinet 'nope' is not in the relay database"),
    ({"cab": "bad id"}, "cabinet id 'bad id' is not valid"),
    ({"board": "esp32-nope"}, "unknown board 'esp32-nope': choose one of esp32-c3, esp32-devkitc, esp32-s3-devkitc"),
    ({"board": "../boards/esp32-c3"}, "unknown board"),
    ({"broker": None}, "no broker: pass --broker"),
    ({"broker": "http://192.168.1.5"}, "'broker' must be mqtt://"),
    ({"broker": "mqtt://localhost:1883"}, "which on the board is the board itself"),
    ({"broker": "mqtt://u:secretpw@127.0.0.1"}, "mqtt://u:***@127.0.0.1"),
    ({"broker": "mqtts://broker.example.net"}, "pass --ca FILE"),
    ({"extra": ["--ca", "CA"]}, "only used with an mqtts:// broker"),
    ({"broker": "mqtts://b.example.net", "extra": ["--ca", "missing.crt"]}, "--ca missing.crt cannot be read"),
    ({"broker": "mqtts://b.example.net", "extra": ["--ca", "arcade.db"]}, "is not a certificate"),
    ({"extra": ["--wifi-ssid", "x" * 33]}, "'wifi_ssid' must be a string of 1 to 32 characters"),
    ({"extra": ["--wifi-password", "p" * 65]}, "'wifi_password' must be a string of 0 to 64 characters"),
    ({"extra": ["--keepalive", "0"]}, "'keepalive' must be an integer from 1 to 3600"),
    ({"extra": ["--prefix", "arcade/"]}, "'prefix' must be a topic prefix"),
    ({"extra": ["--db", "elsewhere.db"]}, "no relay database at elsewhere.db"),
], ids=["unknown cabinet", "bad cabinet id", "unknown board", "board path", "no broker", "not mqtt", "localhost",
        "loopback, password masked", "mqtts without ca", "ca without mqtts", "ca missing", "ca not a certificate",
        "ssid too long", "password too long", "keepalive", "prefix", "no database"])
def test_bad_input_is_a_clear_error_and_writes_nothing(env, capsys, change, shown):
    assert provision(capsys, env)[0] == 0
    d = env["out"] / "galaga-1"
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    with open_ledger(env["db"]) as ledger:
        secret_before = ledger.get_cabinet("galaga-1")["secret"]
    kw = {k: v for k, v in change.items() if k != "extra"}
    extra = [a if a != "CA" else str(env["tmp"] / "ca.crt") for a in change.get("extra", [])]
    code, out, err = provision(capsys, env, *extra, **kw)
    assert code == 2
    assert shown in err and err.startswith("arcade provision: ") and "Traceback" not in err
    for secret in (env["secret"], PASSWORD, "p" * 65, "secretpw", "brokerpw"):
        assert secret not in out + err
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    with open_ledger(env["db"]) as ledger:
        assert ledger.get_cabinet("galaga-1")["secret"] == secret_before, "a refused provisioning re-keyed"
    assert [p.name for p in env["out"].iterdir()] == ["galaga-1"]     # no staging directory left behind


def test_a_database_that_is_not_sqlite_is_a_clear_error(tmp_path, capsys):
    # StorageError is a tuple of the engines' errors: `except (LedgerError, StorageError)` would itself
    # raise TypeError (Python does not look inside a nested tuple)
    bad = tmp_path / "arcade.db"
    bad.write_bytes(b"this is not a database" * 200)
    rc = cli.main(["provision", "cab1", "--board", "esp32-devkitc", "--wifi-ssid", "S", "--wifi-password", "p",
                   "--broker", "mqtt://cab1:x@192.0.2.1:1883", "--db", str(bad), "--out", str(tmp_path / "out")])
    assert rc == 2
    assert "arcade provision: database" in capsys.readouterr().err
