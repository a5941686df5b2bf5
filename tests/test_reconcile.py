"""Reconciliation with Stripe, through the real stripe-python client against tools/lab/fake_stripe on loopback.

Sessions are put into the fake as Stripe would hold them (paid with no webhook sent: "the webhook
never came"); each test checks what the ledger holds afterwards and what requests reached "Stripe".
"""
import json
import time

import pytest

from relay import reconcile
from relay.ledger import open_ledger
from tools import cli
from tools.lab.fake_stripe import FakeStripe
from tools.lab.stack import Relay, wait_until

KEY = "sk_test_reconcile"


@pytest.fixture
def fake():
    with FakeStripe(api_key=KEY) as f:
        yield f


@pytest.fixture
def ledger(tmp_path):
    with open_ledger(str(tmp_path / "arcade.db")) as led:
        led.add_cabinet("cab1", price_cents=100, bundles=[(3, 250)], coins_per_credit=2)
        led.add_cabinet("cab2", price_cents=50)
        yield led


def paid_session(fake, cab="cab1", amount=100, created=None, currency="usd"):
    """A session paid at Stripe whose webhook never reached the relay (the fake has no webhook_url)."""
    s = fake.add_session(created=created if created is not None else int(time.time()), amount=amount,
                         currency=currency, metadata={"cabinet_id": cab}, client_reference_id=cab)
    fake.pay(s["id"])
    return s["id"]


def run(ledger, fake, since=None, **kw):
    since = time.time() - 3600 if since is None else since
    return reconcile.reconcile(ledger, fake.client(), since, **kw)


def kinds(report):
    return sorted((f["kind"], f["session_id"]) for f in report["findings"])


def lists(fake):
    return [r for r in fake.api_requests("GET") if r.path == "/v1/checkout/sessions"]


# --- the webhook never came: fulfilled through the webhook's own path ---------------------------------

def test_missing_paid_sessions_are_fulfilled_through_every_page(ledger, fake):
    ids = [paid_session(fake, amount=250 if i % 2 else 100) for i in range(5)]
    since = int(time.time()) - 600
    report = run(ledger, fake, since=since, page_size=2)
    # every page was read: 5 sessions at 2 a page is 3 requests, each after the last id of the one before
    reqs = lists(fake)
    assert len(reqs) == 3
    assert all(r.query["created[gte]"] == str(since) and r.query["status"] == "complete" and r.query["limit"] == "2"
               for r in reqs)
    assert "starting_after" not in reqs[0].query
    assert reqs[1].query["starting_after"] != reqs[2].query["starting_after"]
    assert all(r.api_key == KEY for r in reqs)
    assert report["stripe_sessions"] == report["stripe_paid"] == 5 and report["fulfilled"] == 5
    assert kinds(report) == sorted(("fulfilled", sid) for sid in ids) and report["attention"] == 0
    for sid in ids:
        p = ledger.get_payment(sid)
        amount = fake.sessions[sid]["amount_total"]
        assert (p["state"], p["cabinet_id"], p["amount"]) == ("queued", "cab1", amount)
        assert (p["credits"], p["pulses"]) == ((3, 6) if amount == 250 else (1, 2)), "credits from the price table"
    assert sorted(ledger.get_payment(sid)["seq"] for sid in ids) == [1, 2, 3, 4, 5]
    # a second run finds nothing to do: the books balance
    again = run(ledger, fake, since=since)
    assert again["fulfilled"] == 0 and again["findings"] == [] and again["checked_in_ledger"] == 5
    assert ledger.get_cabinet("cab1")["next_seq"] == 6


def test_default_page_is_stripes_maximum(ledger, fake):
    run(ledger, fake)
    assert [r.query["limit"] for r in lists(fake)] == ["100"]


def test_the_webhook_arriving_after_reconciliation_credits_nothing_more(ledger, fake):
    from relay import webhook
    sid = paid_session(fake)
    run(ledger, fake)
    late = json.loads(json.dumps(fake.sessions[sid]))
    result, _ = webhook.fulfil(ledger, "evt_late", "checkout.session.completed", late)
    assert result == "duplicate_session"
    assert ledger.get_cabinet("cab1")["next_seq"] == 2


