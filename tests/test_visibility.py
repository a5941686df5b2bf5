"""Visibility: each payment's states with their times in the ledger and in `arcade payments`, and stuck
deliveries (a warning in the relay's log, `arcade payments --stuck`).

The delivery is driven through the real Dispatcher with `step(ledger)` and a fake clock (no broker):
its paho client is replaced by a recorder, PUBACKs and signed cabinet acks are handed to it as paho
would.
"""
import json
import sqlite3
import time

import pytest

from relay import config, protocol
from relay.dispatcher import Dispatcher
from relay.ledger import open_ledger
from tools import cli


class Recorder:
    class Info:
        def __init__(self, mid):
            self.mid = mid

    def __init__(self):
        self.published = []

    def publish(self, topic, payload, qos=1, retain=False):
        self.published.append((topic, payload))
        return self.Info(len(self.published))


@pytest.fixture
def world(tmp_path, monkeypatch):
    db = str(tmp_path / "arcade.db")
    monkeypatch.setenv("ARCADE_DB", db)
    monkeypatch.delenv("ARCADE_STUCK_AFTER", raising=False)
    monkeypatch.chdir(tmp_path)
    ledger = open_ledger(db)
    secret = ledger.add_cabinet("cab1", price_cents=100, coins_per_credit=2)
    now = [1000.0]
    d = Dispatcher(config.check({"ARCADE_DB": db, "STRIPE_WEBHOOK_SECRET": "x", "ARCADE_ACK_TIMEOUT": 10,
                                 "ARCADE_STUCK_AFTER": 60, "ARCADE_RESCAN": 5}), clock=lambda: now[0])
    d._client, d.ledger_id = Recorder(), ledger.ledger_id
    d._inbox.append(("connected", False))
    yield {"ledger": ledger, "secret": secret, "d": d, "now": now, "db": db}
    ledger.close()


def pay(ledger, sid, credits=1):
    assert ledger.record_checkout("evt_" + sid, "checkout.session.completed", sid, "credit", cabinet_id="cab1",
                                  amount=100 * credits, currency="usd", credits=credits,
                                  pulses=2 * credits) == "queued"


def ack(w, seq, result, reason="", pulses=2, last=None):
    session = [p for p in w["ledger"].list_payments() if p["seq"] == seq][0]["session_id"]
    body = protocol.build_ack("cab1", w["ledger"].ledger_id, seq, session, result, reason, pulses,
                              seq if last is None else last, w["secret"])
    w["d"]._inbox.append(("message", "arcade/cab1/ack", body, False))
    w["d"].step(w["ledger"])


