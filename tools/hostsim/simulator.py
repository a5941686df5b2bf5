"""The real cabinet firmware on this host, with simulated pins (`arcade simulate`, tools/commands/simulate.py).

The firmware in firmware/ runs unchanged on CPython through the fakes in tools/hostsim and the
pinned umqtt.simple in build/umqtt. Its flash is the --state directory (config.json, board.json,
state.json), so a restarted simulator remembers what it applied.

MQTT_URL=mqtts://host:port with --ca FILE talks TLS like the board: the CA lands in the flash as
ca.pem (config "ca"), and the firmware's ussl.py verifies the broker through tools/hostsim/mpssl.py,
the host's stand-in for MicroPython's ssl module (installed as `ssl` in this process only).
A broker whose certificate fails verification is a "disconnected" line whose error starts "TLS:";
the firmware keeps retrying with backoff, as the board would.

stdout carries only JSON lines, one per event, flushed:
  {"event":"boot","cab":ID,"recovered":bool,"pulses":N,"journal":"fresh|loaded|corrupt ...","ledger":L,"last":S,"t":T}
  {"event":"connected","cab":ID,"t":T}
  {"event":"pulse_on","cab":ID,"n":k,"seq":S,"session":ID,"t":T}   (the coin line went active: a pulse began)
  {"event":"pulse","cab":ID,"n":k,"of":P,"seq":S,"session":ID,"width_ms":W,"t":T}   (T: when the line went active)
      (a pulse_on with no pulse after it in that run: the process died with the line active)
  {"event":"ack","cab":ID,"ledger":L,"seq":S,"result":R,"reason":X,"pulses":N,"last":S,"t":T}  (after PUBACK)
  {"event":"status","cab":ID,"ledger":L,"last":S,"inhibited":bool,"held":S,"total":N,"cfg":V,"width_ms":W,"gap_ms":G,...,"t":T}
      (each retained status the firmware published: on connect and on every change)
  {"event":"held","cab":ID,"seq":S,"t":T}         (a credit held in flash while the inhibit line is active)
  {"event":"config","cab":ID,"result":"applied|ignored|rejected","detail":V_or_error,"t":T}
  {"event":"test","cab":ID,"result":"pulsed|rejected","detail":N_or_error,"t":T}
  {"event":"pulse",...,"test":true}               (a test pulse: no credit, seq/session null)
  {"event":"disconnected","cab":ID,"error":"...","t":T}
  {"event":"wifi","cab":ID,"status":201|202,"t":T}   (WiFi down: 201 no access point, 202 wrong password)
  {"event":"reset","cab":ID,"cause":"watchdog|crash|probation","t":T}  (the simulated board resets: this process
      starts the firmware again on the same flash, RTC memory kept, as the board would; a "boot" follows;
      probation: an updated firmware got no health probe in time, docs/protocol.md, Over-the-air updates)
  {"event":"ota","cab":ID,"detail":"install <version>","t":T}  (an over-the-air release installed: a reset
      follows, and the board boots the new slot of its --state directory, as boot.py does on a board)
  {"event":"stopped","cab":ID,"t":T}
  {"event":"screen","cab":ID,"file":PNG,"frame":N,"t":T}   (with a display and --screen: the PNG was rewritten)
T is Unix time (float seconds). Human messages go to stderr.

The board boots as a real one does: boot.py's work (coin line idle, a profile for another chip refused,
the crash-reset count in RTC memory), then main.py's (the app; an uncaught exception is logged to
crash.log and resets the board). Switches that make it as unkind as a board (`Board`):
  ticks_start     the tick counter starts here (ms, wraps at 2**30 like the ESP32's)
  watchdog_ms     the machine.WDT really resets the board when unfed this long (default: the firmware's)
  dns_delay       every DNS lookup blocks this many seconds (lwIP ignores socket timeouts)
  micropython     "1.22": umqtt's `import ussl` returns the built-in ssl first (tools/hostsim/mp122.py)
  chip            the chip the board really has (sys.implementation._machine); default: the profile's
  wifi_off_file   while this file exists the access point is gone (status 201)
and ARCADE_SIM_CLOCK=unset in the environment: a board whose clock NTP never set (status clock 0).
"""
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"
MACHINES = {"esp32": "Generic ESP32 module with ESP32", "esp32c3": "ESP32C3 module with ESP32C3",
            "esp32s3": "Generic ESP32S3 module with ESP32S3"}
_RESET_ENV = "ARCADE_SIM_RESET"      # "<reset cause> <RTC memory hex>", across a simulated reset


