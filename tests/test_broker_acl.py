"""Broker identities (issue 9, attack 2): the configuration `arcade broker config` writes, run by a real
mosquitto. With cabinet A's own login nobody reads or writes B's topics or takes B's or the relay's
client id; A's own payments still pulse exactly; the password file is mosquitto's own format."""
import json
import os
import stat
import subprocess
import threading

import paho.mqtt.client as mqtt
import pytest

from relay import mosquitto, protocol
from relay.config import parse_mqtt_url
from relay.ledger import open_ledger
from tools import cli
from tools.lab import stack, trigger
from tools.lab.broker import Mosquitto, end_process, free_port, mosquitto_path, wait_port

WEBHOOK_SECRET = "whsec_test_acl"


class Client:
    """A paho client with a login that records every message and whether it was ever dropped."""

    def __init__(self, port, user, password, client_id, subscribe=()):
        self.messages = []
        self.dropped = threading.Event()
        self.cond = threading.Condition()
        self.connected = threading.Event()
        self.rc = None
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True,
                                  protocol=mqtt.MQTTv311)
        self.client.username_pw_set(user, password)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a: self.dropped.set()
        self.client.on_message = self._on_message
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self._subs = list(subscribe)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.rc = reason_code
        if not reason_code.is_failure and self._subs:
            client.subscribe([(t, 1) for t in self._subs])
        self.connected.set()

    def _on_message(self, client, userdata, msg):
        with self.cond:
            self.messages.append((msg.topic, msg.payload))
            self.cond.notify_all()

    def wait_for(self, payload, timeout=10):
        with self.cond:
            assert self.cond.wait_for(lambda: any(p == payload for _, p in self.messages), timeout), \
                "no %r; got %r" % (payload, self.messages)
            return list(self.messages)

    def publish(self, topic, payload, retain=False):
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def acl_world(tmp_path):
    db = str(tmp_path / "arcade.db")
    ledger = open_ledger(db)
    secrets_ = {c: ledger.add_cabinet(c, price_cents=100, coins_per_credit=2) for c in ("cab-a", "cab-b")}
    broker = Mosquitto(tmp_path / "mosquitto", logins=ledger.broker_logins()).start()
    clients = []

    def client(who, client_id=None, subscribe=(), password=None):
        if who == "relay":
            user, pw = ledger.broker_logins()["relay"]
        else:
            user, pw = who, ledger.broker_password(who)
        c = Client(broker.port, user, password or pw, client_id or user, subscribe)
        clients.append(c)
        assert c.connected.wait(10), "no CONNACK for %s" % who
        if subscribe and not c.rc.is_failure:
            assert c.subscribed.wait(10)
        return c

    yield {"db": db, "ledger": ledger, "broker": broker, "client": client, "secrets": secrets_, "tmp": tmp_path}
    for c in clients:
        c.close()
    broker.stop()
    ledger.close()


def test_a_cabinet_login_reads_and_writes_only_its_own_topics(acl_world):
    client = acl_world["client"]
    relay = client("relay", subscribe=["arcade/+/ack", "arcade/+/status"])
    b = client("cab-b", subscribe=["arcade/cab-b/credit", "arcade/cab-b/config", "arcade/cab-b/test"])
    a = client("cab-a", subscribe=["arcade/#", "arcade/cab-b/credit", "arcade/cab-b/config", "#"])
    # A writes to each of B's topics: the broker drops them all
    for kind in ("credit", "config", "test", "status", "ack"):
        a.publish("arcade/cab-b/%s" % kind, b'{"t":"%s","forged":true}' % kind.encode())
    # the genuine traffic afterwards reaches its readers, and nothing of A's did before it
    relay.publish("arcade/cab-b/credit", b"relay->b credit")
    relay.publish("arcade/cab-b/config", b"relay->b config", retain=True)
    got = b.wait_for(b"relay->b config")
    assert sorted(p for _, p in got) == [b"relay->b config", b"relay->b credit"]
    b.publish("arcade/cab-b/status", b"b status", retain=True)
    b.publish("arcade/cab-b/ack", b"b ack")
    got = relay.wait_for(b"b ack")
    assert [p for _, p in got] == [b"b status", b"b ack"], "the relay saw something from A on B's topics"
    # A subscribed to arcade/# and #: it saw none of the relay's or B's messages
    a.publish("arcade/cab-a/status", b"a status")          # its own topic: allowed (the relay gets it)
    relay.wait_for(b"a status")
    assert a.messages == []
    # the relay can't read credits either, nor B another cabinet's anything
    assert not [t for t, _ in relay.messages if t.endswith(("/credit", "/config", "/test"))]


