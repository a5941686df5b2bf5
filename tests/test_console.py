"""The console's doors (issue 13): nothing without a session, CSRF on every form, throttled sign-in,
cookie flags, sessions that end with the password, validated forms that change nothing when wrong,
and the audit log. The attacks are made, not only the happy path."""
import functools
import io
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from relay import create_app as create_relay_app
from relay.console import auth, create_app
from relay.ledger import open_ledger

ROOT = Path(__file__).resolve().parents[1]
BASE = "https://localhost"
PASSWORD = "correct horse battery"


@functools.lru_cache(maxsize=None)
def hashed(password):
    return auth.hash_password(password)     # argon2 at production cost: made once per password per run


def make_app(tmp_path):
    db = str(tmp_path / "arcade.db")
    with open_ledger(db) as led:
        led.add_cabinet("cab1", name="Galaga", price_cents=100, bundles=[(3, 250)], coins_per_credit=2)
        led.add_operator("alice", hashed(PASSWORD))
        led.add_operator("bob", hashed(PASSWORD + " bob"))
        led.record_checkout("evt_1", "checkout.session.completed", "cs_test_secretsession", "credit",
                            cabinet_id="cab1", amount=250, currency="usd", credits=3, pulses=6)
    return create_app({"ARCADE_DB": db})


@pytest.fixture
def app(tmp_path):
    return make_app(tmp_path)


@pytest.fixture(scope="module")
def form_world(tmp_path_factory):
    """One signed-in console for the bad-input table: every row must change nothing, so they can share it."""
    app = make_app(tmp_path_factory.mktemp("forms"))
    client = app.test_client()
    assert sign_in(client).status_code == 303
    with open_ledger(app.config["ARCADE_DB"]) as led:
        yield client, led


def token(client, path="/admin/login"):
    r = client.get(BASE + path)
    m = re.search(r'name="csrf_token" value="([^"]+)"', r.get_data(as_text=True))
    assert m, "no CSRF token on %s (status %d)" % (path, r.status_code)
    return m.group(1)


def post(client, path, data, referer=True):
    headers = {"Referer": BASE + path} if referer else {}
    return client.post(BASE + path, data=data, headers=headers)


def sign_in(client, name="alice", password=PASSWORD, environ=None):
    data = {"name": name, "password": password, "csrf_token": token(client)}
    return client.post(BASE + "/admin/login", data=data, headers={"Referer": BASE + "/admin/login"},
                       environ_base=environ or {})


@pytest.fixture
def signed_in(client):
    r = sign_in(client)
    assert r.status_code == 303, r.get_data(as_text=True)
    return client


PAGES = ["/admin/", "/admin/payments", "/admin/payments?format=csv", "/admin/payments/cs_test_secretsession",
         "/admin/takings", "/admin/cabinets", "/admin/cabinets/cab1", "/admin/audit"]
ACTIONS = [("/admin/cabinets/cab1", {"name": "Pwned", "price": "0.01", "bundles": "", "coins_per_credit": "1",
                                     "pulse_ms": "0", "gap_ms": "0", "enabled": "yes"}),
           ("/admin/cabinets/cab1/test-pulse", {"pulses": "10"}),
           ("/admin/payments/cs_test_secretsession/refund", {"confirm_after_play": "yes"}),
           ("/admin/logout", {})]


@pytest.mark.parametrize("path", PAGES)
def test_every_page_without_a_session_redirects_to_sign_in_and_shows_no_data(client, path):
    r = client.get(BASE + path)
    assert r.status_code == 302 and r.headers["Location"].startswith("/admin/login")
    body = r.get_data(as_text=True).replace(path.split("?")[0], "")    # the redirect echoes what was asked
    for data in ("secretsession", "Galaga", "2.50", "queued", "session_id"):
        assert data not in body


