"""`arcade demo --web` without a browser: the fake Stripe's test cards, the demo's buttons against the real
processes, the command's start-up and Ctrl-C, and that nothing of it is reachable in production.

Oracles: the coin pulses are the simulators' own pulse lines (the simulated pin), webhooks are what the fake
Stripe sent and how the relay answered; the terminal QR code is read back by zbarimg.
"""
import json
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import Counter

import pytest
from PIL import Image
from test_qr import zbar

from tools.lab import stack, webdemo
from tools.lab.fake_stripe import FakeStripe, card_outcome

ROOT = stack.ROOT
FAST_RELAY = {"ARCADE_ACK_TIMEOUT": "1", "ARCADE_ACK_TIMEOUT_MAX": "2", "ARCADE_RESCAN": "0.5",
              "ARCADE_MQTT_KEEPALIVE": "5"}
WAIT = 40


# -- the checkout page's cards (Stripe's test mode) -----------------------------------------------

@pytest.mark.parametrize("number, exp, cvc, outcome", [
    ("4242 4242 4242 4242", None, None, "succeeded"),
    ("4242-4242-4242-4242", "1 / 2099", "1234", "succeeded"),
    ("4000 0000 0000 0002", None, None, "generic_decline"),
    ("4000 0000 0000 9995", None, None, "insufficient_funds"),
    ("5555 5555 5555 4444", None, None, "card_declined"),       # valid, but not a test card: test mode refuses it
    ("4242 4242 4242 4241", None, None, "incorrect_number"),    # fails the Luhn check
    ("4242 4242", None, None, "incomplete_number"),
    ("", None, None, "incomplete_number"),
    ("4242 4242 4242 424x", None, None, "incomplete_number"),
    ("4" * 20, None, None, "incorrect_number"),
    ("4242 4242 4242 4242", "13 / 30", None, "invalid_expiry"),
    ("4242 4242 4242 4242", "01 / 20", None, "expired_card"),
    ("4242 4242 4242 4242", "12", None, "incomplete_expiry"),
    ("4242 4242 4242 4242", None, "12", "incomplete_cvc"),
])
def test_card_outcomes_follow_stripes_test_mode(number, exp, cvc, outcome):
    assert card_outcome(number, exp, cvc)[0] == outcome


