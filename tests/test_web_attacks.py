"""Issue 10: the relay's web side under attack. One test (or table) per hole, each WITH the attack;
each failed on the code before the fix. Stripe is the fake on loopback (it records what it was sent),
the relay the real `arcade relay` under waitress where the server matters (size limits, concurrency)."""
import http.cookiejar
import io
import os
import re
import socket
import stat
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from relay import create_app
from relay.config import ConfigError, load
from relay.ledger import open_ledger
from tools.lab import stack
from tools.lab import stripe_events as se
from tools.lab.broker import free_port
from tools.lab.fake_stripe import FakeStripe

ROOT = Path(__file__).resolve().parents[1]
SECRET = "whsec_test_attacks"
API_KEY = "sk_test_attacks_123456"
PUBLIC = "https://pay.pixel.test"
MB20 = 20 * 1024 * 1024


@pytest.fixture
def fake():
    with FakeStripe(api_key=API_KEY) as f:
        yield f


def make_app(tmp_path, fake, **extra):
    cfg = {"TESTING": True, "ARCADE_DB": str(tmp_path / "arcade.db"), "STRIPE_WEBHOOK_SECRET": SECRET,
           "MQTT_URL": "mqtt://127.0.0.1:1", "STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": fake.url,
           "ARCADE_PUBLIC_URL": PUBLIC}
    cfg.update(extra)
    Path(cfg["ARCADE_DB"]).parent.mkdir(parents=True, exist_ok=True)
    app = create_app(cfg)
    with open_ledger(app.config["ARCADE_DB"]) as led:
        for cab in ("cab1", "cab2"):
            led.add_cabinet(cab, price_cents=100, bundles=[(3, 250)], coins_per_credit=2)
            led.record_status(cab, True, {"t": "status", "cab": cab, "online": True})
    return app


@pytest.fixture
def app(tmp_path, fake):
    return make_app(tmp_path, fake)


def form_for(page, key="1"):
    html = page.get_data(as_text=True) if hasattr(page, "get_data") else page
    block = re.search(r'<form method="post"[^>]*>\s*<input type="hidden" name="option" value="%s">(.*?)</form>'
                      % re.escape(key), html, re.S)
    assert block, "no form for option %s" % key
    return dict(re.findall(r'name="(\w+)" value="([^"]*)"', block.group(0)))


def buy(client, cab="cab1", key="1", addr="192.0.2.10", headers=None):
    env = {"REMOTE_ADDR": addr}
    page = client.get("/pay/" + cab, environ_base=env, headers=headers or {})
    return client.post("/pay/" + cab, data=form_for(page, key), environ_base=env, headers=headers or {})


def webhook(client, evt):
    body = se.encode(evt)
    return client.post("/stripe/webhook", data=body, headers={
        "Content-Type": "application/json", "Stripe-Signature": se.signature_header(body, SECRET)})


def pay_and_confirm(client, fake, response):
    sid = response.headers["Location"].rsplit("/", 1)[1]
    fake.pay(sid)
    assert webhook(client, fake.events[-1]).status_code == 200


# -- 1. the body limit ----------------------------------------------------------------------------

class Endless(io.RawIOBase):
    """A request body that counts what the server reads of it (20 MB announced)."""

    def __init__(self):
        self.read_bytes = 0

    def readable(self):
        return True

    def tell(self):     # werkzeug's EnvironBuilder asks; the server side never seeks
        return 0

    def seek(self, *args):
        return 0

    def readinto(self, b):
        n = min(len(b), 65536)
        b[:n] = b"x" * n
        self.read_bytes += n
        return n


@pytest.mark.parametrize("path", ["/stripe/webhook", "/pay/cab1"])
def test_a_20mb_body_is_refused_413_without_being_read(app, fake, path):
    from werkzeug.test import EnvironBuilder, run_wsgi_app
    body = Endless()
    environ = EnvironBuilder(path=path, method="POST", headers={"Stripe-Signature": "t=1,v1=00"}, content_type=(
        "application/json" if "webhook" in path else "application/x-www-form-urlencoded")).get_environ()
    environ.update({"wsgi.input": body, "CONTENT_LENGTH": str(MB20)})
    _, status, _ = run_wsgi_app(app, environ, buffered=True)   # the WSGI call itself: the client would buffer
    assert status.startswith("413")
    assert body.read_bytes < 1024 * 1024, "read %d bytes of a refused body" % body.read_bytes
    assert fake.api_requests() == []