@pytest.mark.parametrize("path, data", ACTIONS)
def test_every_action_without_a_session_changes_nothing(client, ledger, path, data):
    tok = token(client)                       # even with a valid CSRF token of an anonymous session
    r = post(client, path, dict(data, csrf_token=tok))
    assert r.status_code == 302 and r.headers["Location"].startswith("/admin/login")
    cab = ledger.get_cabinet("cab1")
    assert (cab["name"], cab["price_cents"]) == ("Galaga", 100)
    assert ledger.get_refund("cs_test_secretsession") is None
    assert ledger.cabinet_config("cab1")["test_n"] == 0


def test_sign_in_sets_a_strict_secure_httponly_cookie_and_is_audited(client, ledger):
    r = sign_in(client)
    assert r.status_code == 303 and r.headers["Location"] == "/admin/"
    cookie = [c for c in r.headers.getlist("Set-Cookie") if c.startswith("arcade_console=")][0]
    for flag in ("Secure", "HttpOnly", "SameSite=Strict", "Path=/admin"):
        assert flag in cookie
    assert client.get(BASE + "/admin/").status_code == 200
    assert ledger.list_audit()[0]["action"] == "login" and ledger.list_audit()[0]["who"] == "alice"


@pytest.mark.parametrize("name, password", [("alice", "wrong password!"), ("mallory", PASSWORD), ("", ""),
                                            ("alice", "x" * 5000), ("ALICE' OR 1=1 --", PASSWORD)])
def test_wrong_credentials_give_nothing(client, name, password):
    r = sign_in(client, name, password)
    assert r.status_code in (400, 401)
    assert client.get(BASE + "/admin/").status_code == 302


def test_sign_in_without_csrf_token_is_refused(client):
    r = client.post(BASE + "/admin/login", data={"name": "alice", "password": PASSWORD},
                    headers={"Referer": BASE + "/admin/login"})
    assert r.status_code == 400 and "Form expired" in r.get_data(as_text=True)
    assert client.get(BASE + "/admin/").status_code == 302


def test_login_attempts_are_throttled_even_for_the_right_password(client, ledger):
    for _ in range(5):
        assert sign_in(client, "alice", "not the password").status_code == 401
    r = sign_in(client)                                   # right password, but past the limit
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert client.get(BASE + "/admin/").status_code == 302
    # the name is throttled from another address too (a botnet guessing one account)
    assert sign_in(client, environ={"REMOTE_ADDR": "10.9.9.9"}).status_code == 429
    # another operator from another address is not locked out by it
    assert sign_in(client, "bob", PASSWORD + " bob", environ={"REMOTE_ADDR": "10.9.9.8"}).status_code == 303
    assert sum(1 for a in ledger.list_audit() if a["action"] == "login.failed") == 5


def test_throttle_memory_is_bounded():
    t = auth.Throttle(limit=2, window=60, max_keys=100)
    for i in range(1000):
        t.fail("ip:%d" % i)
    assert len(t._fails) == 100


@pytest.mark.parametrize("tamper", ["missing", "other session", "garbage"])
def test_forms_need_this_sessions_csrf_token(app, signed_in, ledger, tamper):
    form = {"name": "Pwned", "price": "0.01", "bundles": "", "coins_per_credit": "1", "pulse_ms": "0",
            "gap_ms": "0", "enabled": "yes"}
    if tamper == "other session":
        other = app.test_client()
        assert sign_in(other, "bob", PASSWORD + " bob").status_code == 303
        form["csrf_token"] = token(other, "/admin/cabinets/cab1")
    elif tamper == "garbage":
        form["csrf_token"] = "IjAwMDAi.aaaa.bbbb"
    r = post(signed_in, "/admin/cabinets/cab1", form)
    assert r.status_code == 400
    cab = ledger.get_cabinet("cab1")
    assert (cab["name"], cab["price_cents"]) == ("Galaga", 100)


def test_a_cross_site_post_without_referer_is_refused_over_https(signed_in, ledger):
    form = {"name": "Pwned", "price": "0.01", "bundles": "", "coins_per_credit": "1", "pulse_ms": "0",
            "gap_ms": "0", "enabled": "yes", "csrf_token": token(signed_in, "/admin/cabinets/cab1")}
    r = signed_in.post(BASE + "/admin/cabinets/cab1", data=form, headers={"Referer": "https://evil.example/x"})
    assert r.status_code == 400 and ledger.get_cabinet("cab1")["name"] == "Galaga"