def post(url, fields):
    """POST a form without following redirects: (status, Location or body)."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **k):
            return None
    data = urllib.parse.urlencode(fields).encode()
    try:
        with urllib.request.build_opener(NoRedirect).open(urllib.request.Request(url, data=data), timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers.get("Location") or e.read().decode()


def test_declined_cards_keep_the_session_open_and_send_nothing_then_4242_pays():
    with FakeStripe() as fake:
        s = fake.add_session(amount=250, success_url="http://relay.test/paid?session_id={CHECKOUT_SESSION_ID}",
                             cancel_url="http://relay.test/cancel")
        page = "%s/pay/%s" % (fake.url, s["id"])
        for number, message in (("4000000000000002", "Your card was declined."),
                                ("4000 0000 0000 9995", "Your card has insufficient funds."),
                                ("4242 4242 4242 4241", "Your card number is invalid.")):
            status, body = post(page, {"card": number, "exp": "12 / 34", "cvc": "123"})
            assert status == 402 and message in body and 'id="pay"' in body, (number, status)
            assert fake.sessions[s["id"]]["status"] == "open" and fake.events == []
        status, body = post(page, {"card": "<script>", "exp": "12 / 34", "cvc": "123"})
        assert status == 402 and "<script>" not in body and "&lt;script&gt;" in body     # echoed escaped
        status, where = post(page, {"card": "4242 4242 4242 4242", "exp": "12 / 34", "cvc": "123"})
        assert (status, where) == (303, "http://relay.test/paid?session_id=" + s["id"])
        assert [e["type"] for e in fake.events] == ["checkout.session.completed"]
        assert [(a["last4"], a["outcome"]) for a in fake.attempts] == [
            ("0002", "generic_decline"), ("9995", "insufficient_funds"), ("4241", "incorrect_number"),
            ("", "incomplete_number"), ("4242", "succeeded")]
        # paid: another card or "let it expire" changes nothing and sends nothing
        assert post(page, {"card": "4242424242424242"})[0] == 303
        assert post(page + "/expire", {})[0] == 303
        assert [e["type"] for e in fake.events] == ["checkout.session.completed"]


def test_let_it_expire_sends_checkout_session_expired():
    with FakeStripe() as fake:
        s = fake.add_session(amount=100, cancel_url="http://relay.test/cancel")
        page = "%s/pay/%s" % (fake.url, s["id"])
        assert post(page + "/expire", {}) == (303, page)
        assert [e["type"] for e in fake.events] == ["checkout.session.expired"]
        with urllib.request.urlopen(page, timeout=10) as r:
            assert 'id="expired"' in r.read().decode()
        status, _ = post(page, {"card": "4242424242424242"})     # too late to pay
        assert status == 303 and fake.sessions[s["id"]]["status"] == "expired"
        assert [e["type"] for e in fake.events] == ["checkout.session.expired"]
        assert post("%s/pay/cs_test_nosuch/expire" % fake.url, {})[0] == 404


# -- the demo's buttons, against the real processes ----------------------------------------------

@pytest.fixture
def demo(tmp_path):
    # a long gap, so that a power cut sent on a pulse line lands between pulses (as in test_faults_cabinet)
    d = webdemo.WebDemo(tmp_path / "demo", keepalive=2, pulse_ms=30, gap_ms=400, relay_env=FAST_RELAY)
    try:
        yield d.start()
    finally:
        d.stop()


def press(demo, path, header=True):
    req = urllib.request.Request(demo.url + path, data=b"", method="POST",
                                 headers={"X-Demo-Control": "1"} if header else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.load(e)


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode()


def paid_session(demo, cab, amount):
    s = demo.fake.add_session(amount=amount, metadata={"cabinet_id": cab}, client_reference_id=cab)
    demo.fake.pay(s["id"])
    return s["id"]


def test_demo_buttons_drive_the_real_processes(demo):
    pac, gal = demo.cabinets["pacman"], demo.cabinets["galaga"]
    # the page and the relay's pages through the front; the buttons only with the page's header
    assert get(demo.url + "/demo")[0] == 200
    status, body = get(demo.url + "/pay/galaga")
    assert status == 200 and "Happy hour" in body and "Ready to play" in body
    assert press(demo, "/demo/cabinet/galaga/power-cut", header=False)[0] == 403
    assert press(demo, "/demo/cabinet/nosuch/unplug")[0] == 409
    assert press(demo, "/demo/cabinet/galaga/explode")[0] == 404
    assert gal.powered and gal.proc.alive()

    # Pay 10 times fast: ten one-play sessions at once, each one coin on galaga's pin, once.
    assert press(demo, "/demo/cabinet/galaga/pay-fast") == (200, {"ok": True, "message": "10 payments of $0.50 "
                                                                   "sent to the relay at once"})
    # Power cut mid-train on pacman: a 3-play bundle (6 coins), the simulator SIGKILLed after its 2nd pulse.
    sid = paid_session(demo, "pacman", 250)
    pac.proc.wait_for(lambda ls: len([x for x in ls if x.get("event") == "pulse"]) >= 2, WAIT, "pulse 2")
    assert press(demo, "/demo/cabinet/pacman/power-cut")[0] == 200
    assert not pac.proc.alive() and press(demo, "/demo/cabinet/pacman/power-cut")[0] == 409
    assert demo.state()["cabinets"][0]["link"] == "off"
    assert press(demo, "/demo/cabinet/pacman/power-on")[0] == 200
    boots = pac.proc.wait_for(lambda ls: (lambda b: len(b) >= 2 and b)([x for x in ls if x.get("event") == "boot"]),
                              WAIT, "the boot after the cut")
    assert boots[-1]["recovered"] is True
    stack.wait_until(lambda: len(pac.pulses()) >= 6, WAIT, 0.1, "pacman's 6 pulses")
    gal.proc.wait_pulses(10, WAIT)
    stack.wait_until(lambda: len([w for w in demo.fake.webhooks if w[1] == 200]) >= 11, WAIT, 0.1, "11 webhooks")
    assert [p["n"] for p in pac.pulses() if p["session"] == sid] == [1, 2, 3, 4, 5, 6], "each coin once"
    fast = Counter(p["session"] for p in gal.pulses())
    assert len(fast) == 10 and set(fast.values()) == {1}, fast

    # Block coins: the credit waits in flash (held), and pulses once they are accepted again.
    assert press(demo, "/demo/cabinet/galaga/block")[0] == 200
    gal.proc.wait_for(lambda ls: any(x.get("event") == "status" and x.get("inhibited") for x in ls), WAIT,
                      "the inhibited status")
    stack.wait_until(lambda: "This cabinet is paused" in get(demo.url + "/pay/galaga")[1], WAIT, 0.2,
                     "the pay page saying paused")
    held = paid_session(demo, "galaga", 50)
    gal.proc.wait_for(lambda ls: [x for x in ls if x.get("event") == "held"], WAIT, "the held credit")
    assert [p for p in gal.pulses() if p["session"] == held] == []
    assert press(demo, "/demo/cabinet/galaga/unblock")[0] == 200
    stack.wait_until(lambda: [p for p in gal.pulses() if p["session"] == held], WAIT, 0.1, "the held coin")

    # Restart the broker: both cabinets come back, a payment after it pulses once.
    connects = {c.id: len(c.proc.events("connected")) for c in (pac, gal)}
    assert press(demo, "/demo/broker/restart")[0] == 200
    for c in (pac, gal):
        c.proc.wait_connected(WAIT, connects[c.id] + 1)
    stack.wait_until(lambda: demo.relay.health().get("broker") == "ok", WAIT, 0.1, "the relay back on the broker")
    after = paid_session(demo, "pacman", 100)
    stack.wait_until(lambda: len([p for p in pac.pulses() if p["session"] == after]) >= 2, WAIT, 0.1, "2 coins")
    assert len(pac.pulses()) == 8 and len(gal.pulses()) == 11

    # The production relay process (the same `arcade relay`) serves none of the demo.
    for path in ("/demo", "/demo/state", "/demo/static/demo.js"):
        assert get(demo.relay.url + path)[0] == 404, path


# -- the command ---------------------------------------------------------------------------------

def read_until(proc, pattern, timeout, lines):
    """Lines of the child's stdout (collected in `lines`) until one matches; bounded by a timer."""
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        for raw in proc.stdout:
            lines.append(raw.rstrip("\n"))
            m = re.search(pattern, lines[-1])
            if m:
                return m
    finally:
        timer.cancel()
    raise AssertionError("no line matching %r; output:\n%s" % (pattern, "\n".join(lines)))


