"""Per-cabinet pulse timing and test pulses, relay side (docs/protocol.md: Config, Test pulse).

`arcade cabinet set` stores the override and a new version in the ledger; the dispatcher, against a
real mosquitto, publishes it signed and retained; a subscriber checks it with the firmware's own
protocol code (firmware/protocol.py) and the relay's. `arcade cabinet test-pulse` is driven against a
small paho client playing the cabinet, which checks the message with the firmware's code too.
"""
import importlib.util
import json
import os
import sys
import threading

import paho.mqtt.client as mqtt
import pytest

from relay import config, protocol
from relay.dispatcher import Dispatcher
from relay.ledger import LedgerError, open_ledger
from tools import cli
from tools.lab.stack import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def firmware_protocol():
    """firmware/protocol.py as the board imports it (module `protocol`), `micropython` from hostsim."""
    path = os.path.join(ROOT, "firmware", "protocol.py")
    mod = sys.modules.get("protocol")
    if mod is not None and os.path.abspath(mod.__file__) == path:
        return mod
    if "micropython" not in sys.modules:
        import tools.hostsim.micropython as stub
        sys.modules["micropython"] = stub
    spec = importlib.util.spec_from_file_location("arcade_fw_protocol", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def db(tmp_path, monkeypatch):
    path = str(tmp_path / "arcade.db")
    monkeypatch.setenv("ARCADE_DB", path)
    monkeypatch.delenv("ARCADE_TOPIC_PREFIX", raising=False)
    monkeypatch.chdir(tmp_path)   # no stray .env
    with open_ledger(path) as ledger:
        secret = ledger.add_cabinet("cab1", price_cents=100, bundles=[(3, 250)])
        ledger.set_board("cab1", "esp32-devkitc")
    return {"path": path, "secret": secret}


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(path):
    with open_ledger(path) as ledger:
        return ledger.cabinet_config("cab1"), ledger.get_cabinet("cab1")["coins_per_credit"]


# -- the wire format, against the vectors ----------------------------------------------------------

def test_relay_builds_and_verifies_config_vectors(vectors):
    secret = vectors["secret"]
    for v in vectors["configs"]:
        m = v["message"]
        accepted = protocol.verify_config(m, secret) and m["cab"] == "cab1"
        if v["valid"] and v.get("lines") is not False:
            assert accepted, v["name"]
            built = protocol.build_config(m["cab"], m["ver"], m["width_ms"], m["gap_ms"], m["coins_per_credit"],
                                          secret, ts=m["ts"], price=m.get("price"), promo=m.get("promo"))
            assert built == json.dumps(m, separators=(",", ":")).encode(), v["name"]
            assert protocol.canonical_config(m) == v["canonical"].encode()
        elif v.get("lines") is False:
            assert not accepted, v["name"]     # the relay takes a config with bad screen lines for none of its own
        elif v["reason"] in ("bad_signature", "wrong_cabinet"):
            assert not accepted, v["name"]


def test_relay_builds_and_verifies_test_pulse_vectors(vectors):
    secret = vectors["secret"]
    for v in vectors["test_pulses"]:
        m = v["message"]
        accepted = protocol.verify_test(m, secret) and m["cab"] == "cab1"
        if v["valid"] and v.get("lines") is not False:
            assert accepted, v["name"]
            assert protocol.build_test(m["cab"], m["n"], m["pulses"], secret, ts=m["ts"]) == \
                json.dumps(m, separators=(",", ":")).encode(), v["name"]
        elif v["reason"] in ("bad_signature", "wrong_cabinet"):
            assert not accepted, v["name"]


# -- the ledger ------------------------------------------------------------------------------------

def test_config_version_is_max_of_last_plus_one_and_now(db):
    with open_ledger(db["path"]) as ledger:
        assert ledger.cabinet_config("cab1")["ver"] == 0
        assert ledger.set_cabinet_config("cab1", pulse_ms=120, now=1000)["ver"] == 1000
        assert ledger.set_cabinet_config("cab1", gap_ms=500, now=1000)["ver"] == 1001   # same second
        assert ledger.set_cabinet_config("cab1", gap_ms=400, now=900)["ver"] == 1002    # clock went back
        cfg = ledger.set_cabinet_config("cab1", coins_per_credit=2, now=5000)
        assert (cfg["ver"], cfg["pulse_ms"], cfg["gap_ms"], cfg["coins_per_credit"]) == (5000, 120, 400, 2)
        assert ledger.get_cabinet("cab1")["coins_per_credit"] == 2
        assert [r["ver"] for r in ledger.pending_configs()] == [5000]
        assert ledger.mark_config_published("cab1", 5000)
        assert ledger.pending_configs() == []
        assert not ledger.mark_config_published("cab1", 1002)      # an older PUBACK never goes back
        assert ledger.cabinet_config("cab1")["published_ver"] == 5000
        assert [ledger.next_test_n("cab1", now=7000), ledger.next_test_n("cab1", now=7000),
                ledger.next_test_n("cab1", now=10)] == [7000, 7001, 7002]


@pytest.mark.parametrize("kwargs, shown", [
    ({"pulse_ms": -1}, "-1"),
    ({"pulse_ms": 10001}, "10001"),
    ({"gap_ms": "500"}, "'500'"),
    ({"gap_ms": True}, "True"),
    ({"coins_per_credit": 0}, "0"),
    ({"coins_per_credit": 256}, "256"),
    ({"coins_per_credit": 100}, "300 coin pulses"),   # the 3-credit bundle would need 300
], ids=["negative width", "width over the firmware limit", "gap as text", "gap as bool", "zero coins",
        "coins over 255", "bundle over 255 pulses"])
def test_ledger_refuses_bad_config_and_changes_nothing(db, kwargs, shown):
    with open_ledger(db["path"]) as ledger:
        ledger.set_cabinet_config("cab1", pulse_ms=120, now=1000)
    before = snapshot(db["path"])
    with open_ledger(db["path"]) as ledger:
        with pytest.raises(LedgerError) as e:
            ledger.set_cabinet_config("cab1", now=2000, **kwargs)
    assert shown in str(e.value)
    assert snapshot(db["path"]) == before


def test_ledger_unknown_cabinet(db):
    with open_ledger(db["path"]) as ledger:
        with pytest.raises(LedgerError, match="no cabinet 'nope'"):
            ledger.set_cabinet_config("nope", pulse_ms=100)
        assert ledger.cabinet_config("nope") is None


# -- arcade cabinet set ----------------------------------------------------------------------------

@pytest.mark.parametrize("argv, shown", [
    (["--pulse-ms", "5"], "--pulse-ms 5 is outside 20..500 ms allowed by the board esp32-devkitc"),
    (["--pulse-ms", "501"], "--pulse-ms 501 is outside 20..500"),
    (["--pulse-ms", "-3"], "--pulse-ms -3 is outside 20..500"),
    (["--gap-ms", "19"], "--gap-ms 19 is outside 20..2000"),
    (["--pulse-ms", "100", "--gap-ms", "2001"], "--gap-ms 2001 is outside 20..2000"),
    (["--coins-per-credit", "0"], "--coins-per-credit 0 must be from 1 to 255"),
    (["--coins-per-credit", "90"], "270 coin pulses"),
    (["--pulse-ms", "abc"], "invalid int value: 'abc'"),
], ids=["width below the board range", "width above", "negative width", "gap below", "gap above with a good width",
        "zero coins", "bundle over 255 pulses", "width not a number"])
def test_set_bad_input_is_a_clear_error_and_changes_nothing(db, capsys, argv, shown):
    assert run(capsys, "cabinet", "set", "cab1", "--pulse-ms", "120")[0] == 0
    before = snapshot(db["path"])
    if argv[-1] == "abc":
        with pytest.raises(SystemExit) as e:
            cli.main(["cabinet", "set", "cab1"] + argv)
        code, (out, err) = e.value.code, capsys.readouterr()
    else:
        code, out, err = run(capsys, "cabinet", "set", "cab1", *argv)
    assert code == 2
    assert shown in err and "Traceback" not in err
    assert snapshot(db["path"]) == before


def test_set_unknown_cabinet_and_board_default_ranges(db, capsys):
    code, _, err = run(capsys, "cabinet", "set", "nope", "--pulse-ms", "100")
    assert code == 2 and "no cabinet 'nope'" in err
    # a cabinet whose board is unknown is checked against the firmware's default ranges (20..2000)
    with open_ledger(db["path"]) as ledger:
        ledger.add_cabinet("cab2", price_cents=100)
    code, out, err = run(capsys, "cabinet", "set", "cab2", "--pulse-ms", "1500")
    assert code == 0, err
    assert "the firmware's default ranges" in out
    code, _, err = run(capsys, "cabinet", "set", "cab2", "--pulse-ms", "2500")
    assert code == 2 and "outside 20..2000" in err


def test_set_shows_the_secret_never(db, capsys):
    code, out, err = run(capsys, "cabinet", "set", "cab1", "--pulse-ms", "120", "--gap-ms", "500")
    assert code == 0, err
    assert db["secret"] not in out + err
    code, out, err = run(capsys, "cabinet", "set", "cab1")
    assert code == 0 and "pulse 120 ms, gap 500 ms" in out and "waiting for the relay to publish" in out
    assert db["secret"] not in out + err


# -- against a real broker: the dispatcher publishes, a subscriber verifies -------------------------

class Subscriber:
    """A paho client on one topic, recording (payload, retained) of every message."""

    def __init__(self, broker, topic):
        self.messages = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sub-" + os.urandom(4).hex())
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        assert subscribed.wait(10), "could not subscribe to %s" % topic

    def _on_message(self, client, userdata, msg):
        with self.cond:
            self.messages.append((msg.payload, bool(msg.retain)))
            self.cond.notify_all()

    def wait(self, predicate, timeout=15, what="message"):
        with self.cond:
            assert self.cond.wait_for(lambda: any(predicate(p, r) for p, r in self.messages), timeout), \
                "no %s; got %r" % (what, self.messages)
            return [(p, r) for p, r in self.messages if predicate(p, r)]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def relay(db, broker, monkeypatch):
    monkeypatch.setenv("MQTT_URL", broker.url)
    started, subs = [], []

    def start():
        settings = config.check({"ARCADE_DB": db["path"], "MQTT_URL": broker.url, "STRIPE_WEBHOOK_SECRET": "x",
                                 "ARCADE_RESCAN": 0.2})
        d = Dispatcher(settings)
        assert d.start()
        started.append(d)
        return d

    def subscribe(topic):
        s = Subscriber(broker, topic)
        subs.append(s)
        return s

    yield dict(db, start=start, subscribe=subscribe, broker=broker)
    for d in started:
        d.stop()
    for s in subs:
        s.close()


def test_set_publishes_signed_retained_config_checked_by_the_firmware_code(relay, capsys):
    fw = firmware_protocol()
    key = relay["secret"].encode()
    # issued while the relay is down: published when its dispatcher connects
    assert run(capsys, "cabinet", "set", "cab1", "--pulse-ms", "120", "--gap-ms", "500",
               "--coins-per-credit", "2")[0] == 0
    ver1 = snapshot(relay["path"])[0]["ver"]
    relay["start"]()
    sub = relay["subscribe"]("arcade/cab1/config")

    def has(ver):
        return lambda p, r: json.loads(p)["ver"] == ver

    payload, _ = sub.wait(has(ver1), what="config ver %d" % ver1)[0]
    reason, msg = fw.check_config(payload, "cab1", key)
    assert reason == "" and protocol.verify_config(json.loads(payload), relay["secret"])
    assert (msg["cab"], msg["width_ms"], msg["gap_ms"], msg["coins_per_credit"]) == ("cab1", 120, 500, 2)
    assert fw.check_config(payload, "cab2", key)[0] == "wrong_cabinet"
    assert fw.check_config(payload, "cab1", b"another secret of 32 characters!")[0] == "bad_signature"
    wait_until(lambda: snapshot(relay["path"])[0]["published_ver"] == ver1, 10, what="PUBACK recorded")

    # a cabinet connecting later gets it from the broker: it is retained
    late = relay["subscribe"]("arcade/cab1/config")
    assert late.wait(has(ver1), what="retained config")[0] == (payload, True)

    # a later change, from another process (the CLI), reaches the running relay with a higher version
    assert run(capsys, "cabinet", "set", "cab1", "--pulse-ms", "0")[0] == 0
    ver2 = snapshot(relay["path"])[0]["ver"]
    assert ver2 > ver1
    payload2, _ = late.wait(has(ver2), what="config ver %d" % ver2)[0]
    reason, msg = fw.check_config(payload2, "cab1", key)
    assert reason == "" and (msg["width_ms"], msg["gap_ms"], msg["coins_per_credit"]) == (0, 500, 2)
    wait_until(lambda: snapshot(relay["path"])[0]["published_ver"] == ver2, 10, what="PUBACK recorded")
    code, out, _ = run(capsys, "cabinet", "set", "cab1")
    assert code == 0 and "ver %d, on the broker" % ver2 in out


# -- arcade cabinet test-pulse against a cabinet played by a paho client ---------------------------

class FakeCabinet:
    """Publishes a retained status; on a test pulse checks it with the firmware's code and reports
    `test` (driven) or `test_error` in its status, as docs/protocol.md says."""

    def __init__(self, broker, secret, online=True, refuse=None):
        self.fw, self.key, self.refuse = firmware_protocol(), secret.encode(), refuse
        self.tests, self.last_n = [], 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="cab1")
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", broker.port)
        self.client.subscribe("arcade/cab1/test", qos=1)
        self.client.loop_start()
        assert subscribed.wait(10)
        self.status(online=online).wait_for_publish(10)

    def status(self, online=True, **fields):
        body = {"t": "status", "cab": "cab1", "online": online}
        if online:
            body.update({"fw": "test", "ledger": "", "last": 0, "width_ms": 100, "gap_ms": 150, "test": self.last_n,
                         "test_error": ""}, **fields)
        return self.client.publish("arcade/cab1/status", json.dumps(body), qos=1, retain=True)

    def _on_message(self, client, userdata, msg):
        reason, m = self.fw.check_test(msg.payload, "cab1", self.key)
        self.tests.append((reason, m))
        if reason == "" and m["n"] <= self.last_n:
            reason = "stale"
        reason = reason or self.refuse
        if reason:
            self.status(test_error="%d %s" % (m["n"] if m else 0, reason))
        else:
            self.last_n = m["n"]
            self.status()

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def cabinet(relay):
    made = []

    def make(**kw):
        c = FakeCabinet(relay["broker"], relay["secret"], **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def test_test_pulse_is_signed_and_reported_driven(relay, cabinet, capsys):
    cab = cabinet()
    code, out, err = run(capsys, "cabinet", "test-pulse", "cab1", "--pulses", "3", "--wait", "10")
    assert code == 0, err
    n = snapshot(relay["path"])[0]["test_n"]
    assert cab.tests == [("", {"t": "test", "cab": "cab1", "n": n, "pulses": 3, "ts": cab.tests[0][1]["ts"],
                               "sig": cab.tests[0][1]["sig"]})]
    assert "drove test pulse %d: 3 pulses of 100 ms" % n in out
    assert relay["secret"] not in out + err
    # the next one carries a higher n, so the cabinet never takes a replay for a new test
    assert run(capsys, "cabinet", "test-pulse", "cab1", "--wait", "10")[0] == 0
    assert cab.tests[1][1]["n"] == n + 1


def test_test_pulse_refused_by_the_cabinet_says_why(relay, cabinet, capsys):
    cabinet(refuse="inhibited")
    code, out, err = run(capsys, "cabinet", "test-pulse", "cab1", "--wait", "10")
    assert code == 1
    assert "refused test pulse" in err and "inhibited" in err and "inhibit line" in err


@pytest.mark.parametrize("online", [False, None], ids=["offline status", "never connected"])
def test_test_pulse_to_an_offline_cabinet_is_not_sent(relay, cabinet, capsys, online):
    if online is False:
        cabinet(online=False)
    sub = relay["subscribe"]("arcade/cab1/test")
    code, out, err = run(capsys, "cabinet", "test-pulse", "cab1", "--wait", "5")
    assert code == 2 and "is not online" in err
    assert snapshot(relay["path"])[0]["test_n"] == 0      # no number issued, nothing published
    assert sub.messages == []


def _dead_url():
    """An mqtt:// URL where nothing listens (a cluster node that is down)."""
    from tools.lab.broker import free_port
    return "mqtt://127.0.0.1:%d" % free_port()


def test_test_pulse_tries_the_next_broker_when_the_first_is_down(relay, cabinet, capsys, monkeypatch):
    cab = cabinet()
    monkeypatch.setenv("MQTT_URL", "%s,%s" % (_dead_url(), relay["broker"].url))
    code, out, err = run(capsys, "cabinet", "test-pulse", "cab1", "--wait", "10")
    assert code == 0, err
    assert [reason for reason, _ in cab.tests] == [""]
    # every broker down: said, nothing issued
    monkeypatch.setenv("MQTT_URL", "%s,%s" % (_dead_url(), _dead_url()))
    n = snapshot(relay["path"])[0]["test_n"]
    code, out, err = run(capsys, "cabinet", "test-pulse", "cab1", "--wait", "5")
    assert code != 0 and "cannot reach the broker" in err
    assert snapshot(relay["path"])[0]["test_n"] == n and len(cab.tests) == 1


def test_ota_push_and_the_console_try_the_next_broker_when_the_first_is_down(relay, cabinet):
    from relay import ota, testpulse
    cabinet()
    url = "%s,%s" % (_dead_url(), relay["broker"].url)
    sub = relay["subscribe"]("arcade/cab1/ota")
    pusher = ota.Pusher(url, "arcade", "cab1", relay["secret"], timeout=10, log=lambda *a: None)
    try:
        pusher.send("q")
    finally:
        pusher.close()
    sub.wait(lambda p, r: p == b"q\n", what="the OTA query through the second broker")
    with pytest.raises(ota.PushError, match="cannot reach the broker"):
        ota.Pusher("%s,%s" % (_dead_url(), _dead_url()), "arcade", "cab1", relay["secret"], timeout=5)
    # the console's test pulse (relay/testpulse.py)
    test_sub = relay["subscribe"]("arcade/cab1/test")
    with open_ledger(relay["path"]) as ledger:
        cab = ledger.get_cabinet("cab1")
        ok, text = testpulse.send(ledger, {"MQTT_URL": url, "ARCADE_TOPIC_PREFIX": "arcade"}, dict(cab, online=True), 1)
    assert ok, text
    test_sub.wait(lambda p, r: b'"t":"test"' in p.replace(b" ", b""), what="the console's test pulse")


@pytest.mark.parametrize("argv, shown", [
    (["nope"], "no cabinet 'nope'"),
    (["cab1", "--pulses", "0"], "--pulses 0 must be from 1 to 10"),
    (["cab1", "--pulses", "11"], "--pulses 11 must be from 1 to 10"),
], ids=["unknown cabinet", "zero pulses", "too many pulses"])
def test_test_pulse_bad_input(db, capsys, argv, shown):
    code, out, err = run(capsys, "cabinet", "test-pulse", *argv)
    assert code == 2 and shown in err
    assert snapshot(db["path"])[0]["test_n"] == 0


# -- the whole way: the relay's messages applied by the unchanged firmware (arcade simulate) ---------

@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, "build", "umqtt", "umqtt", "simple.py")),
                    reason="pinned umqtt.simple not fetched (make umqtt)")
