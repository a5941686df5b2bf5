"""Faults 4 and 9 of issue 3: the cabinet loses power in the middle of a pulse train; the firmware
sends more than 65,535 QoS 1 acks in one MQTT session.

Fault 4 runs the whole stack (relay, mosquitto, `arcade simulate` with its flash in a directory).
Fault 9 drives the firmware's own ack path (App._on_msg -> Cabinet.handle -> outbox -> App._flush
-> umqtt.simple publish with its PUBACK wait) in a child process against a real mosquitto, then
lets the firmware's main loop take a real credit in the same session.
"""
import json
import signal
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from relay import protocol
from relay.ledger import open_ledger
from tools.lab import stack
from tools.lab import trigger
from tools.lab.broker import Mosquitto

ROOT = stack.ROOT
WHSEC = "whsec_test_faults_cabinet"
RELAY_ENV = {"ARCADE_ACK_TIMEOUT": "1", "ARCADE_ACK_TIMEOUT_MAX": "2", "ARCADE_RESCAN": "0.5",
             "ARCADE_MQTT_KEEPALIVE": "5"}
WAIT = 30.0


@pytest.fixture
def broker(tmp_path):
    with Mosquitto(tmp_path / "mosquitto") as b:
        yield b


def pulses_of(cab, session):
    return [p["n"] for p in cab.pulses() if p["session"] == session]


def test_power_cut_between_pulses_finishes_the_train_once_and_acks_it(tmp_path, broker):
    """6-pulse credit; the simulator is SIGKILLed right after the 2nd pulse line (in the 500 ms gap),
    then again after the first pulse it drives on recovery. Each boot counts the pulse its journal
    had in flight, finishes the rest, and the ack says applied with all 6."""
    db = str(tmp_path / "arcade.db")
    with open_ledger(db) as ledger:
        secret = ledger.add_cabinet("cab1", price_cents=100, bundles=[(3, 250)], coins_per_credit=2)
    relay = stack.Relay(tmp_path, db, broker.url, WHSEC, extra_env=RELAY_ENV).start()
    # a long gap, so that a kill sent on the 2nd pulse line lands between pulses
    cab = stack.Cabinet(tmp_path, "cab1", secret, broker.url, keepalive=5,
                        extra_args=["--pulse-ms", "30", "--gap-ms", "500"])
    flash = cab.state_dir / "state.json"
    try:
        cab.start()
        cab.wait_connected()
        stack.wait_until(lambda: relay.health().get("broker") == "ok", WAIT, 0.1, "relay on the broker")
        sid, _, statuses = trigger.send(relay.webhook_url, WHSEC, "cab1", 250)
        assert statuses[0][0] == 200

        for after in (2, 3):            # cut after the 2nd pulse, then after the 3rd (the 1st of recovery)
            cab.wait_for(lambda ls: len([x for x in ls if x.get("event") == "pulse"]) >= after, WAIT,
                         "pulse line %d" % after)
            cab.stop(signal.SIGKILL)
            cur = json.loads(flash.read_text())["cur"]
            # the cut came between pulses: pulse `after` is complete on the line, its journal entry
            # still says `after - 1` done (the next write is right before the next edge)
            assert cur["session"] == sid and cur["done"] == after - 1, (after, cur)
            assert pulses_of(cab, sid) == list(range(1, after + 1))
            cab.start()
        # boot reports after recovery; the boot cut during its recovery never said anything. The last
        # one counted the pulse its journal had in flight (the 3rd, complete) and drove the other 3.
        boots = cab.wait_for(lambda ls: (lambda b: len(b) >= 2 and b)([x for x in ls if x.get("event") == "boot"]),
                             WAIT, "the boot after the second cut")
        assert [(b["recovered"], b["pulses"]) for b in boots] == [(False, 0), (True, 3)]

        ack = cab.wait_for(lambda ls: [x for x in ls if x.get("event") == "ack" and x["result"] == "applied"],
                           WAIT, "the applied ack")[0]
        assert (ack["pulses"], ack["last"]) == (6, ack["seq"])
        assert pulses_of(cab, sid) == [1, 2, 3, 4, 5, 6], "each pulse once, none twice, none lost"
        payment = stack.wait_until(lambda: _final(db, sid), WAIT, 0.1, "the payment's final state")
        assert (payment["state"], payment["ack_pulses"]) == ("applied", 6)
        # the broker redelivered the credit (no PUBACK before the cut): a duplicate, no pulse
        assert len(cab.pulses()) == 6
        state = json.loads(flash.read_text())
        assert (state["cur"], state["total"], state["recent"]) == (None, 6, [sid])
    finally:
        cab.stop()
        relay.stop()


def _final(db, sid):
    with open_ledger(db) as ledger:
        p = ledger.get_payment(sid)
    return p if p and p["state"] in ("applied", "duplicate", "rejected") else None