def arcade(capsys, *argv):
    code = cli.main(["payments", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_states_and_their_times_in_the_ledger_and_the_table(world, capsys):
    ledger, d = world["ledger"], world["d"]
    pay(ledger, "cs_test_applied")
    p = ledger.get_payment("cs_test_applied")
    assert (p["state"], p["sent_at"], p["done_at"]) == ("queued", None, None)
    assert p["paid_at"] == p["queued_at"], "money and its credit are recorded in one transaction"
    d.step(ledger)                                  # published
    d._inbox.append(("puback", 1))
    d.step(ledger)
    p = ledger.get_payment("cs_test_applied")
    assert (p["state"], p["attempts"]) == ("sent", 1) and p["sent_at"] >= p["queued_at"]
    ack(world, 1, "applied", pulses=2)
    p = ledger.get_payment("cs_test_applied")
    assert (p["state"], p["ack_pulses"], p["ack_last"]) == ("applied", 2, 1)
    assert p["paid_at"] <= p["queued_at"] <= p["sent_at"] <= p["done_at"]

    code, out, _ = arcade(capsys)
    assert code == 0
    header, row = out.splitlines()[0], [line for line in out.splitlines() if "cs_test_applied" in line][0]
    assert "TIMELINE" in header.split()
    timeline = row[header.index("TIMELINE"):].split("  ")[0]
    assert timeline.startswith("paid %s > sent +" % time.strftime("%H:%M:%S", time.localtime(p["paid_at"])))
    assert timeline.split(" > ")[-1].startswith("applied +")
    assert [s.split()[0] for s in timeline.split(" > ")] == ["paid", "sent", "applied"]

    code, out, _ = arcade(capsys, "--json")
    (row,) = json.loads(out)
    assert [s for s, _ in row["timeline"]] == ["paid", "queued", "sent", "applied"]
    assert [t for _, t in row["timeline"]] == [p["paid_at"], p["queued_at"], p["sent_at"], p["done_at"]]


@pytest.mark.parametrize("result, reason", [("duplicate", ""), ("rejected", "bad_pulses")])
def test_duplicate_and_rejected_end_the_timeline(world, capsys, result, reason):
    ledger, d = world["ledger"], world["d"]
    pay(ledger, "cs_test_x")
    d.step(ledger)
    ack(world, 1, result, reason, pulses=0, last=0)
    code, out, _ = arcade(capsys, "--session", "cs_test_x", "--json")
    (row,) = json.loads(out)
    assert (row["state"], row["reason"]) == (result, reason)
    assert [s for s, _ in row["timeline"]] == ["paid", "queued", result]   # no PUBACK was seen
    code, out, _ = arcade(capsys, "--session", "cs_test_x")
    assert code == 0 and " > %s +" % result in out and (reason or "-") in out


def test_no_credit_states_show_when_they_were_recorded(world, capsys):
    ledger = world["ledger"]
    ledger.record_checkout("evt_a", "checkout.session.completed", "cs_test_pending", "pending", cabinet_id="cab1",
                           amount=100, currency="usd", reason="awaiting_payment")
    ledger.record_checkout("evt_b", "checkout.session.completed", "cs_test_invalid", "invalid", cabinet_id="cab1",
                           amount=150, currency="usd", reason="amount_mismatch")
    code, out, _ = arcade(capsys, "--json")
    by_id = {r["session_id"]: [s for s, _ in r["timeline"]] for r in json.loads(out)}
    assert by_id == {"cs_test_pending": ["pending"], "cs_test_invalid": ["recorded", "invalid"]}


def test_unknown_session_is_a_clear_answer(world, capsys):
    code, out, err = arcade(capsys, "--session", "cs_test_nope")
    assert code == 1 and "no payment for session 'cs_test_nope'" in err and "arcade reconcile" in err


def test_stuck_delivery_is_warned_once_and_listed(world, capsys, caplog):
    ledger, d, now = world["ledger"], world["d"], world["now"]
    pay(ledger, "cs_test_stuck")
    d.step(ledger)
    with caplog.at_level("WARNING", logger="arcade.dispatcher"):
        now[0] += 59
        d.step(ledger)
        assert not [r for r in caplog.records if "stuck" in r.getMessage()]
        for _ in range(5):                           # past the threshold, several rounds
            now[0] += 10
            d.step(ledger)
    stuck = [r for r in caplog.records if "stuck" in r.getMessage()]
    assert len(stuck) == 1 and stuck[0].levelname == "WARNING"
    assert "cs_test_stuck" in stuck[0].getMessage() and "cab1" in stuck[0].getMessage()

    # the ledger's view: 125 s without an ack (the payment's queue time moved back, as if time had passed)
    db = sqlite3.connect(world["db"])
    db.execute("UPDATE payments SET queued_at = queued_at - 125, paid_at = paid_at - 125, "
               "created_at = created_at - 125")
    db.commit()
    db.close()
    code, out, _ = arcade(capsys, "--stuck")
    lines = out.splitlines()
    assert code == 0 and lines[0].split()[:4] == ["WAITING", "CABINET", "ONLINE", "LAST"]
    row = [line for line in lines if "cs_test_stuck" in line][0].split()
    assert row[:3] == ["2m05s", "cab1", "no"] and "queued" in row
    assert "1 credit(s) unacknowledged for more than 60 s" in lines[-1]
    code, out, _ = arcade(capsys, "--stuck", "--json")
    (row,) = json.loads(out)
    assert row["session_id"] == "cs_test_stuck" and row["cabinet_online"] is False
    assert row["waiting_s"] == pytest.approx(125, abs=5)
    code, out, _ = arcade(capsys, "--stuck", "--stuck-after", "600")
    assert "no stuck credits" in out

    # the cabinet comes back and acks: no longer stuck
    ack(world, 1, "applied")
    code, out, _ = arcade(capsys, "--stuck", "--json")
    assert json.loads(out) == []