def test_arcade_demo_web_serves_until_ctrl_c_then_stops_everything(tmp_path):
    work = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "demo", "--web", "--port", "0", "--dir", str(work)],
                            cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        url = read_until(proc, r"^Open (http://127\.0\.0\.1:\d+)/demo$", 90, lines).group(1)
        read_until(proc, r"^Press Ctrl-C to stop\.$", 10, lines)
        assert get(url + "/demo")[0] == 200
        assert "Pac-Cab" in get(url + "/pay/pacman")[1]
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines += out.splitlines()
    assert proc.returncode == 0, "\n".join(lines)
    text = "\n".join(lines)
    assert "Test cards: 4242 4242 4242 4242 success; 4000 0000 0000 0002 declined; 4000 0000 0000 9995 " \
           "insufficient funds" in text
    assert re.search(r"^stopped\. logs: relay %s/relay\.log; cabinet pacman " % re.escape(str(work)), text, re.M)
    assert (work / "relay.log").stat().st_size > 0 and (work / "cabinet-galaga.log").exists()
    assert len(re.findall(r"https?://", text)) == 1, "one URL: " + text      # the page's; no other address
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/demo", timeout=5)
    assert processes_mentioning(str(work)) == [], "everything the demo started has stopped"


def processes_mentioning(needle):
    """Processes of ours whose command line or environment names `needle` (mosquitto's config, the relay's
    ARCADE_DB, the simulators' flash)."""
    import os
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for part in ("cmdline", "environ"):
            try:
                with open("/proc/%s/%s" % (pid, part), "rb") as f:
                    if needle.encode() in f.read():
                        found.append(int(pid))
                        break
            except OSError:
                pass
    return found