def test_a_forged_cookie_signed_with_another_key_is_no_session(app, client):
    from flask.sessions import SecureCookieSessionInterface
    other = create_app({"ARCADE_DB": app.config["ARCADE_DB"], "ARCADE_SECRET_KEY": "k" * 40})
    forged = SecureCookieSessionInterface().get_signing_serializer(other).dumps({"op": "alice", "at": 9e12})
    client.set_cookie("arcade_console", forged, domain="localhost", path="/admin", secure=True)
    assert client.get(BASE + "/admin/").status_code == 302


def test_a_new_password_or_removal_ends_every_session(app, signed_in, ledger):
    assert signed_in.get(BASE + "/admin/").status_code == 200
    ledger.set_operator_hash("alice", auth.hash_password("another long password"))
    assert signed_in.get(BASE + "/admin/").status_code == 302
    assert sign_in(signed_in, "alice", "another long password").status_code == 303
    ledger.remove_operator("alice")
    assert signed_in.get(BASE + "/admin/").status_code == 302


@pytest.mark.parametrize("target, lands", [("/admin/payments", "/admin/payments"), ("//evil.example/x", "/admin/"),
                                           ("https://evil.example/admin", "/admin/"), ("/\\evil.example", "/admin/"),
                                           ("/pay/cab1", "/admin/")])
def test_sign_in_goes_back_only_to_a_console_page(client, target, lands):
    data = {"name": "alice", "password": PASSWORD, "csrf_token": token(client)}
    r = client.post(BASE + "/admin/login?next=" + target, data=data, headers={"Referer": BASE + "/admin/login"})
    assert r.status_code == 303 and r.headers["Location"] == lands


def test_the_session_key_file_is_private_and_reused(app):
    path = app.config["ARCADE_DB"] + ".console-key"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = create_app({"ARCADE_DB": app.config["ARCADE_DB"]})
    assert again.secret_key == app.secret_key
    os.chmod(path, 0o644)
    from relay.config import ConfigError
    with pytest.raises(ConfigError, match="chmod 600"):
        create_app({"ARCADE_DB": app.config["ARCADE_DB"]})


def test_the_public_relay_has_no_console_unless_enabled(tmp_path):
    db = str(tmp_path / "r.db")
    relay = create_relay_app({"ARCADE_DB": db, "STRIPE_WEBHOOK_SECRET": "whsec_x"})
    assert relay.test_client().get(BASE + "/admin/").status_code == 404
    assert not os.path.exists(db + ".console-key")
    both = create_relay_app({"ARCADE_DB": db, "STRIPE_WEBHOOK_SECRET": "whsec_x", "ARCADE_CONSOLE": "1"})
    c = both.test_client()
    assert c.get(BASE + "/admin/").status_code == 302
    # the console's CSRF check does not touch the relay's own POST endpoints
    assert c.post("/stripe/webhook", data=b"{}").status_code == 400    # refused for its missing signature only


# -- forms: bad input, one row per way to be wrong: clear message, nothing changed ---------------

GOOD = {"name": "Galaga", "price": "1.00", "bundles": "3:2.50", "coins_per_credit": "2", "pulse_ms": "0",
        "gap_ms": "0", "enabled": "yes"}