def test_config_and_test_pulse_reach_the_real_firmware(relay, capsys, tmp_path):
    from tools.lab.stack import Cabinet
    relay["start"]()
    cab = Cabinet(tmp_path, "cab1", relay["secret"], relay["broker"].url, keepalive=5).start()
    try:
        cab.wait_connected()
        assert run(capsys, "cabinet", "set", "cab1", "--pulse-ms", "120", "--gap-ms", "500")[0] == 0
        ver = snapshot(relay["path"])[0]["ver"]
        cab.wait_for(lambda ls: [x for x in ls if x.get("event") == "config" and x.get("result") == "applied"],
                     20, "config applied")

        def status():
            with open_ledger(relay["path"]) as ledger:
                return ledger.get_cabinet("cab1")["status"] or {}
        wait_until(lambda: status().get("cfg") == ver, 20, what="status cfg %d at the relay" % ver)
        assert (status()["width_ms"], status()["gap_ms"], status().get("cfg_error")) == (120, 500, "")
        code, out, _ = run(capsys, "cabinet", "set", "cab1")
        assert code == 0 and "config %d in effect (pulse 120 ms, gap 500 ms): applied" % ver in out

        code, out, err = run(capsys, "cabinet", "test-pulse", "cab1", "--pulses", "2", "--wait", "20")
        assert code == 0, err
        pulses = cab.wait_for(lambda ls: len([x for x in ls if x.get("event") == "pulse"]) >= 2 and
                              [x for x in ls if x.get("event") == "pulse"], 20, "2 test pulses")
        assert [p.get("test") for p in pulses] == [True, True]
        # real clock: the width has an exact lower bound only (exact widths: the fake-clock firmware tests)
        assert min(p["width_ms"] for p in pulses) >= 120
        assert "drove test pulse" in out
    finally:
        cab.stop()