def test_a_port_in_use_or_out_of_range_is_refused_before_anything_starts(tmp_path, capsys):
    from tools.commands import demo as demo_cmd
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert demo_cmd.main(["--web", "--port", str(port), "--dir", str(tmp_path / "d")]) == 2
    assert "cannot listen on 127.0.0.1:%d: it is in use" % port in capsys.readouterr().out
    assert demo_cmd.main(["--web", "--port", "70000", "--dir", str(tmp_path / "d")]) == 2
    assert "--port 70000 is not a port number" in capsys.readouterr().out
    assert not (tmp_path / "d").exists()


def test_all_interfaces_print_a_terminal_qr_code_a_phone_can_read(tmp_path):
    class Stub:               # run()'s side of a demo: no processes
        host, url, db_path = "0.0.0.0", "http://192.0.2.7:8080", tmp_path / "arcade.db"
        stopped = False

        def start(self, say):
            say("started")

        def stop(self):
            self.stopped = True

        def logs(self):
            return [("relay", tmp_path / "relay.log")]

    out = []

    def ctrl_c(demo, say):
        raise KeyboardInterrupt
    stub = Stub()
    assert webdemo.run(stub, out.append, wait_forever=ctrl_c) == 0
    assert stub.stopped and out[-2] == "stopped. logs: relay %s" % (tmp_path / "relay.log")
    assert "Open http://192.0.2.7:8080/demo" in out
    (qr,) = [o for o in out if "\u2580" in o or "\u2584" in o]
    assert zbar_text_qr(qr, tmp_path / "qr.png") == ["http://192.0.2.7:8080/demo"]


def zbar_text_qr(text, path):
    """Draw a half-block text QR code (each character two modules, glyph = light) and decode it with zbarimg."""
    rows = [r for r in text.split("\n") if r]
    upper = {"\u2588": (1, 1), "\u2580": (1, 0), "\u2584": (0, 1), " ": (0, 0)}
    width = max(len(r) for r in rows)
    img = Image.new("L", (width, 2 * len(rows)), 255)
    for y, row in enumerate(rows):
        for x, ch in enumerate(row):
            top, bottom = upper[ch]
            img.putpixel((x, 2 * y), 255 if top else 0)
            img.putpixel((x, 2 * y + 1), 255 if bottom else 0)
    framed = Image.new("L", (width + 8, 2 * len(rows) + 8), 255)
    framed.paste(img, (4, 4))
    framed.resize((framed.width * 8, framed.height * 8), Image.NEAREST).save(path)
    return zbar(path)


# -- production never sees any of it -------------------------------------------------------------

def test_the_production_relay_has_no_demo_routes_and_loads_no_lab_code(tmp_path):
    probe = (
        "import sys\n"
        "from relay import create_app\n"
        "import tools.commands.relay\n"
        "app = create_app({'ARCADE_DB': sys.argv[1], 'STRIPE_WEBHOOK_SECRET': 'whsec_x', 'STRIPE_API_KEY': 'sk_test_x',"
        " 'ARCADE_PUBLIC_URL': 'https://pay.example.test'})\n"
        "c = app.test_client()\n"
        "print([r.rule for r in app.url_map.iter_rules()])\n"
        "print([c.get(p).status_code for p in ('/demo', '/demo/state', '/demo/static/demo.js')])\n"
        "print([c.post(p).status_code for p in ('/demo/cabinet/pacman/unplug', '/demo/broker/restart')])\n"
        "print(sorted(m for m in sys.modules if m.startswith('tools.lab') or 'stripe_events' in m))\n")
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "arcade.db")], cwd=str(ROOT), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rules, gets, posts, lab = out.stdout.strip().splitlines()
    assert "demo" not in rules and "/pay/<cabinet_id>" in rules
    assert gets == "[404, 404, 404]" and posts == "[404, 404]"
    assert lab == "[]", "the relay loaded lab code: " + lab
    for path in (ROOT / "relay").rglob("*"):
        if path.is_file() and path.suffix in (".py", ".html", ".js"):
            src = path.read_text()
            assert not re.search(r"fake_stripe|webdemo|demo_site|tools\.lab", src), path