class Board:
    """How unkind the simulated board is (the `arcade simulate` switches)."""

    def __init__(self, ticks_start=None, watchdog_ms=None, dns_delay=0.0, micropython="1.27",
                 chip=None, wifi_off_file=None):
        self.ticks_start = ticks_start
        self.watchdog_ms = watchdog_ms
        self.dns_delay = dns_delay
        self.micropython = micropython
        self.chip = chip
        self.wifi_off_file = wifi_off_file


def run(cab, url, secret, state, profile, board, prefix="arcade", keepalive=30, inhibit_file=None,
        pulse_ms=None, gap_ms=None, ca_data=None, sim=None, display=None, screen_png=None):
    """Write the simulated flash in `state` (config.json, board.json from `profile`, ca.pem) and run
    the firmware in this process until SIGTERM/SIGINT; returns the firmware's exit status.
    display: {"block": the board profile's display object, "qr": PBM bytes, "price": str} puts a screen on
    the simulated board (a fake panel on its bus); screen_png: rewrite that PNG on every frame."""
    umqtt = ROOT / "build" / "umqtt"
    state = Path(state)
    state.mkdir(parents=True, exist_ok=True)
    sim = sim or Board()
    # the flashed board profile, with other timing if asked (the firmware checks it against its
    # ranges); nobody holds the BOOT button of a simulated board, so the safe-mode window is 0
    custom = json.loads(Path(profile).read_text())
    custom.update({k: v for k, v in (("width_ms", pulse_ms), ("gap_ms", gap_ms)) if v is not None})
    custom["safe_window_ms"] = 0
    if display is not None:
        custom["display"] = display["block"]
    (state / "board.json").write_text(json.dumps(custom))
    # MQTT_URL with several brokers (a cluster's nodes, comma-separated): config.json's list of them
    broker = [u.strip() for u in url.split(",")] if "," in url else url
    cfg = {"wifi_ssid": "hostsim", "wifi_password": "", "broker": broker, "cabinet": cab,
           "secret": secret, "board": Path(profile).stem, "prefix": prefix, "keepalive": keepalive}
    if ca_data is not None:
        (state / "ca.pem").write_bytes(ca_data)
        cfg["ca"] = "ca.pem"
    if display is not None:
        (state / "qr.pbm").write_bytes(display["qr"])
        cfg["screen"] = {"qr": "qr.pbm", "price": display.get("price", "")}
    cfg_path = state / "config.json"
    fd = os.open(cfg_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(cfg, f)
    os.chmod(cfg_path, 0o600)

    # the firmware's modules are top-level names on the device: put them first on the path
    for p in (umqtt, ROOT / "firmware", ROOT / "tools" / "hostsim"):
        sys.path.insert(0, str(p))
    import hosttime
    import machine
    import mpssl
    import network
    import usocket
    # this process is the board from here on: its `ssl` is MicroPython's (for brokertls.py)
    sys.modules["ssl"] = mpssl
    if sim.micropython == "1.22":
        import mp122
        mp122.install({"ssl": mpssl})
    if sim.ticks_start is not None:
        hosttime.start(sim.ticks_start)
    wall = time.time                # the host's clock, for the event lines
    if os.environ.get("ARCADE_SIM_CLOCK") == "unset":
        # a board whose clock NTP never set: it counts from 2000-01-01 at power-on (the firmware reads 0)
        start = wall()
        time.time = lambda: 946684800 + (wall() - start)
    usocket.dns_delay = sim.dns_delay
    sys.implementation._machine = MACHINES[sim.chip or board.get("chip", "esp32")]
    # what MicroPython's sys.implementation.version says on the board (the OTA status reports it)
    sys.implementation.version = tuple(int(x) for x in (sim.micropython + ".0").split(".")[:3])
    if sim.wifi_off_file:
        wifi_off = sim.wifi_off_file
        network.ap["fn"] = lambda: network.ap.__setitem__("up", not os.path.exists(wifi_off))
    after = os.environ.pop(_RESET_ENV, None)
    if after:                                       # this process is the board after a reset
        cause, mem = after.split(" ")
        machine.cause[0] = int(cause)
        machine.rtc_memory[:] = bytes.fromhex(mem) if mem != "-" else b""
    # boot.py's first step: the slot an over-the-air update installed (otaboot.py), first on the path
    import otaboot
    booted = otaboot.select(str(state) + os.sep)
    fresh = bool(booted["probe"]) or otaboot.rolled
    sys.modules.pop("otaboot", None)
    import safemode
    from config import mask

    out = sys.stdout
    sys.stdout = sys.stderr          # anything the firmware prints is for people
    active = 1 if board.get("active", "high") == "high" else 0
    if inhibit_file:
        blocked = 0 if board.get("inhibit_active", "low") == "low" else 1
        path = inhibit_file
        # polled by the fake input pin each time the firmware reads it
        machine.sources[board["inhibit_pin"]] = lambda: blocked if os.path.exists(path) else 1 - blocked
    journal_path = str(state / "state.json")
    pulse = {"on": None, "t": None}
    stop = {"requested": False}

    def line(event, fields=None):
        d = {"event": event, "cab": cab}
        if fields:
            d.update(fields)
        d.setdefault("t", wall())
        out.write(json.dumps(d, separators=(",", ":")) + "\n")
        out.flush()

    def journal_cur():
        try:
            with open(journal_path) as f:
                return json.load(f).get("cur") or {}
        except (OSError, ValueError):
            return {}

    def watch(pin, t, v):
        if pin.id != board["coin_pin"]:
            return
        if v == active:
            pulse["on"], pulse["t"] = t, wall()
            cur = journal_cur()
            line("pulse_on", {"n": cur.get("done", 0) + 1, "seq": cur.get("seq"), "session": cur.get("session"),
                              "t": pulse["t"]})
            return
        if pulse["on"] is None:
            return
        width = time.ticks_diff(t, pulse["on"])
        pulse["on"] = None
        # what is in flash at the end of pulse k: cur with done = k - 1
        cur = journal_cur()
        fields = {"n": cur.get("done", 0) + 1, "of": cur.get("pulses"), "seq": cur.get("seq"),
                  "session": cur.get("session"), "width_ms": width, "t": pulse["t"]}
        if not cur:
            fields["test"] = True
        line("pulse", fields)
        if stop["requested"]:
            raise SystemExit(0)      # finish the pulse on the line, then stop (line idle)

    def emit(event, data):
        if event == "ack":
            m = json.loads(data)
            line("ack", {k: m[k] for k in ("ledger", "seq", "result", "reason", "pulses", "last")})
        elif event == "boot":
            line("boot", data)
            print("booted from %s (journal: %s)" % (state, data["journal"]), file=sys.stderr)
        elif event == "connected":
            line("connected")
            print("connected to %s as %s" % (mask(url), cab), file=sys.stderr)
        elif event == "status":
            line("status", data)
        elif event == "held":
            line("held", {"seq": data})
        elif event == "wifi":
            line("wifi", {"status": data})
            print("WiFi down: %s" % {201: "no access point", 202: "wrong password"}.get(data, data),
                  file=sys.stderr)
        elif event == "ota":
            line("ota", {"detail": data})
        elif event in ("config", "test"):
            line(event, {"result": data[0], "detail": data[1]})
        elif event == "disconnected":
            line("disconnected", {"error": str(data)})
            if "TLS: " in str(data):
                print("arcade simulate: the broker at %s failed TLS verification: %s; retrying "
                      "(--ca must be the CA that signed its certificate, MQTT_URL's host a name "
                      "on it)" % (mask(url), data), file=sys.stderr)
            else:
                print("link lost (%s): reconnecting" % data, file=sys.stderr)

    def on_signal(signum, frame):
        stop["requested"] = True
        if pulse["on"] is None:
            raise SystemExit(0)

    lock = threading.Lock()

    def reset(cause, why):
        # the board resets: this process becomes the board after the reset (same flash, same RTC
        # memory, reset_cause() saying why), as a power cycle would restart it
        with lock:
            line("reset", {"cause": why})
            sys.stderr.write("arcade simulate: the board resets (%s); starting again on %s\n" % (why, state))
            sys.stderr.flush()
            env = dict(os.environ)
            env[_RESET_ENV] = "%d %s" % (cause, bytes(machine.rtc_memory).hex() or "-")
            os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)

    def watchdog():
        while True:
            time.sleep(0.05)
            if not machine.wdts:
                continue
            w = machine.wdts[-1]
            limit = sim.watchdog_ms or w.timeout
            if time.ticks_diff(time.ticks_ms(), w.last) > limit:
                reset(machine.WDT_RESET, "watchdog")

    if display is not None:
        import panels
        from config import check_board
        panel = panels.attach(check_board(json.loads((state / "board.json").read_text()))["display"])
        if screen_png:
            from tools.hostsim.screen import png

            def frame(p):
                png(p, screen_png)
                line("screen", {"file": str(screen_png), "frame": p.frames})
            panel.on_frame = frame
    machine.watchers.append(watch)
    machine.reset_hooks.append(lambda: reset(machine.HARD_RESET, "probation"))
    machine.real_timers = True
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=watchdog, daemon=True).start()
    root = str(state) + os.sep
    try:
        safemode.boot(root, fresh=fresh)
        rc = safemode.run(root, emit)
    except SystemExit as e:
        rc = e.code or 0
    except machine.ResetCalled:
        sys.stdout = out
        reset(machine.HARD_RESET, "crash")
    finally:
        sys.stdout = out
    if rc:
        return rc
    line("stopped")
    return 0