@pytest.fixture
def served(tmp_path, fake):
    """The real `arcade relay` (waitress) with cab1 online; no broker needed for the web side."""
    db = str(tmp_path / "arcade.db")
    with open_ledger(db) as led:
        led.add_cabinet("cab1", price_cents=100, bundles=[(3, 250)])
        led.record_status("cab1", True, {"t": "status", "cab": "cab1", "online": True})
    relay = stack.Relay(tmp_path / "relay", db, "mqtt://127.0.0.1:%d" % free_port(), SECRET, extra_env={
        "STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": fake.url, "ARCADE_RECONCILE_EVERY": "0"}).start()
    yield relay
    relay.stop()


@pytest.mark.parametrize("path", ["/stripe/webhook", "/pay/cab1"])
def test_waitress_answers_413_from_the_announced_length(served, path):
    with socket.create_connection(("127.0.0.1", served.port), timeout=15) as s:
        s.sendall(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % (path.encode(), MB20) + b"{" * 4096)
        answer = s.recv(4096)        # without the limit waitress waits for the other 20 MB: timeout
    assert answer.startswith(b"HTTP/1.1 413"), answer[:80]


# -- 2. no URL built from the Host header ----------------------------------------------------------

def test_without_a_public_url_nothing_is_sold_and_no_host_is_trusted(tmp_path, fake):
    app = make_app(tmp_path, fake, ARCADE_PUBLIC_URL=None)
    client = app.test_client()
    page = client.get("/pay/cab1", headers={"Host": "evil.example"})
    assert 'method="post"' not in page.get_data(as_text=True)
    page = make_app(tmp_path / "x", fake).test_client().get("/pay/cab1")   # a form from a selling relay
    r = client.post("/pay/cab1", data=form_for(page), headers={"Host": "evil.example"})
    assert r.status_code in (400, 503) and fake.api_requests("POST") == []


def test_a_forged_host_or_forwarded_host_never_reaches_stripe(tmp_path, fake):
    app = make_app(tmp_path, fake, ARCADE_PROXY_HOPS="1")
    client = app.test_client()
    assert client.get("/pay/cab1", headers={"Host": "evil.example"}).status_code == 400   # TRUSTED_HOSTS
    r = buy(client, addr="127.0.0.1", headers={"X-Forwarded-Host": "evil.example", "X-Forwarded-For": "192.0.2.1"})
    assert r.status_code == 303
    (req,) = fake.api_requests("POST")
    assert req.form["success_url"].startswith(PUBLIC + "/paid?") and "evil" not in str(req.form)


def test_relay_says_at_start_that_it_sells_nothing_without_a_public_url(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCADE_", "STRIPE_", "MQTT_"))}
    env.update(ARCADE_DB=str(tmp_path / "a.db"), STRIPE_WEBHOOK_SECRET=SECRET, MQTT_URL="mqtt://127.0.0.1:1",
               PYTHONPATH=str(ROOT))
    proc = stack.Proc([sys.executable, "-m", "tools.cli", "relay", "--port", str(free_port())], env,
                      tmp_path / "relay.log", "relay")
    proc.start()
    try:
        stack.wait_until(lambda: "ARCADE_PUBLIC_URL is not set" in proc.log_path.read_text(), 20,
                         what="the warning about ARCADE_PUBLIC_URL")
    finally:
        proc.stop()


# -- 3. rate limits reserved in the ledger --------------------------------------------------------

class Phone:
    """A browser: its own cookie jar, real HTTP to the real server."""

    def __init__(self, base):
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()),
                                                  NoRedirect())

    def page(self, cab="cab1"):
        with self.opener.open(self.base + "/pay/" + cab, timeout=30) as r:
            return r.read().decode()

    def post(self, cab, fields):
        data = urllib.parse.urlencode(fields).encode()
        try:
            with self.opener.open(self.base + "/pay/" + cab, data=data, timeout=60) as r:
                return r.status
        except urllib.error.HTTPError as e:
            e.close()
            return e.code


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_concurrent_posts_from_one_phone_get_at_most_its_budget(served, fake):
    phone = Phone(served.url)
    forms = [form_for(phone.page(), key) for key in ("1", "3") for _ in range(6)]   # 12 pages, 12 tokens
    statuses, go = [], threading.Barrier(len(forms))

    def post(fields):
        go.wait(30)
        statuses.append(phone.post("cab1", fields))
    threads = [threading.Thread(target=post, args=(f,)) for f in forms]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert len(statuses) == 12 and set(statuses) <= {303, 429}, statuses
    assert 1 <= len(fake.sessions) <= 5, "%d sessions for one phone (budget 5)" % len(fake.sessions)
    assert statuses.count(303) >= 1