@pytest.mark.parametrize("victim", ["cab-b", "relay"])
def test_a_cabinet_login_cannot_take_another_client_id(acl_world, victim):
    client = acl_world["client"]
    if victim == "relay":
        target = client("relay", client_id="arcade-relay-%s" % acl_world["ledger"].ledger_id[:8],
                        subscribe=["arcade/+/status"])
        stolen_id, probe = "arcade-relay-%s" % acl_world["ledger"].ledger_id[:8], "arcade/cab-b/status"
        writer = client("cab-b")
    else:
        target = client("cab-b", subscribe=["arcade/cab-b/credit"])
        stolen_id, probe = "cab-b", "arcade/cab-b/credit"
        writer = client("relay")
    thief = client("cab-a", client_id=stolen_id)          # MQTT 3.1.1 §3.1.4 would drop the victim
    assert not thief.rc.is_failure
    # the victim's session is intact: a message after the thief's connect still reaches it, and it
    # was never dropped (the broker took the thief's client id from its user name, cab-a)
    writer.publish(probe, b"after the thief")
    target.wait_for(b"after the thief")
    assert not target.dropped.is_set()


def test_wrong_password_anonymous_and_a_disabled_cabinet_are_refused(acl_world):
    client = acl_world["client"]
    assert client("cab-a", password="0" * 32).rc.is_failure
    anon = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="anon", protocol=mqtt.MQTTv311)
    result = {}
    done = threading.Event()
    anon.on_connect = lambda c, u, f, rc, p: (result.setdefault("rc", rc), done.set())
    anon.connect("127.0.0.1", acl_world["broker"].port)
    anon.loop_start()
    try:
        assert done.wait(10) and result["rc"].is_failure
    finally:
        anon.loop_stop()
        anon.disconnect()
    ledger = acl_world["ledger"]
    ledger.set_enabled("cab-b", False)
    broker = acl_world["broker"]
    broker.reload(ledger.broker_logins())
    # SIGHUP is asynchronous: wait (bounded) until the broker has re-read the password file
    stack.wait_until(lambda: client("cab-b").rc.is_failure, 10, what="the disabled cabinet refused")
    assert not client("cab-a").rc.is_failure