@pytest.mark.parametrize("field, value, message", [
    ("name", "", "Name must be"),
    ("name", "x" * 65, "Name must be"),
    ("price", "abc", "not an amount"),
    ("price", "-1", "not an amount"),
    ("price", "0", "more than zero"),
    ("price", "99999", "typo"),
    ("price", "1.005", "not an amount"),
    ("bundles", "3-2.50", "CREDITS:PRICE"),
    ("bundles", "3:2.50 3:2.00", "repeat"),
    ("bundles", "51:2.50", "larger than 50"),
    ("bundles", "1:1 2:2 3:3 4:4 5:5 6:6 7:7", "at most 6"),
    ("coins_per_credit", "0", "from 1 to 255"),
    ("coins_per_credit", "256", "from 1 to 255"),
    ("coins_per_credit", "200", "coin pulses"),             # 3 credits x 200 coins > 255 pulses in a message
    ("pulse_ms", "10001", "from 0 to 10000"),
    ("gap_ms", "-5", "from 0 to 10000"),
    ("gap_ms", "1e3", "from 0 to 10000"),
])
def test_cabinet_form_bad_input_changes_nothing(form_world, field, value, message):
    signed_in, ledger = form_world
    before = (ledger.get_cabinet("cab1"), ledger.cabinet_config("cab1"))
    form = dict(GOOD, **{field: value}, csrf_token=token(signed_in, "/admin/cabinets/cab1"))
    r = post(signed_in, "/admin/cabinets/cab1", form)
    body = r.get_data(as_text=True)
    assert r.status_code == 400 and message in body and "Nothing was changed" in body
    assert (ledger.get_cabinet("cab1"), ledger.cabinet_config("cab1")) == before
    assert not [a for a in ledger.list_audit() if a["action"] == "cabinet.set"]


def test_cabinet_form_saves_and_audits(signed_in, ledger):
    form = dict(GOOD, name="Galaga Deluxe", price="1.25", bundles="3:3.00 5:4.50", pulse_ms="80", gap_ms="200",
                csrf_token=token(signed_in, "/admin/cabinets/cab1"))
    form.pop("enabled")                                     # unticked: disable
    r = post(signed_in, "/admin/cabinets/cab1", form)
    assert r.status_code == 303
    cab, cfg = ledger.get_cabinet("cab1"), ledger.cabinet_config("cab1")
    assert (cab["name"], cab["price_cents"], cab["bundles"], cab["enabled"]) == ("Galaga Deluxe", 125,
                                                                                [(3, 300), (5, 450)], False)
    assert (cfg["pulse_ms"], cfg["gap_ms"], cfg["ver"] > cfg["published_ver"]) == (80, 200, True)
    [entry] = [a for a in ledger.list_audit() if a["action"] == "cabinet.set"]
    assert entry["who"] == "alice" and entry["subject"] == "cab1" and "disabled" in entry["detail"]
    page = signed_in.get(BASE + "/admin/audit").get_data(as_text=True)
    assert "cabinet.set" in page and "alice" in page


def test_an_offline_cabinet_gets_no_test_pulse(signed_in, ledger):
    r = post(signed_in, "/admin/cabinets/cab1/test-pulse", {"pulses": "1",
                                                            "csrf_token": token(signed_in, "/admin/cabinets/cab1")})
    assert r.status_code == 303
    assert "offline" in signed_in.get(BASE + "/admin/cabinets/cab1").get_data(as_text=True)
    assert ledger.cabinet_config("cab1")["test_n"] == 0


def test_payments_search_and_csv(signed_in):
    body = signed_in.get(BASE + "/admin/payments?cabinet=cab1&state=queued").get_data(as_text=True)
    assert "cs_test_secretsession"[:20] in body
    assert "cs_test_secret" not in signed_in.get(BASE + "/admin/payments?state=applied").get_data(as_text=True)
    bad = signed_in.get(BASE + "/admin/payments?state=nope&date=yesterday")
    assert bad.status_code == 400 and "not one of" in bad.get_data(as_text=True) and "not a day" in \
        bad.get_data(as_text=True)
    csv_text = signed_in.get(BASE + "/admin/payments?format=csv&cabinet=cab1").get_data(as_text=True)
    assert csv_text.splitlines()[0].startswith("session_id,cabinet_id,state")
    assert "cs_test_secretsession,cab1,queued" in csv_text


# -- arcade admin: the password never on the command line ----------------------------------------

def arcade(args, db, stdin):
    env = dict(os.environ, ARCADE_DB=db)
    return subprocess.run([sys.executable, "-m", "tools.cli"] + args, input=stdin, capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=60)