def test_fulfilment_validates_like_the_webhook(ledger, fake):
    unknown = paid_session(fake, cab="nosuch")
    wrong = paid_session(fake, amount=175)
    report = run(ledger, fake)
    assert kinds(report) == sorted([("not_delivered", unknown), ("not_delivered", wrong)])
    assert (ledger.get_payment(unknown)["state"], ledger.get_payment(unknown)["reason"]) == \
        ("invalid", "unknown_cabinet")
    assert (ledger.get_payment(wrong)["state"], ledger.get_payment(wrong)["reason"]) == ("invalid", "amount_mismatch")
    assert report["attention"] == 2 and ledger.get_cabinet("cab1")["next_seq"] == 1


def test_pending_async_payment_that_settled_is_fulfilled(ledger, fake):
    from relay import webhook
    s = fake.add_session(metadata={"cabinet_id": "cab2"})
    processing = fake.update_session(s["id"], status="complete", payment_status="unpaid")
    assert webhook.fulfil(ledger, "evt_1", "checkout.session.completed", processing)[0] == "pending"
    # still processing at Stripe: nothing to do yet
    report = run(ledger, fake)
    assert report["findings"] == [] and ledger.get_payment(s["id"])["state"] == "pending"
    # async_payment_succeeded never reached the relay
    fake.update_session(s["id"], payment_status="paid")
    report = run(ledger, fake)
    assert kinds(report) == [("fulfilled", s["id"])]
    p = ledger.get_payment(s["id"])
    assert (p["state"], p["credits"], p["pulses"], p["seq"]) == ("queued", 2, 2, 1)


def test_session_older_than_the_ledger_is_reported_not_fulfilled(ledger, fake):
    old = paid_session(fake, created=int(ledger.created_at) - 3600)
    report = run(ledger, fake, since=ledger.created_at - 7200)
    assert kinds(report) == [("before_ledger", old)] and report["attention"] == 1
    assert ledger.get_payment(old) is None and ledger.get_cabinet("cab1")["next_seq"] == 1


def test_dry_run_changes_nothing(ledger, fake):
    sid = paid_session(fake)
    report = run(ledger, fake, fulfil=False)
    assert kinds(report) == [("fulfilled", sid)] and "dry run" in report["findings"][0]["action"]
    assert ledger.get_payment(sid) is None


def test_fulfilment_wakes_the_dispatcher(ledger, fake):
    paid_session(fake)
    woken = []
    run(ledger, fake, on_queued=lambda: woken.append(1))
    assert woken == [1]


# --- what is reported -------------------------------------------------------------------------------

def record(ledger, sid, cab="cab1", amount=100, credits=1, pulses=2, outcome="credit", reason=""):
    return ledger.record_checkout("evt_" + sid, "checkout.session.completed", sid, outcome, cabinet_id=cab,
                                  amount=amount, currency="usd", credits=credits, pulses=pulses, reason=reason)


def test_stuck_credit_is_not_delivered(ledger, fake):
    sid = paid_session(fake)
    record(ledger, sid)
    assert run(ledger, fake, stuck_after=60)["findings"] == []
    report = run(ledger, fake, now=time.time() + 120, stuck_after=60)
    (f,) = report["findings"]
    assert (f["kind"], f["session_id"], f["ledger_state"], f["cabinet_id"]) == ("not_delivered", sid, "queued", "cab1")
    assert "stuck" in f["detail"]


def test_paid_but_rejected_is_not_delivered(ledger, fake):
    sid = paid_session(fake)
    record(ledger, sid)
    ledger.record_ack(sid, 1, "rejected", "bad_signature", 0, 0)
    (f,) = run(ledger, fake)["findings"]
    assert (f["kind"], f["ledger_state"]) == ("not_delivered", "rejected") and "bad_signature" in f["detail"]


def test_delivered_but_unknown_to_stripe(ledger, fake):
    applied = "cs_test_" + "a" * 40                     # e.g. an `arcade trigger` test event
    record(ledger, applied)
    ledger.record_ack(applied, 1, "applied", "", 2, 1)
    opened = fake.add_session(metadata={"cabinet_id": "cab1"})["id"]   # open, never paid
    record(ledger, opened)
    report = run(ledger, fake)
    assert kinds(report) == sorted([("unknown_to_stripe", applied), ("unknown_to_stripe", opened)])
    by_id = {f["session_id"]: f for f in report["findings"]}
    assert by_id[applied]["stripe_status"] == "missing" and "no such session" in by_id[applied]["detail"]
    assert by_id[opened]["stripe_status"] == "open/unpaid"
    # each was looked up by id, since the complete-session list did not have it
    got = sorted(r.path.rsplit("/", 1)[1] for r in fake.api_requests("GET") if r.path != "/v1/checkout/sessions")
    assert got == sorted([applied, opened])


