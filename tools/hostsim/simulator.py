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
  {"event":"pulse","cab":ID,"n":k,"of":P,"seq":S,"session":ID,"width_ms":W,"t":T}   (T: when the line went active)
  {"event":"ack","cab":ID,"ledger":L,"seq":S,"result":R,"reason":X,"pulses":N,"last":S,"t":T}  (after PUBACK)
  {"event":"status","cab":ID,"ledger":L,"last":S,"inhibited":bool,"held":S,"total":N,"cfg":V,"width_ms":W,"gap_ms":G,...,"t":T}
      (each retained status the firmware published: on connect and on every change)
  {"event":"held","cab":ID,"seq":S,"t":T}         (a credit held in flash while the inhibit line is active)
  {"event":"config","cab":ID,"result":"applied|ignored|rejected","detail":V_or_error,"t":T}
  {"event":"test","cab":ID,"result":"pulsed|rejected","detail":N_or_error,"t":T}
  {"event":"pulse",...,"test":true}               (a test pulse: no credit, seq/session null)
  {"event":"disconnected","cab":ID,"error":"...","t":T}
  {"event":"stopped","cab":ID,"t":T}
T is Unix time (float seconds). Human messages go to stderr.
"""
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"


def run(cab, url, secret, state, profile, board, prefix="arcade", keepalive=30, inhibit_file=None,
        pulse_ms=None, gap_ms=None, ca_data=None):
    """Write the simulated flash in `state` (config.json, board.json from `profile`, ca.pem) and run
    the firmware in this process until SIGTERM/SIGINT; returns the firmware's exit status."""
    umqtt = ROOT / "build" / "umqtt"
    state = Path(state)
    state.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(profile, state / "board.json")
    if pulse_ms is not None or gap_ms is not None:
        # the flashed board profile with other timing; the firmware checks it against its ranges
        custom = json.loads(Path(profile).read_text())
        custom.update({k: v for k, v in (("width_ms", pulse_ms), ("gap_ms", gap_ms)) if v is not None})
        (state / "board.json").write_text(json.dumps(custom))
    cfg = {"wifi_ssid": "hostsim", "wifi_password": "", "broker": url, "cabinet": cab,
           "secret": secret, "board": Path(profile).stem, "prefix": prefix, "keepalive": keepalive}
    if ca_data is not None:
        (state / "ca.pem").write_bytes(ca_data)
        cfg["ca"] = "ca.pem"
    cfg_path = state / "config.json"
    fd = os.open(cfg_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(cfg, f)
    os.chmod(cfg_path, 0o600)

    # the firmware's modules are top-level names on the device: put them first on the path
    for p in (umqtt, ROOT / "firmware", ROOT / "tools" / "hostsim"):
        sys.path.insert(0, str(p))
    import hosttime  # noqa: F401
    import machine
    import mpssl
    # this process is the board from here on: its `ssl` is MicroPython's (for ussl.py)
    sys.modules["ssl"] = mpssl
    import app as firmware
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
        d.setdefault("t", time.time())
        out.write(json.dumps(d, separators=(",", ":")) + "\n")
        out.flush()

    def watch(pin, t, v):
        if pin.id != board["coin_pin"]:
            return
        if v == active:
            pulse["on"], pulse["t"] = t, time.time()
            return
        if pulse["on"] is None:
            return
        width = time.ticks_diff(t, pulse["on"])
        pulse["on"] = None
        # what is in flash at the end of pulse k: cur with done = k - 1
        try:
            with open(journal_path) as f:
                cur = json.load(f).get("cur") or {}
        except OSError:
            cur = {}
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

    machine.watchers.append(watch)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        rc = firmware.main(str(state) + os.sep, emit)
    except SystemExit as e:
        rc = e.code or 0
    finally:
        sys.stdout = out
    if rc:
        return rc
    line("stopped")
    return 0