# -- the cabinet's screen: its price and promotion lines follow the relay (issue 16) ----------------

class _Png:
    """The simulated screen's PNG (scaled 4x, pixel-exact) as a panel for test_display.find_text."""

    def __init__(self, path, scale=4):
        from PIL import Image
        with Image.open(path) as img:
            self.img = img.convert("RGB")
        self.scale = scale

    def size(self):
        return self.img.size[0] // self.scale, self.img.size[1] // self.scale

    def glass(self, x, y):
        return self.img.getpixel((x * self.scale, y * self.scale))


def _shows(shot, *words):
    from test_display import find_text
    panel = _Png(shot)
    return all(find_text(panel, w) for w in words)


@pytest.mark.skipif(not os.path.exists(os.path.join(ROOT, "build", "umqtt", "umqtt", "simple.py")),
                    reason="pinned umqtt.simple not fetched (make umqtt)")
def test_the_simulated_screen_follows_prices_and_a_happy_hour(relay, capsys, tmp_path):
    import datetime
    from tools.lab.stack import Cabinet
    d = relay["start"]()
    d.screen_check = 0.2
    day = datetime.datetime.now(datetime.timezone.utc).replace(hour=3, minute=30, second=0, microsecond=0)
    d.wall = lambda: day.timestamp()                    # 03:30 UTC: before the happy hour below
    shot = tmp_path / "screen.png"
    cab = Cabinet(tmp_path, "cab1", relay["secret"], relay["broker"].url, keepalive=5,
                  extra_args=("--display", "st7789-240x240", "--screen", str(shot),
                              "--public-url", "https://pay.example.com")).start()
    try:
        cab.wait_connected()
        # the relay's first look issues the lines: 1 for 1.00 or 3 for 2.50 -> "from $0.84 a play"
        wait_until(lambda: shot.exists() and _shows(shot, "$0.84"), 30, what="the price line on the screen")
        code, out, err = run(capsys, "cabinet", "price", "cab1", "--price", "0.50")
        assert code == 0 and "from $0.50 a play" in out, (out, err)
        wait_until(lambda: _shows(shot, "$0.50"), 30, what="the new price line on the screen")
        assert not _shows(shot, "$0.84")
        assert not _shows(shot, "off"), "no promotion yet"
        # a happy hour 04:00-05:00 UTC every day: the dispatcher's clock crosses it
        code, out, err = run(capsys, "promo", "add", "--percent", "20", "--window", "04:00-05:00")
        assert code == 0, err
        assert not _shows(shot, "20%")
        d.wall = lambda: (day + datetime.timedelta(minutes=45)).timestamp()   # 04:15
        d.wake_event.set()
        wait_until(lambda: _shows(shot, "20%", "off"), 30, what="the happy hour on the screen")
        d.wall = lambda: (day + datetime.timedelta(minutes=95)).timestamp()   # 05:05: it closed
        d.wake_event.set()
        wait_until(lambda: not _shows(shot, "20%"), 30, what="the happy hour gone from the screen")
        assert _shows(shot, "$0.50")
        # a forged config (another secret, a higher version) and a stale one never change the screen
        before = shot.read_bytes()
        with open_ledger(relay["path"]) as ledger:
            ver = ledger.cabinet_config("cab1")["ver"]
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect("127.0.0.1", relay["broker"].port)
        pub.loop_start()
        try:
            for payload in (protocol.build_config("cab1", ver + 1000, 0, 0, 1, "f" * 64, price="FREE PLAY",
                                                  promo="FREE PLAY"),
                            protocol.build_config("cab1", ver - 1, 0, 0, 1, relay["secret"], price="FREE PLAY",
                                                  promo="FREE PLAY")):
                pub.publish("arcade/cab1/config", payload, qos=1).wait_for_publish(10)   # not retained
            cab.wait_for(lambda ls: len([x for x in ls if x.get("event") == "config" and
                                         x.get("result") in ("rejected", "ignored")]) >= 2, 20, "both refused")
        finally:
            pub.loop_stop()
            pub.disconnect()
        assert shot.read_bytes() == before and not _shows(shot, "FREE")
    finally:
        cab.stop()