# Runs in a child process: the firmware on the host like `arcade simulate` does (sys.path, shims),
# but driven step by step so that 66,000 acks go out in seconds with no pulses.
DRIVER = r'''
import json, os, socket, sys, time
root, repo, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
for p in ("build/umqtt", "firmware", "tools/hostsim"):
    sys.path.insert(0, os.path.join(repo, p))
import hosttime, machine, config, protocol, fwmsgs
import app as fw
from coin import Coin

out = sys.stdout
sys.stdout = sys.stderr
def line(event, **kw):
    kw["event"] = event
    out.write(json.dumps(kw) + "\n")
    out.flush()

loud = []
def emit(event, data):
    if event == "ack" and loud:
        line("ack", ack=json.loads(data))
    elif event in ("connected", "disconnected"):
        line(event, detail=repr(data))

def watch(pin, t, v):
    if v and loud:
        line("pulse")
machine.watchers.append(watch)

board = config.load_board(root)
coin = Coin(board["coin_pin"], board["active"] == "high", board["width_ms"], board["gap_ms"])
cfg = config.load_config(root, board)
app = fw.App(cfg, board, coin, root, emit)
app.boot()
app._wifi()
app._connect()
# The firmware sets TCP_NODELAY on its socket (umqtt.simple writes one PUBLISH in several small
# writes; with Nagle each would wait for a delayed ACK): check it did, on the real host socket.
assert app.client.sock.raw._s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
key, cab = cfg["secret"].encode(), cfg["cabinet"]
first = fwmsgs.credit(key, cab, "ab" * 16, 1, 1, 1, "cs_test_pidwrap_1", int(time.time()),
                        app.cabinet.state["epoch"])
app._on_msg(app.t_credit, first)              # applied: one pulse, ack from flash
app._flush()
wraps, top, prev, started = 0, 0, app.client.pid, time.time()
for i in range(n):
    app._on_msg(app.t_credit, first)          # the same credit again: duplicate, ack to the outbox
    app._flush()                              # QoS 1 publish; returns on the PUBACK for its pid
    pid = app.client.pid
    top = max(top, pid)
    if pid < prev:
        wraps += 1
    prev = pid
line("done", acks=n + 1, pid=app.client.pid, top=top, wraps=wraps, seconds=time.time() - started,
     state_total=app.cabinet.state["total"], outbox=len(app.outbox))
loud.append(1)
app._serve()                                  # the main loop, same session: a real credit next
'''


class Acks:
    """Counts what the broker delivers on a cabinet's ack topic; keeps the non-duplicate ones."""

    def __init__(self, port, topic):
        self.count, self.kept = 0, []
        self.cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-pidwrap-acks")
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        assert subscribed.wait(10)

    def _on_message(self, client, userdata, msg):
        with self.cond:
            self.count += 1
            if b'"duplicate"' not in msg.payload:
                self.kept.append(json.loads(msg.payload))
            self.cond.notify_all()

    def wait(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                assert left > 0, "%s; %d acks seen" % (what, self.count)
                self.cond.wait(min(left, 0.5))      # woken by each ack, and twice a second

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def test_more_than_65535_qos1_acks_in_one_session_then_a_real_credit(tmp_path, broker):
    n = 66000
    secret = "9" * 64
    root = tmp_path / "flash"
    root.mkdir()
    board = json.loads((ROOT / "boards" / "esp32-devkitc.json").read_text())
    board.update(width_ms=20, gap_ms=20)
    (root / "board.json").write_text(json.dumps(board))
    (root / "config.json").write_text(json.dumps({
        "wifi_ssid": "hostsim", "wifi_password": "", "broker": broker.url, "cabinet": "cab9",
        "secret": secret, "board": board["name"], "prefix": "arcade", "keepalive": 10}))
    (root / "config.json").chmod(0o600)
    driver = tmp_path / "pidwrap.py"
    driver.write_text(DRIVER)
    acks = Acks(broker.port, "arcade/cab9/ack")
    log = open(tmp_path / "pidwrap.log", "w")
    proc = subprocess.Popen([sys.executable, str(driver), str(root) + "/", str(ROOT), str(n)], cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=log, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(json.loads(x) for x in proc.stdout), daemon=True)
    reader.start()
    try:
        acks.wait(lambda a: a.count >= n + 1 or proc.poll() is not None, 90, "every ack delivered by the broker")
        assert proc.poll() is None, "the firmware died after %d acks (see %s)" % (acks.count, log.name)
        done = stack.wait_until(lambda: [x for x in lines if x["event"] == "done"], WAIT, 0.05, "the driver's summary")[0]
        # the id ran up to 65,535, wrapped to 1 once, and every publish got its PUBACK (publish()
        # returns only then; a missing one would have raised through the firmware's deadline socket)
        print("pid wrap: %(acks)d acks in %(seconds).1f s, top id %(top)d, %(wraps)d wrap, id now %(pid)d" % done)
        assert (done["acks"], done["top"], done["wraps"]) == (n + 1, 65535, 1), done
        assert done["pid"] == n + 1 + 5 - 65535, "5 ids went to 4 SUBSCRIBEs (config, test, credit, ota) and the online status"
        assert (done["state_total"], done["outbox"]) == (1, 0)
        assert acks.count == n + 1, "the broker delivered each ack once"

        # the same session, past the wrap: a real credit pulses and its ack comes back signed
        ledger = "ab" * 16
        epoch = json.loads((root / "state.json").read_text())["epoch"]
        credit = protocol.build_credit("cab9", ledger, 2, 2, 2, "cs_test_pidwrap_2", secret, epoch=epoch)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-pidwrap-relay")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        try:
            pub.publish("arcade/cab9/credit", credit, qos=1).wait_for_publish(10)
            acks.wait(lambda a: any(x["seq"] == 2 for x in a.kept), WAIT, "the ack for seq 2")
        finally:
            pub.loop_stop()
            pub.disconnect()
        ack = [x for x in acks.kept if x["seq"] == 2][0]
        assert protocol.verify_ack(ack, secret)
        assert (ack["result"], ack["pulses"], ack["last"]) == ("applied", 2, 2)
        stack.wait_until(lambda: len([x for x in lines if x["event"] == "pulse"]) == 2, WAIT, 0.05, "2 pulses")
        assert not [x for x in lines if x["event"] == "disconnected"], "one session throughout"
    finally:
        proc.kill()
        proc.wait(10)
        reader.join(10)
        proc.stdout.close()
        log.close()
        acks.close()
