"""arcade cabinet and arcade payments, called through tools.cli.main like the console script."""
import json
import os

import pytest

from relay.ledger import open_ledger
from tools import cli


@pytest.fixture
def db(tmp_path, monkeypatch):
    path = str(tmp_path / "arcade.db")
    monkeypatch.setenv("ARCADE_DB", path)
    monkeypatch.chdir(tmp_path)   # no stray .env from the developer's checkout
    return path


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_add_prints_the_secret_only_when_asked_and_stores_the_prices(db, capsys):
    code, out, err = run(capsys, "cabinet", "add", "quiet-1", "--price", "1.00")
    with open_ledger(db) as ledger:
        quiet = ledger.get_cabinet("quiet-1")["secret"]
    assert code == 0 and quiet not in out + err and "arcade provision quiet-1" in out
    code, out, err = run(capsys, "cabinet", "add", "galaga-1", "--price", "1.00", "--bundle", "3:2.50",
                         "--bundle", "5:4", "--coins-per-credit", "2", "--name", "Galaga", "--show-secret")
    assert code == 0, err
    secret = [line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("secret: ")]
    with open_ledger(db) as ledger:
        cab = ledger.get_cabinet("galaga-1")
    assert secret == [cab["secret"]]
    assert out.count(cab["secret"]) == 1
    assert (cab["name"], cab["price_cents"], cab["bundles"], cab["coins_per_credit"]) == \
        ("Galaga", 100, [(3, 250), (5, 400)], 2)
    code, out, _ = run(capsys, "cabinet", "list")
    assert code == 0 and "galaga-1" in out and cab["secret"] not in out
    code, out, _ = run(capsys, "cabinet", "list", "--json")
    assert cab["secret"] not in out and json.loads(out)[0]["pending"] == 0


@pytest.mark.parametrize("argv, shown", [
    (["bad id", "--price", "1.00"], "'bad id'"),
    (["c" * 33, "--price", "1.00"], "c" * 33),
    (["cab1", "--price", "1,00"], "'1,00'"),
    (["cab1", "--price", "-1"], "'-1'"),
    (["cab1", "--price", "1.00", "--bundle", "3-2.50"], "'3-2.50'"),
    (["cab1", "--price", "1.00", "--currency", "dollars"], "'dollars'"),
    (["cab1", "--price", "1.00", "--coins-per-credit", "0"], "0"),
    (["cab1", "--price", "1.00", "--coins-per-credit", "200", "--bundle", "3:2.50"], "(3, 250)"),
], ids=["space in id", "id too long", "comma price", "negative price", "bundle dash", "currency", "zero coins",
        "bundle over 255 pulses"])
def test_bad_input_is_a_clear_error_and_changes_nothing(db, capsys, argv, shown):
    code, out, err = run(capsys, "cabinet", "add", *argv)
    assert code == 2
    assert shown in err and "arcade cabinet:" in err and "Traceback" not in err
    assert "secret" not in out
    code, out, _ = run(capsys, "cabinet", "list", "--json") if os.path.exists(db) else (0, "[]", "")
    assert json.loads(out) == []


def test_duplicate_id_keeps_the_first(db, capsys):
    assert run(capsys, "cabinet", "add", "cab1", "--price", "1.00")[0] == 0
    code, out, err = run(capsys, "cabinet", "add", "cab1", "--price", "2.00")
    assert code == 2 and "already exists" in err and "secret" not in out
    with open_ledger(db) as ledger:
        assert ledger.get_cabinet("cab1")["price_cents"] == 100


def test_enable_disable_and_unknown(db, capsys):
    run(capsys, "cabinet", "add", "cab1", "--price", "1.00")
    assert run(capsys, "cabinet", "disable", "cab1")[0] == 0
    with open_ledger(db) as ledger:
        assert ledger.get_cabinet("cab1")["enabled"] is False
    assert run(capsys, "cabinet", "enable", "cab1")[0] == 0
    code, _, err = run(capsys, "cabinet", "enable", "nope")
    assert code == 2 and "'nope'" in err


def test_list_without_a_database_says_what_to_do(db, capsys):
    code, _, err = run(capsys, "cabinet", "list")
    assert code == 2 and "no database" in err and "ARCADE_DB" in err


def test_payments_table_json_and_stuck(db, capsys):
    run(capsys, "cabinet", "add", "cab1", "--price", "1.00", "--coins-per-credit", "2")
    with open_ledger(db) as ledger:
        ledger.record_checkout("evt_1", "checkout.session.completed", "cs_test_ok", "credit", cabinet_id="cab1",
                               amount=200, currency="usd", credits=2, pulses=4)
        ledger.record_checkout("evt_2", "checkout.session.completed", "cs_test_bad", "invalid", cabinet_id="cab1",
                               amount=150, currency="usd", reason="amount_mismatch")
    code, out, _ = run(capsys, "payments")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["CREATED", "CABINET", "STATE"]
    assert any("cs_test_bad" in line and "invalid" in line and "amount_mismatch" in line for line in lines)
    assert any("cs_test_ok" in line and "queued" in line and "2.00 USD" in line for line in lines)
    code, out, _ = run(capsys, "payments", "--json", "--limit", "1")
    rows = json.loads(out)
    assert len(rows) == 1 and rows[0]["session_id"] == "cs_test_bad" and "done_at" in rows[0]
    code, out, _ = run(capsys, "payments", "--stuck", "--stuck-after", "0", "--json")
    assert [r["session_id"] for r in json.loads(out)] == ["cs_test_ok"]
    code, out, _ = run(capsys, "payments", "--stuck")
    assert "no stuck credits" in out


def test_every_command_has_help(capsys):
    for name in ("relay", "cabinet", "payments"):
        with pytest.raises(SystemExit) as e:
            cli.main([name, "--help"])
        assert e.value.code == 0
        assert "usage: arcade " + name in capsys.readouterr().out
