"""arcade simulate: the real cabinet firmware on this host, with simulated pins, against MQTT_URL.

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
import argparse
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"


def fail(msg):
    print("arcade simulate: " + msg, file=sys.stderr)
    return 2


def boards():
    return sorted(p.stem for p in (ROOT / "boards").glob("*.json"))


def secret_from_db(cab_id, db):
    """The cabinet's secret from the relay database (relay.ledger), or raise LookupError."""
    try:
        from relay.ledger import open_ledger
    except ImportError as e:
        raise LookupError("cannot read the relay database (%s); pass --secret instead" % e)
    ledger = open_ledger(db)
    try:
        cab = ledger.get_cabinet(cab_id)
    finally:
        close = getattr(ledger, "close", None)
        if close:
            close()
    if cab is None:
        raise LookupError("cabinet %r is not in the relay database %s: add it with "
                          "`arcade cabinet add %s --price ...` or pass --secret" % (cab_id, db, cab_id))
    return cab["secret"]


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="arcade simulate",
        description="Run the real cabinet firmware on this host with simulated pins against the "
                    "broker in MQTT_URL (default %s). Prints one JSON line per coin pulse, ack and "
                    "connection event on stdout." % DEFAULT_MQTT_URL)
    p.add_argument("cabinet", metavar="ID", help="cabinet id (as registered in the relay)")
    p.add_argument("--state", required=True, metavar="DIR",
                   help="the simulated flash: config.json, board.json and state.json live here")
    p.add_argument("--secret", metavar="HEX",
                   help="the cabinet's secret (default: read from the relay database in ARCADE_DB)")
    p.add_argument("--board", default="esp32-devkitc", help="board profile from boards/ (default %(default)s)")
    p.add_argument("--prefix", default="arcade", help="topic prefix (default %(default)s)")
    p.add_argument("--keepalive", type=int, default=30, metavar="N",
                   help="MQTT keepalive in seconds (default %(default)s)")
    p.add_argument("--inhibit-file", metavar="PATH",
                   help="simulate the game's inhibit (coin-blocker) line: while PATH exists the "
                        "board's inhibit input reads active (the game refuses coins)")
    p.add_argument("--pulse-ms", type=int, metavar="MS",
                   help="coin pulse width in ms instead of the board's (fast soak and benchmark runs)")
    p.add_argument("--gap-ms", type=int, metavar="MS",
                   help="idle time between pulses in ms instead of the board's")
    p.add_argument("--ca", metavar="FILE",
                   help="CA certificate (PEM or DER) that signed the broker's certificate; required "
                        "with MQTT_URL=mqtts://..., copied into the state dir as ca.pem")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    url = os.environ.get("MQTT_URL") or DEFAULT_MQTT_URL
    secret = args.secret
    if not secret:
        db = os.environ.get("ARCADE_DB")
        if not db:
            return fail("no secret: pass --secret HEX or set ARCADE_DB to the relay database")
        try:
            secret = secret_from_db(args.cabinet, db)
        except LookupError as e:
            return fail(str(e))
    profile = ROOT / "boards" / (args.board + ".json")
    if not profile.is_file():
        return fail("unknown board %r: choose one of %s" % (args.board, ", ".join(boards())))
    board = json.loads(profile.read_text())
    if args.inhibit_file and board.get("inhibit_pin") is None:
        return fail("board %r has no inhibit_pin, so --inhibit-file has nothing to drive: choose "
                    "a board with one" % args.board)
    tls = url.startswith("mqtts://")
    ca_data = None
    if args.ca:
        if not tls:
            return fail("--ca %s is only used with an mqtts:// broker; MQTT_URL is plain mqtt://" % args.ca)
        try:
            ca_data = Path(args.ca).read_bytes()
        except OSError as e:
            return fail("--ca %s cannot be read: %s" % (args.ca, e.strerror or e))
        if not (b"-----BEGIN CERTIFICATE-----" in ca_data or ca_data[:1] == b"\x30"):
            return fail("--ca %s is not a certificate (PEM '-----BEGIN CERTIFICATE-----' or DER)" % args.ca)
    elif tls:
        return fail("MQTT_URL is mqtts://: pass --ca FILE, the CA certificate that signed the broker's "
                    "certificate, so the firmware can verify it")
    umqtt = ROOT / "build" / "umqtt"
    if not (umqtt / "umqtt" / "simple.py").is_file():
        return fail("the pinned umqtt.simple is missing from %s: run `make umqtt`" % umqtt)

    state = Path(args.state)
    state.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(profile, state / "board.json")
    if args.pulse_ms is not None or args.gap_ms is not None:
        # the flashed board profile with other timing; the firmware checks it against its ranges
        custom = json.loads(profile.read_text())
        custom.update({k: v for k, v in (("width_ms", args.pulse_ms), ("gap_ms", args.gap_ms)) if v is not None})
        (state / "board.json").write_text(json.dumps(custom))
    cfg = {"wifi_ssid": "hostsim", "wifi_password": "", "broker": url, "cabinet": args.cabinet,
           "secret": secret, "board": args.board, "prefix": args.prefix, "keepalive": args.keepalive}
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
    cab = args.cabinet
    active = 1 if board.get("active", "high") == "high" else 0
    if args.inhibit_file:
        blocked = 0 if board.get("inhibit_active", "low") == "low" else 1
        path = args.inhibit_file
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
        print("arcade simulate: the firmware refused its configuration (see above)", file=sys.stderr)
        return 2
    line("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