def test_arcade_admin_add_reads_the_password_from_stdin(tmp_path):
    db = str(tmp_path / "a.db")
    r = arcade(["admin", "add", "carol"], db, "a long enough password\n")     # a real process, a real pipe
    assert r.returncode == 0, r.stderr
    with open_ledger(db) as led:
        op = led.get_operator("carol")
        assert op["pw_hash"].startswith("$argon2id$") and "a long enough" not in op["pw_hash"]
        assert auth.check_password(op["pw_hash"], "a long enough password")


@pytest.mark.parametrize("argv, stdin, message", [
    (["add", "dave"], "short\n", "at least 10"),
    (["add", "carol"], "a long enough password\n", "already exists"),
    (["add", "Bad Name!"], "a long enough password\n", "not valid"),
    (["passwd", "nobody"], "a long enough password\n", "no operator"),
    (["remove", "nobody"], "", "no operator"),
])
def test_arcade_admin_refuses_with_a_reason(tmp_path, monkeypatch, capsys, argv, stdin, message):
    from tools.commands import admin
    db = str(tmp_path / "a.db")
    with open_ledger(db) as led:
        led.add_operator("carol", hashed(PASSWORD))
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert admin.main(["--db", db] + argv) == 2
    assert message in capsys.readouterr().err
    with open_ledger(db) as led:
        assert [o["name"] for o in led.list_operators()] == ["carol"]
        assert led.get_operator("carol")["pw_hash"] == hashed(PASSWORD)


def test_arcade_admin_has_no_password_option():
    from tools.commands import admin
    with pytest.raises(SystemExit):
        admin.main(["add", "carol", "--password", "x"])


def test_a_test_pulse_reaches_an_online_cabinet_signed(tmp_path, broker):
    """Through a real mosquitto to a paho client playing the cabinet, which checks the message with the
    firmware's own code (tests/test_cabinet_config.py's FakeCabinet)."""
    from test_cabinet_config import FakeCabinet
    from tools.lab.stack import wait_until
    db = str(tmp_path / "arcade.db")
    with open_ledger(db) as led:
        secret = led.add_cabinet("cab1", name="Galaga", price_cents=100)
        led.add_operator("alice", hashed(PASSWORD))
        led.record_status("cab1", True, {"online": True})
    app = create_app({"ARCADE_DB": db, "MQTT_URL": broker.url})
    cab = FakeCabinet(broker, secret)
    try:
        client = app.test_client()
        assert sign_in(client).status_code == 303
        r = post(client, "/admin/cabinets/cab1/test-pulse", {"pulses": "3",
                                                             "csrf_token": token(client, "/admin/cabinets/cab1")})
        assert r.status_code == 303
        wait_until(lambda: cab.tests, 10, what="the test pulse at the cabinet")
        [(reason, msg)] = cab.tests
        assert reason == "" and msg["pulses"] == 3
        page = client.get(BASE + "/admin/cabinets/cab1").get_data(as_text=True)
        assert "Test pulse %d (3 pulses) sent to cab1" % msg["n"] in page
        with open_ledger(db) as led:
            assert [a["action"] for a in led.list_audit()][0] == "cabinet.test_pulse"
    finally:
        cab.close()


def test_qr_sticker_downloads(tmp_path, signed_in, app):
    from test_qr import zbar
    r = signed_in.get(BASE + "/admin/cabinets/cab1/sticker.png")
    assert r.status_code == 409 and "ARCADE_PUBLIC_URL" in r.get_data(as_text=True)     # no public address set
    app.config["ARCADE_PUBLIC_URL"] = "https://pay.example.com"
    r = signed_in.get(BASE + "/admin/cabinets/cab1/sticker.png")
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png"
    (tmp_path / "s.png").write_bytes(r.data)
    assert zbar(tmp_path / "s.png") == ["https://pay.example.com/pay/cab1"]
    assert signed_in.get(BASE + "/admin/cabinets/cab1/sticker.pdf").data.startswith(b"%PDF")
    assert b"<svg" in signed_in.get(BASE + "/admin/cabinets/cab1/sticker.svg").data
    assert signed_in.get(BASE + "/admin/cabinets/cab1/sticker.exe").status_code == 404


