# Over-the-air update, MQTT side (otalink.py): the messages of <prefix>/<cab>/ota as app.py hands
# them over, the `ota` status field each one leaves, the install refused while a credit is in
# flight, probation (timer, probe) and a rollback reported. MicroPython-compatible.
import json
import sys

import machine
import ota
import otaboot
import otalink
from fwutil import KEY, scratch
from test_fw_ota import FILES, release


class FakeCabinet:
    def __init__(self):
        self.key = KEY
        self.state = {"cur": None}
        self.ack = None
        self.hold = 0

    def pending_ack(self):
        return self.ack

    def held(self):
        return self.hold


class FakeCoin:
    def __init__(self):
        self.idles = 0

    def idle(self):
        self.idles += 1


class FakeApp:
    def __init__(self):
        self.cabinet = FakeCabinet()
        self.coin = FakeCoin()
        self.ota = None
        self.sent = ()
        self.events = []

    def emit(self, event, data):
        self.events.append((event, data))


def msg(head, data=b""):
    return head.encode() + b"\n" + data


def state(app):
    """The status field without its "<chip> <mpy> " head."""
    return app.ota.split(" ", 2)[2]


def fresh():
    machine.clear()
    otalink._u = None
    otalink._timer = None
    return scratch(), FakeApp()


def stage(root, app, raw, mac, files, piece=300):
    for off in range(0, len(raw), piece):
        otalink.handle(app, root, msg("m %d %d %s" % (len(raw), off, mac), raw[off:off + piece]))
    while state(app).startswith("want"):
        _, ver, name, off = state(app).split(" ")
        off = int(off)
        otalink.handle(app, root, msg("c %d %s" % (off, name), files[name][off:off + 400]))


def test_query_reports_chip_micropython_and_what_runs():
    root, app = fresh()
    assert otalink.handle(app, root, msg("q")) is False       # nothing going on: the module may go
    chip, mpy, st = app.ota.split(" ", 2)
    v = sys.implementation.version
    assert mpy == "%d.%d.%d" % (v[0], v[1], v[2]) and chip and st.startswith("idle ")


def test_staging_in_pieces_then_install_refused_while_a_credit_is_in_flight():
    root, app = fresh()
    raw, mac, files = release(FILES, chips=("host", "esp32", "esp32c3", "esp32s3"))
    stage(root, app, raw, mac, files)
    assert state(app) == "staged 2.0.0"
    for busy in ("cur", "ack", "hold"):
        if busy == "cur":
            app.cabinet.state["cur"] = {"seq": 3}
        elif busy == "ack":
            app.cabinet.ack = b"{}"
        else:
            app.cabinet.hold = 3
        assert otalink.handle(app, root, msg("i")) is True
        assert state(app) == "err busy", app.ota
        app.cabinet.state["cur"], app.cabinet.ack, app.cabinet.hold = None, None, 0
    assert otaboot.load(root)["cur"] == ""                     # nothing switched
    try:
        otalink.handle(app, root, msg("i"))
        assert False, "install must reset the board"
    except machine.ResetCalled:
        pass
    assert app.coin.idles == 1 and ("ota", "install 2.0.0") in app.events
    s = otaboot.load(root)
    assert (s["ver"], s["probe"], s["limit"]) == ("2.0.0", 1, 120)


def test_probation_probe_confirms_and_a_redelivered_install_reports_probe():
    root, app = fresh()
    raw, mac, files = release(FILES, chips=("host", "esp32", "esp32c3", "esp32s3"))
    stage(root, app, raw, mac, files)
    try:
        otalink.handle(app, root, msg("i"))
    except machine.ResetCalled:
        pass
    otaboot.select(root, [])                                   # the next boot
    otalink._u = None
    app = FakeApp()
    assert otalink.at_boot(app, root) is True                  # on probation: stays loaded
    assert state(app) == "probe 2.0.0"
    assert len(machine.timers) == 1 and machine.timers[0].period == 120000
    assert otalink.handle(app, root, msg("i")) is True         # the install message again
    assert state(app) == "probe 2.0.0"
    assert otalink.handle(app, root, msg("p 1a2b")) is False   # confirmed: the module may go
    assert state(app) == "ok 2.0.0 1a2b" and not machine.timers
    assert otaboot.load(root)["probe"] == 0


def test_probation_timer_resets_and_the_rollback_is_reported():
    root, app = fresh()
    raw, mac, files = release(FILES, chips=("host", "esp32", "esp32c3", "esp32s3"))
    stage(root, app, raw, mac, files)
    try:
        otalink.handle(app, root, msg("i"))
    except machine.ResetCalled:
        pass
    for boot in range(3):                                      # 3 boots that never see a probe
        otaboot.select(root, [])
        app = FakeApp()
        otalink.at_boot(app, root)
        if boot == 0:
            app.cabinet.state["cur"] = {"seq": 4, "done": 1}       # a credit being pulsed: no reset now
            n = len(machine.resets)
            machine.timers[0].fire()
            assert machine.timers[0].period == 5000 and len(machine.resets) == n
            app.cabinet.state["cur"] = None
        try:
            machine.timers[0].fire()
            assert False, "the probation timer must reset the board"
        except machine.ResetCalled:
            pass
        machine.clear()
    otaboot.select(root, [])
    app = FakeApp()
    assert otalink.at_boot(app, root) is False and state(app) == "failed 2.0.0"
    assert otaboot.load(root)["cur"] == ""


def test_bad_messages_leave_an_error_and_change_nothing():
    root, app = fresh()
    raw, mac, files = release(FILES, chips=("host", "esp32", "esp32c3", "esp32s3"))
    otalink.handle(app, root, b"no newline at all")
    assert state(app) == "err malformed"
    otalink.handle(app, root, msg("c 0 app.mpy", b"x"))
    assert state(app) == "err no release being staged"
    otalink.handle(app, root, msg("m %d 0 %s" % (len(raw), "0" * 64), raw))
    assert state(app) == "err bad signature"
    otalink.handle(app, root, msg("m 99999 0 %s" % mac, raw))
    assert state(app) == "err manifest size"
    otalink.handle(app, root, msg("z"))
    assert state(app) == "err unknown message"
    assert otaboot.load(root) == otaboot.legacy()


def test_every_ota_manifest_vector():
    from fwutil import vectors
    v = vectors()
    key = v["secret"].encode()
    assert len(v["ota_manifests"]) >= 3
    for c in v["ota_manifests"]:
        try:
            m = ota.parse(c["manifest"].encode(), c["mac"], key, "esp32", (1, 27, 0))
            ok = m["version"] == json.loads(c["manifest"])["version"]
        except ota.OtaError as e:
            ok = False
            assert str(e) == "bad signature", (c["name"], e)
        assert ok is c["valid"], c["name"]