def test_one_client_cannot_lock_the_others_out(app, fake):
    client = app.test_client()
    ledger = open_ledger(app.config["ARCADE_DB"])
    try:
        for i in range(70):     # the attacker: one address, far past its budget
            r = buy(client, "cab1", "1" if i % 2 else "3", addr="198.51.100.66")
            if r.status_code == 303:
                pay_and_confirm(client, fake, r)
        assert len(fake.sessions) == 5
        assert buy(client, "cab1", addr="192.0.2.99").status_code == 303   # a real player still buys
    finally:
        ledger.close()


def test_many_clients_spend_the_cabinet_budget_yet_a_new_player_still_buys(app, fake):
    client = app.test_client()
    for i in range(61):   # 61 addresses, two attempts each: their second ones hit the cabinet's budget
        for key in ("1", "3"):
            buy(client, "cab1", key, addr="10.0.%d.%d" % (i // 200, i % 200 + 1))
    assert len(fake.sessions) <= 60 + 61
    assert buy(client, "cab1", addr="192.0.2.200").status_code == 303


def test_an_ipv6_client_is_its_slash_64(app, fake):
    client = app.test_client()
    for i in range(5):
        r = buy(client, addr="2001:db8:1:2::%x" % (i + 1))
        assert r.status_code == 303
        pay_and_confirm(client, fake, r)
    assert buy(client, addr="2001:db8:1:2:ffff::1").status_code == 429      # same /64, fresh address
    assert buy(client, addr="2001:db8:1:3::1").status_code == 303            # another /64


def test_forged_x_forwarded_for_from_a_direct_client_gets_no_fresh_budget(tmp_path, fake):
    app = make_app(tmp_path, fake, ARCADE_PROXY_HOPS="1")
    client = app.test_client()
    for i in range(5):
        r = buy(client, addr="203.0.113.50", headers={"X-Forwarded-For": "192.0.2.%d" % (i + 1)})
        assert r.status_code == 303
        pay_and_confirm(client, fake, r)
    r = buy(client, addr="203.0.113.50", headers={"X-Forwarded-For": "192.0.2.77"})
    assert r.status_code == 429


def test_failed_stripe_calls_are_counted(app, fake):
    client = app.test_client()
    pages = [form_for(client.get("/pay/cab1", environ_base={"REMOTE_ADDR": "192.0.2.5"})) for _ in range(6)]
    fake.stop()
    codes = [client.post("/pay/cab1", data=f, environ_base={"REMOTE_ADDR": "192.0.2.5"}).status_code
             for f in pages]
    assert codes == [502] * 5 + [429]


def test_an_open_session_is_offered_again_not_a_new_one(app, fake):
    client = app.test_client()
    a, b = buy(client), buy(client)
    assert a.status_code == b.status_code == 303 and a.headers["Location"] == b.headers["Location"]
    assert len(fake.sessions) == 1


# -- 4. CSRF bound to the page that issued it -----------------------------------------------------

@pytest.mark.parametrize("tamper", ["none", "random", "other_page", "other_browser"])
def test_the_pay_form_needs_the_token_of_its_own_page(app, fake, tamper):
    client = app.test_client()
    fields = form_for(client.get("/pay/cab1"))
    if tamper == "none":
        fields.pop("csrf_token")
    elif tamper == "random":
        fields["csrf_token"] = "x" * 40
    elif tamper == "other_page":
        fields["csrf_token"] = form_for(client.get("/pay/cab2"))["csrf_token"]
    else:
        client = app.test_client()      # no cookie: a cross-site form posting the attacker's token
    r = client.post("/pay/cab1", data=fields)
    assert r.status_code == 400 and fake.api_requests() == []


# -- 5. secrets at rest and in sight --------------------------------------------------------------

def test_the_database_and_its_side_files_are_created_0600(tmp_path):
    path = tmp_path / "arcade.db"
    old = os.umask(0o022)
    try:
        with open_ledger(path) as led:
            led.add_cabinet("cab1", price_cents=100)
            files = [p for p in tmp_path.iterdir() if p.name.startswith("arcade.db")]
            assert len(files) >= 2        # the database and its WAL at least
            for p in files:
                assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    finally:
        os.umask(old)


def test_the_relay_warns_when_the_database_is_readable_by_others(tmp_path):
    db = tmp_path / "arcade.db"
    open_ledger(db).close()
    db.chmod(0o644)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ARCADE_", "STRIPE_", "MQTT_"))}
    env.update(ARCADE_DB=str(db), STRIPE_WEBHOOK_SECRET=SECRET, MQTT_URL="mqtt://127.0.0.1:1", PYTHONPATH=str(ROOT))
    proc = stack.Proc([sys.executable, "-m", "tools.cli", "relay", "--port", str(free_port())], env,
                      tmp_path / "relay.log", "relay")
    proc.start()
    try:
        stack.wait_until(lambda: "readable by others" in proc.log_path.read_text()
                         and "chmod 600" in proc.log_path.read_text(), 20, what="the warning")
    finally:
        proc.stop()


def test_stack_cabinets_keep_the_secret_out_of_argv(tmp_path):
    cab = stack.Cabinet(tmp_path, "cab1", "ab" * 32, "mqtt://127.0.0.1:1")
    assert "ab" * 32 not in " ".join(cab.argv)
    path = Path(cab.argv[cab.argv.index("--secret-file") + 1])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and path.read_text().strip() == "ab" * 32


# -- 6. configuration hardening -------------------------------------------------------------------

def test_a_test_mode_event_credits_nothing_on_a_live_relay(tmp_path, fake):
    app = make_app(tmp_path, fake, STRIPE_API_KEY="sk_live_attacks_1234")
    client = app.test_client()
    r = webhook(client, se.event(se.checkout_session("cab1", 100)))      # livemode false
    assert r.status_code == 200 and r.get_json()["result"] == "invalid"
    with open_ledger(app.config["ARCADE_DB"]) as led:
        assert led.count_pending() == 0
    app = make_app(tmp_path / "t", fake)                                  # test key, test event: credited
    assert webhook(app.test_client(), se.event(se.checkout_session("cab1", 100))).get_json()["result"] == "queued"


@pytest.mark.parametrize("base", ["https://api.evil.example", "http://10.0.0.1:12111", "http://pay.pixel.test"])
def test_stripe_api_base_only_on_loopback(tmp_path, fake, base):
    with pytest.raises(ConfigError, match="STRIPE_API_BASE.*loopback"):
        make_app(tmp_path, fake, STRIPE_API_BASE=base)


@pytest.mark.parametrize("mode", [0o664, 0o646])
def test_a_dotenv_others_can_write_is_refused(tmp_path, mode):
    dotenv = tmp_path / ".env"
    dotenv.write_text("STRIPE_WEBHOOK_SECRET=whsec_x\n")
    dotenv.chmod(mode)
    with pytest.raises(ConfigError, match="chmod 600"):
        load(environ={}, dotenv_path=str(dotenv))
    dotenv.chmod(0o600)
    assert load(environ={}, dotenv_path=str(dotenv))["STRIPE_WEBHOOK_SECRET"] == "whsec_x"


# -- 7. pulses and integers -----------------------------------------------------------------------

def test_a_recorded_checkout_never_queues_more_than_255_pulses(tmp_path, fake):
    app = make_app(tmp_path, fake)
    with open_ledger(app.config["ARCADE_DB"]) as led:
        led.add_cabinet("big", price_cents=100, bundles=[(80, 5000)], coins_per_credit=2)
        led.record_status("big", True)
        # a bonus promotion: the bundle of 80 becomes 107 credits (214 pulses at 2 a credit, 321 at 3)
        led.add_promotion("big", "bonus", 27, range(7), 0, 1440, "")
    client = app.test_client()
    r = buy(client, "big", "80")
    assert r.status_code == 303
    sid = r.headers["Location"].rsplit("/", 1)[1]
    with open_ledger(app.config["ARCADE_DB"]) as led:
        assert led.get_expected_checkout(sid)["credits"] == 107
        from relay.ledger import LedgerError
        with pytest.raises(LedgerError, match="still open"):
            led.set_cabinet_config("big", coins_per_credit=3)    # refused at configuration time
        # the database changed behind the relay's back (or an older relay): still never queued
        led._db.execute("UPDATE cabinets SET coins_per_credit = 3 WHERE id = 'big'")
    fake.pay(sid)
    assert webhook(client, fake.events[-1]).get_json()["result"] == "invalid"
    with open_ledger(app.config["ARCADE_DB"]) as led:
        p = led.get_payment(sid)
        assert (p["state"], p["reason"], p["pulses"]) == ("invalid", "too_many_pulses", 0)


@pytest.mark.parametrize("amount", [2 ** 63, 2 ** 64 + 5, -(2 ** 63) - 1, 10 ** 30])
def test_amounts_out_of_range_are_invalid_not_500(client, amount):
    session = se.checkout_session("cab1", 100)
    session["amount_total"] = amount
    r = webhook(client, se.event(session))
    assert r.status_code == 200 and r.get_json()["result"] == "invalid"


# -- 8. /healthz ----------------------------------------------------------------------------------

def test_healthz_tells_the_public_only_ok_and_opens_no_broker_connection_per_request(tmp_path, fake):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.5)
    try:
        app = make_app(tmp_path, fake, MQTT_URL="mqtt://127.0.0.1:%d" % listener.getsockname()[1],
                       ARCADE_METRICS_TOKEN="metrics-token-1")
        client = app.test_client()
        for _ in range(20):
            r = client.get("/healthz")
            assert r.status_code == 200 and r.get_json() == {"status": "ok"}
        accepted = 0
        try:
            while True:
                listener.accept()[0].close()
                accepted += 1
        except socket.timeout:
            pass
        assert accepted == 1, "%d broker connections for 20 health checks" % accepted
        details = client.get("/healthz", headers={"Authorization": "Bearer metrics-token-1"}).get_json()
        assert details["db"] == "ok" and details["ledger"] == app.config["ARCADE_LEDGER_ID"][:8]
    finally:
        listener.close()


def test_healthz_hides_database_errors_from_the_public(tmp_path, fake):
    app = make_app(tmp_path, fake)
    app.config["ARCADE_DB"] = str(tmp_path / "no-such-dir" / "x.db")
    r = app.test_client().get("/healthz")
    assert r.status_code == 503 and r.get_json() == {"status": "not ok"}


def test_the_pay_form_still_works_with_the_console_on_the_same_host(tmp_path, fake):
    # ARCADE_CONSOLE=1 gives the app the console's session cookie (Path=/admin, Strict): the pay
    # pages keep their own, or their CSRF token could never come back
    app = make_app(tmp_path, fake, ARCADE_CONSOLE="1")
    client = app.test_client()
    page = client.get("/pay/cab1", base_url="https://localhost")
    (cookie,) = page.headers.getlist("Set-Cookie")
    assert cookie.startswith("arcade=") and "Path=/;" in cookie and "SameSite=Lax" in cookie
    r = client.post("/pay/cab1", data=form_for(page), base_url="https://localhost")
    assert r.status_code == 303 and len(fake.sessions) == 1
    login = client.get("/admin/login", base_url="https://localhost")
    assert all(c.startswith("arcade_console=") and "Path=/admin" in c for c in login.headers.getlist("Set-Cookie"))