# -- promotions on the cabinet page, and their effect on Takings ----------------------------------

PROMO = {"kind": "bonus", "value": "1", "days": "weekdays", "window": "14:00-17:00", "label": "Happy hour"}


@pytest.mark.parametrize("field, value, message", [
    ("kind", "free", "bad kind"),
    ("value", "0", "from 1 to 100"),
    ("value", "51", "bad bonus"),
    ("value", "101", "from 1 to 100"),
    ("days", "funday", "bad days"),
    ("window", "25:00-26:00", "bad time"),
    ("window", "14:00", "START-END"),
    ("label", "x" * 61, "too long"),
])
def test_promotion_form_bad_input_changes_nothing(form_world, field, value, message):
    signed_in, ledger = form_world
    form = dict(PROMO, **{field: value}, csrf_token=token(signed_in, "/admin/cabinets/cab1"))
    assert post(signed_in, "/admin/cabinets/cab1/promotions", form).status_code == 303
    page = signed_in.get(BASE + "/admin/cabinets/cab1").get_data(as_text=True)
    assert message in page and "Nothing was changed" in page
    assert ledger.list_promotions() == []


def test_promotions_added_removed_and_audited(signed_in, ledger, app):
    form = dict(PROMO, csrf_token=token(signed_in, "/admin/cabinets/cab1"))
    assert post(signed_in, "/admin/cabinets/cab1/promotions", form).status_code == 303
    [p] = ledger.list_promotions()
    assert (p["cabinet_id"], p["kind"], p["value"], p["days"], p["start_min"], p["end_min"]) == \
        ("cab1", "bonus", 1, [0, 1, 2, 3, 4], 14 * 60, 17 * 60)
    other = ledger.add_promotion(None, "percent", 10, range(7), 0, 60, "Night owls")
    with open_ledger(app.config["ARCADE_DB"]) as led:
        led.add_cabinet("cab2", name="Other", price_cents=100)
        mine = led.add_promotion("cab2", "bonus", 2, range(7), 0, 60, "")
    tok = token(signed_in, "/admin/cabinets/cab1")
    post(signed_in, "/admin/cabinets/cab1/promotions/%d/remove" % mine, {"csrf_token": tok})   # not cab1's
    assert len(ledger.list_promotions()) == 3
    post(signed_in, "/admin/cabinets/cab1/promotions/%d/remove" % p["id"], {"csrf_token": tok})
    assert [r["id"] for r in ledger.list_promotions()] == [other, mine]
    actions = [a["action"] for a in ledger.list_audit() if a["action"].startswith("promotion.")]
    assert actions == ["promotion.remove", "promotion.add"]


def test_promotions_effect_is_plays_per_hour_on_and_off(app, ledger):
    import sqlite3
    from datetime import datetime, timezone
    from relay.console.views import _promo_effects
    monday = datetime(2027, 1, 11, tzinfo=timezone.utc).timestamp()          # a Monday, 00:00 UTC
    ledger.add_promotion("cab1", "bonus", 1, [0], 14 * 60, 17 * 60, "Happy hour")    # Mondays 14:00-17:00
    for n, (sid, hour, credits) in enumerate([("cs_in1", 14.5, 3), ("cs_in2", 16.9, 1), ("cs_out", 10, 2)]):
        ledger.record_checkout("evt_promo_%d" % n, "checkout.session.completed", sid, "credit", cabinet_id="cab1",
                               amount=100 * credits, currency="usd", credits=credits, pulses=credits)
        db = sqlite3.connect(app.config["ARCADE_DB"])
        db.execute("UPDATE payments SET created_at = ? WHERE session_id = ?", (monday + hour * 3600, sid))
        db.commit()
        db.close()
    with app.app_context():
        [e] = _promo_effects(ledger, monday, monday + 86400)
    assert (e["on"], e["off"], e["on_hours"], e["off_hours"]) == (4, 2, 3.0, 21.0)
    assert e["on_rate"] == pytest.approx(4 / 3) and e["off_rate"] == pytest.approx(2 / 21)