def test_amounts_that_differ(ledger, fake):
    listed = paid_session(fake, amount=250)
    record(ledger, listed, amount=100)
    older = paid_session(fake, amount=100, created=int(time.time()) - 7200)   # outside the list's window
    record(ledger, older, amount=100, credits=1, pulses=2)
    with ledger._write() as cur:   # the ledger's copy altered behind its back
        cur.execute("UPDATE payments SET currency = 'eur' WHERE session_id = ?", (older,))
    report = run(ledger, fake)
    assert kinds(report) == sorted([("amount_differs", listed), ("amount_differs", older)])
    f = {f["session_id"]: f for f in report["findings"]}
    assert (f[listed]["stripe_amount"], f[listed]["ledger_amount"]) == (250, 100)
    assert "EUR" in f[older]["detail"] and "USD" in f[older]["detail"]


# --- arcade reconcile ---------------------------------------------------------------------------------

@pytest.fixture
def env(ledger, fake, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)   # no stray .env
    monkeypatch.setenv("ARCADE_DB", ledger.path)
    monkeypatch.setenv("STRIPE_API_KEY", KEY)
    monkeypatch.setenv("STRIPE_API_BASE", fake.url)
    return monkeypatch


def arcade(capsys, *argv):
    code = cli.main(["reconcile", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_table_and_json(env, ledger, fake, capsys):
    fulfilled = paid_session(fake)
    unknown = paid_session(fake, cab="nosuch")
    code, out, err = arcade(capsys, "--since", "2h")
    assert code == 1, err    # an invalid payment needs the operator
    lines = out.splitlines()
    assert "2 complete session(s)" in lines[0] and "1 fulfilled" in lines[0] and "1 not_delivered" in lines[0]
    assert lines[2].split() == ["KIND", "SESSION", "CABINET", "STRIPE", "LEDGER", "STATE", "DETAIL"]
    row = [line for line in lines if fulfilled in line][0].split()
    assert row[:6] == ["fulfilled", fulfilled, "cab1", "1.00", "USD", "1.00"] and "queued" in row
    assert any(unknown in line and "invalid" in line and "unknown_cabinet" in line for line in lines)
    assert ledger.get_payment(fulfilled)["state"] == "queued"
    # JSON: the same report, machine-readable; a second run has nothing left to fulfil
    code, out, _ = arcade(capsys, "--json")
    report = json.loads(out)
    assert code == 1 and report["fulfilled"] == 0 and report["ledger_id"] == ledger.ledger_id
    assert [(f["kind"], f["session_id"], f["ledger_state"]) for f in report["findings"]] == \
        [("not_delivered", unknown, "invalid")]
    assert int(lists(fake)[-1].query["created[gte]"]) == pytest.approx(time.time() - 72 * 3600, abs=60)


def test_cli_exit_0_when_the_books_balance(env, capsys):
    code, out, _ = arcade(capsys, "--since", "30m")
    assert code == 0 and "the books balance" in out


@pytest.mark.parametrize("argv, setenv, shown", [
    (["--since", "yesterday"], {}, "'yesterday' is not a duration"),
    (["--since", "0h"], {}, "longer than 0"),
    ([], {"STRIPE_API_KEY": ""}, "STRIPE_API_KEY is not set"),
    ([], {"STRIPE_API_KEY": "sk_test_wrong"}, "refused the API key"),
    ([], {"STRIPE_API_BASE": "http://127.0.0.1:9"}, "Stripe did not answer"),
    ([], {"ARCADE_DB": "/nonexistent/arcade.db"}, "no database at /nonexistent/arcade.db"),
], ids=["bad since", "zero since", "no key", "wrong key", "Stripe unreachable", "no database"])
def test_cli_errors_are_clear_and_change_nothing(env, ledger, fake, capsys, argv, setenv, shown):
    sid = paid_session(fake)
    for k, v in setenv.items():
        env.setenv(k, v)
    if argv and argv[0] == "--since":
        with pytest.raises(SystemExit) as e:
            cli.main(["reconcile", *argv])
        code, (out, err) = e.value.code, capsys.readouterr()
    else:
        code, out, err = arcade(capsys, *argv)
    assert code == 2 and shown in err and "Traceback" not in err
    assert KEY not in err and "sk_test_wrong" not in err
    assert ledger.get_payment(sid) is None


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["reconcile", "--help"])
    assert e.value.code == 0 and "usage: arcade reconcile" in capsys.readouterr().out


# --- the periodic job -------------------------------------------------------------------------------

def test_settings_parse_and_refuse():
    assert reconcile.settings({"STRIPE_API_KEY": "sk", "ARCADE_RECONCILE_EVERY": "90s",
                               "ARCADE_RECONCILE_WINDOW": "3d"}) == (90.0, 3 * 86400.0)
    assert reconcile.settings({"STRIPE_API_KEY": None, "ARCADE_RECONCILE_EVERY": "90s"})[0] == 0
    assert reconcile.settings({"STRIPE_API_KEY": "sk", "ARCADE_RECONCILE_EVERY": "0"})[0] == 0
    assert reconcile.settings({"STRIPE_API_KEY": "sk"}) == (900.0, 72 * 3600.0)
    from relay.config import ConfigError
    with pytest.raises(ConfigError, match="ARCADE_RECONCILE_EVERY: 'often' is not a duration"):
        reconcile.settings({"STRIPE_API_KEY": "sk", "ARCADE_RECONCILE_EVERY": "often"})
    with pytest.raises(ConfigError, match="ARCADE_RECONCILE_WINDOW"):
        reconcile.settings({"STRIPE_API_KEY": "sk", "ARCADE_RECONCILE_WINDOW": "0"})


def test_periodic_job_logs_and_survives_stripe_being_down(ledger, fake, caplog):
    import threading
    sid = paid_session(fake)
    wake = threading.Event()
    cfg = {"ARCADE_DB": ledger.path, "STRIPE_API_KEY": KEY, "STRIPE_API_BASE": "http://127.0.0.1:9",
           "ARCADE_STUCK_AFTER": 60}
    job = reconcile.Periodic(cfg, every=3600, window=3600, wake=wake)
    with caplog.at_level("INFO", logger="arcade.reconcile"):
        assert job.run_once() is None and job.last_error.startswith("Stripe")
        assert any(r.levelname == "ERROR" and "cannot list sessions" in r.getMessage() for r in caplog.records)
        job.client = fake.client(KEY)
        report = job.run_once()
    assert report["fulfilled"] == 1 and wake.is_set() and ledger.get_payment(sid)["state"] == "queued"
    assert any(sid in r.getMessage() and "fulfilled" in r.getMessage() for r in caplog.records)
    assert not any(KEY in r.getMessage() for r in caplog.records)


def test_relay_process_reconciles_periodically(tmp_path, ledger, fake, broker):
    sid = paid_session(fake)
    relay = Relay(tmp_path, ledger.path, broker.url, "whsec_x",
                  extra_env={"STRIPE_API_KEY": KEY, "STRIPE_API_BASE": fake.url, "ARCADE_RECONCILE_EVERY": "1s"})
    relay.start()
    try:
        wait_until(lambda: (ledger.get_payment(sid) or {}).get("state") in ("queued", "sent"), 20,
                   what="the missed payment fulfilled by the relay's periodic job")
        second = paid_session(fake)   # a later missed webhook is caught by a later run
        wait_until(lambda: ledger.get_payment(second) is not None, 20, what="the second run")
    finally:
        relay.stop()
    log = relay.log_path.read_text()
    assert "reconciliation with Stripe every 1 s over the last 72.0 h" in log
    assert "reconciliation: fulfilled %s" % sid in log
    assert KEY not in log
    assert len(lists(fake)) >= 2


def test_relay_without_api_key_says_reconciliation_is_off(tmp_path, ledger, broker):
    relay = Relay(tmp_path, ledger.path, broker.url, "whsec_x", extra_env={"STRIPE_API_KEY": ""})
    relay.start()
    try:
        wait_until(lambda: "reconciliation with Stripe is off" in relay.log_path.read_text(), 20,
                   what="the log line")
    finally:
        relay.stop()
    assert "no STRIPE_API_KEY" in relay.log_path.read_text()


def test_relay_refuses_a_bad_interval(tmp_path, ledger):
    import subprocess
    import sys
    from tools.lab.stack import ROOT, _env
    r = subprocess.run([sys.executable, "-m", "tools.cli", "relay", "--port", "0"], cwd=str(ROOT),
                       env=_env({"ARCADE_DB": ledger.path, "STRIPE_WEBHOOK_SECRET": "whsec_x",
                                 "ARCADE_RECONCILE_EVERY": "sometimes"}),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "ARCADE_RECONCILE_EVERY: 'sometimes' is not a duration" in r.stderr