def test_arcade_broker_config_runs_as_is_and_hashes_like_mosquitto_passwd(tmp_path, capsys):
    db = str(tmp_path / "arcade.db")
    with open_ledger(db) as ledger:
        ledger.add_cabinet("cab-a", price_cents=100)
        cab_pw = ledger.broker_password("cab-a")
        secret = ledger.get_cabinet("cab-a")["secret"]
    assert cab_pw != secret and len(cab_pw) == 32
    out = tmp_path / "broker"
    port = free_port()
    argv = ["broker", "config", "--out", str(out), "--listen", "127.0.0.1:%d" % port, "--db", db]
    if os.geteuid() == 0:
        argv += ["--user", "root"]        # as root mosquitto would switch to user 'mosquitto'
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    for name in ("mosquitto.conf", "passwd", "acl", "relay.env"):
        assert stat.S_IMODE(os.stat(out / name).st_mode) == 0o600, name
    assert cab_pw not in printed and "relay.env" in printed
    conf = (out / "mosquitto.conf").read_text()
    for line in ("allow_anonymous false", "use_username_as_clientid true", "persistence true",
                 "set_tcp_nodelay true", "max_packet_size 2048"):
        assert line + "\n" in conf
    url = (out / "relay.env").read_text().split("MQTT_URL=")[1].strip()
    relay_login = parse_mqtt_url(url)
    assert relay_login["username"] == "arcade.relay" and relay_login["port"] == port
    # mosquitto_passwd's own line verifies with our reader, ours with mosquitto itself (below)
    theirs = tmp_path / "theirs"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(theirs), "someone", "pw-123"], check=True,
                   capture_output=True)
    line = theirs.read_text().strip().split(":", 1)[1]
    assert line.startswith("$7$") and mosquitto.check_password("pw-123", line)
    assert not mosquitto.check_password("pw-124", line)
    proc = subprocess.Popen([mosquitto_path(), "-c", str(out / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        assert wait_port("127.0.0.1", port, 10, proc), proc.stderr.read().decode() if proc.poll() is not None else ""
        for user, pw, ok in (("arcade.relay", relay_login["password"], True), ("cab-a", cab_pw, True),
                             ("cab-a", relay_login["password"], False)):
            c = Client(port, user, pw, user)
            try:
                assert c.connected.wait(10)
                assert c.rc.is_failure != ok, (user, c.rc)
            finally:
                c.close()
        # a cabinet added later: `arcade broker config` again with --reload PIDFILE, and it logs in
        with open_ledger(db) as ledger:
            ledger.add_cabinet("cab-new", price_cents=100)
            new_pw = ledger.broker_password("cab-new")
        pidfile = tmp_path / "mosquitto.pid"
        pidfile.write_text("%d\n" % proc.pid)
        assert cli.main(argv + ["--reload", str(pidfile)]) == 0
        assert "SIGHUP" in capsys.readouterr().out

        def logs_in():
            c = Client(port, "cab-new", new_pw, "cab-new")
            try:
                return c.connected.wait(10) and not c.rc.is_failure
            finally:
                c.close()
        stack.wait_until(logs_in, 10, what="the new cabinet's login after SIGHUP")
        assert proc.poll() is None, "mosquitto survived the reload"
        assert cli.main(argv + ["--reload", str(tmp_path / "no-such.pid")]) == 2
        assert "can't read a process id" in capsys.readouterr().err
    finally:
        end_process(proc)
        proc.stderr.close()


def test_own_payments_pulse_exactly_with_per_cabinet_logins_while_a_attacks_b(acl_world):
    ledger, broker, tmp = acl_world["ledger"], acl_world["broker"], acl_world["tmp"]
    relay = stack.Relay(tmp, acl_world["db"], broker.relay_url, WEBHOOK_SECRET).start()
    cabs = {"cab-a": stack.Cabinet(tmp, "cab-a", acl_world["secrets"]["cab-a"], broker.cabinet_url("cab-a"))}
    # B as an operator runs it: ARCADE_DB and the relay's MQTT_URL from .env, no --secret: `arcade
    # simulate` takes B's secret and B's own login from the ledger (the relay's login can't read credits)
    cabs["cab-b"] = stack.Cabinet(tmp, "cab-b", None, broker.relay_url, extra_env={"ARCADE_DB": acl_world["db"]})
    for c in cabs.values():
        c.start()
    try:
        for c in cabs.values():
            c.wait_connected()
        stack.wait_until(lambda: relay.health().get("broker") == "ok", 20, what="relay on the broker")
        stack.wait_until(lambda: (ledger.get_cabinet("cab-b")["status"] or {}).get("online"), 20,
                         what="B's status at the relay")
        b_before = ledger.get_cabinet("cab-b")["status"]
        # A, with its own login, replays a correctly signed credit of its own onto B's credit topic and
        # says B is offline: both dropped by the broker
        a = acl_world["client"]("cab-a", client_id="cab-a-attacker")
        a.publish("arcade/cab-b/credit", protocol.build_credit("cab-b", ledger.ledger_id, 50, 1, 2, "cs_test_by_a",
                                                              acl_world["secrets"]["cab-a"]))
        a.publish("arcade/cab-b/status", json.dumps({"t": "status", "cab": "cab-b", "online": False}).encode(),
                  retain=True)
        sid, _, _ = trigger.send(relay.webhook_url, WEBHOOK_SECRET, "cab-a", 100)
        stack.wait_until(lambda: ledger.get_payment(sid)["state"] == "applied", 30, what="A's payment applied")
        assert len(cabs["cab-a"].wait_pulses(2)) == 2
        sid_b, _, _ = trigger.send(relay.webhook_url, WEBHOOK_SECRET, "cab-b", 100)
        stack.wait_until(lambda: ledger.get_payment(sid_b)["state"] == "applied", 30, what="B's payment applied")
        assert len(cabs["cab-b"].wait_pulses(2)) == 2
        assert ledger.get_cabinet("cab-b")["online"]
        assert ledger.get_cabinet("cab-b")["status"]["fw"] == b_before["fw"]
        assert len(cabs["cab-a"].pulses()) == 2 and len(cabs["cab-b"].pulses()) == 2
    finally:
        for c in cabs.values():
            c.stop()
        relay.stop()


@pytest.mark.parametrize("extra, shown", [
    (["--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
    (["--tls-cert", "missing.pem", "--tls-key", "missing.key"], "missing.pem is not a file"),
    (["--db", "nowhere.db"], "no relay database at nowhere.db"),
    (["--listen", "1883"], "not HOST:PORT"),
], ids=["cert without key", "missing cert", "no database", "no host"])
def test_arcade_broker_config_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, capsys, monkeypatch, extra,
                                                                          shown):
    monkeypatch.chdir(tmp_path)
    with open_ledger(str(tmp_path / "arcade.db")) as ledger:
        ledger.add_cabinet("cab-a", price_cents=100)
    (tmp_path / "cert.pem").write_text("x")
    argv = ["broker", "config", "--out", "out", "--db", "arcade.db"] + extra
    try:
        code = cli.main(argv)
    except SystemExit as e:            # argparse's own errors (exit 2, message on stderr)
        code = e.code
    assert code == 2 and shown in capsys.readouterr().err
    assert not (tmp_path / "out" / "passwd").exists()


def test_arcade_broker_config_relays_gives_each_relay_its_own_login_with_the_relays_rights(tmp_path, capsys):
    """Several relays on one database: each its own login (the broker takes it as the client id), in
    the password file and the ACL with the relay's rights, its MQTT_URL in a 0600 relay-NAME.env; asking
    again keeps the passwords; a bad name is refused and writes nothing."""
    db = str(tmp_path / "arcade.db")
    with open_ledger(db) as ledger:
        ledger.add_cabinet("cab-a", price_cents=100)
    out = tmp_path / "broker"
    argv = ["broker", "config", "--out", str(out), "--listen", "127.0.0.1:%d" % free_port(), "--db", db]
    assert cli.main(argv + ["--relays", "r1,r2"]) == 0
    printed = capsys.readouterr().out
    urls = {}
    for name in ("r1", "r2"):
        env = out / ("relay-%s.env" % name)
        assert stat.S_IMODE(os.stat(env).st_mode) == 0o600
        urls[name] = parse_mqtt_url(env.read_text().split("MQTT_URL=")[1].strip())
        assert urls[name]["username"] == "arcade.relay." + name
        assert urls[name]["password"] not in printed
    acl = (out / "acl").read_text()
    for user in ("arcade.relay.r1", "arcade.relay.r2"):
        block = acl.split("user %s\n" % user)[1].split("\n\n")[0]
        assert "topic write arcade/+/credit" in block and "topic read arcade/+/ack" in block
        assert user + ":$7$" in (out / "passwd").read_text()
    assert "user cab-a\n" in acl and "topic write arcade/+/credit" not in acl.split("user cab-a\n")[1]
    assert cli.main(argv + ["--relays", "r1"]) == 0
    assert parse_mqtt_url((out / "relay-r1.env").read_text().split("MQTT_URL=")[1].strip()) == urls["r1"]
    with pytest.raises(SystemExit):
        cli.main(argv + ["--relays", "r3,../x"])
    with open_ledger(db) as ledger:
        assert [u for u, _ in ledger.broker_logins()["relays"]] == ["arcade.relay.r1", "arcade.relay.r2"]
