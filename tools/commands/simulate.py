"""arcade simulate: the real cabinet firmware on this host, with simulated pins, against MQTT_URL.

This module checks the options and the secret; the machinery, TLS and the JSON lines it prints on
stdout (one per event) are described in tools/hostsim/simulator.py.
"""
import argparse
import json
import os
import sys
from pathlib import Path

from relay.stickers import pay_url
from tools.hostsim import screen, simulator
from tools.hostsim.boards import ProvisionError

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MQTT_URL = simulator.DEFAULT_MQTT_URL


def fail(msg):
    print("arcade simulate: " + msg, file=sys.stderr)
    return 2


def boards():
    return sorted(p.stem for p in (ROOT / "boards").glob("*.json"))


def secret_from_db(cab_id, db, what="secret"):
    """The cabinet's secret (what="broker": its broker password, or None) from the relay database
    (relay.ledger), or raise LookupError."""
    try:
        from relay.ledger import open_ledger
    except ImportError as e:
        raise LookupError("cannot read the relay database (%s); pass --secret-file instead" % e)
    ledger = open_ledger(db)
    try:
        cab = ledger.get_cabinet(cab_id)
        if cab is not None and what == "broker":
            return ledger.broker_password(cab_id)
    finally:
        close = getattr(ledger, "close", None)
        if close:
            close()
    if cab is None:
        raise LookupError("cabinet %r is not in the relay database %s: add it with "
                          "`arcade cabinet add %s --price ...` or pass --secret-file" % (cab_id, db, cab_id))
    return cab["secret"]


def with_login(url, user, password):
    """`url` (or each of a comma-separated list: a broker cluster's nodes) with its user and password replaced."""
    out = []
    for one in url.split(","):
        scheme, _, rest = one.strip().partition("://")
        out.append("%s://%s:%s@%s" % (scheme, user, password, rest.rpartition("@")[2]))
    return ",".join(out)


_STDIN_SECRET = "_ARCADE_SIMULATE_STDIN_SECRET"


def read_secret(name):
    """The secret from a file or stdin ('-'): its first line, stripped; raises ValueError/OSError."""
    if name == "-":
        text = sys.stdin.readline(1024)
    else:
        with open(name) as f:
            text = f.readline(1024)
    secret = text.strip()
    if not 16 <= len(secret) <= 512 or any(c.isspace() or not c.isprintable() for c in secret):
        raise ValueError("the secret in %s is not one line of 16 to 512 printable characters (the relay's are "
                         "64 hex digits, as stored by `arcade cabinet add`)" % ("stdin" if name == "-" else name))
    return secret


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="arcade simulate",
        description="Run the real cabinet firmware on this host with simulated pins against the "
                    "broker in MQTT_URL (default %s). Prints one JSON line per coin pulse, ack and "
                    "connection event on stdout." % DEFAULT_MQTT_URL)
    p.add_argument("cabinet", metavar="ID", help="cabinet id (as registered in the relay)")
    p.add_argument("--state", required=True, metavar="DIR",
                   help="the simulated flash: config.json, board.json and state.json live here")
    p.add_argument("--secret-file", metavar="FILE",
                   help="read the cabinet's secret from FILE, or from stdin with '-' "
                        "(default: from the relay database in ARCADE_DB)")
    p.add_argument("--secret", metavar="HEX", help=argparse.SUPPRESS)   # old spelling: visible in ps, warned
    p.add_argument("--broker", metavar="URL",
                   help="connect with exactly this mqtt[s]://user:pass@host:port (default: the host in "
                        "MQTT_URL with the cabinet's own login from ARCADE_DB, as provisioned on a board)")
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
    b = p.add_argument_group("an unkind board", "make the simulated board behave like a real ESP32 "
                             "where it hurts (tools/hostsim/simulator.py)")
    b.add_argument("--ticks-start", type=int, metavar="MS",
                   help="start the tick counter here (it wraps at 2^30 = %d ms like the ESP32's; "
                        "e.g. %d is 5 s before the wrap)" % (1 << 30, (1 << 30) - 5000))
    b.add_argument("--watchdog-ms", type=int, metavar="MS",
                   help="the watchdog resets the simulated board when unfed for MS (default: the "
                        "firmware's own timeout); the board then boots again on the same flash")
    b.add_argument("--dns-delay", type=float, default=0.0, metavar="S",
                   help="every DNS lookup blocks S seconds (lwIP ignores socket timeouts)")
    b.add_argument("--micropython", choices=("1.22", "1.27"), default="1.27",
                   help="1.22: umqtt's `import ussl` returns the built-in ssl, never a file "
                        "(default %(default)s)")
    b.add_argument("--chip", choices=sorted(simulator.MACHINES),
                   help="the chip the simulated board really has (default: the profile's)")
    b.add_argument("--wifi-off-file", metavar="PATH",
                   help="while PATH exists the WiFi access point is gone (status 201)")
    p.add_argument("--ca", metavar="FILE",
                   help="CA certificate (PEM or DER) that signed the broker's certificate; required "
                        "with MQTT_URL=mqtts://..., copied into the state dir as ca.pem")
    p.add_argument("--display", metavar="KIND",
                   help="give the simulated cabinet a screen: %s (add @90/@180/@270 to rotate), wired as "
                        "docs/hardware.md suggests; its attract screen shows the pay page's QR for "
                        "ARCADE_PUBLIC_URL (or --public-url)" % ", ".join(sorted(screen.KINDS)))
    p.add_argument("--public-url", metavar="URL", help="where phones reach the relay (default: "
                   "ARCADE_PUBLIC_URL, else http://localhost:8000)")
    p.add_argument("--screen", metavar="FILE.png",
                   help="write the simulated screen to this PNG (4x, pixel-exact) every time it changes")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    url = args.broker or os.environ.get("MQTT_URL") or DEFAULT_MQTT_URL
    if not args.broker and os.environ.get("ARCADE_DB"):
        # a board logs in as itself (arcade provision writes its own login): so does the simulator,
        # whatever login MQTT_URL (the relay's, in an operator's .env) carries
        try:
            own = secret_from_db(args.cabinet, os.environ["ARCADE_DB"], "broker")
        except LookupError as e:
            return fail(str(e))
        if own:
            url = with_login(url, args.cabinet, own)
    secret = args.secret
    if secret:
        print("arcade simulate: warning: --secret puts the secret in the process list (ps): use --secret-file FILE "
              "or --secret-file - (stdin)", file=sys.stderr)
    elif args.secret_file == "-" and os.environ.get(_STDIN_SECRET):
        secret = os.environ[_STDIN_SECRET]     # this process is the board after a simulated reset
    elif args.secret_file:
        try:
            secret = read_secret(args.secret_file)
        except (OSError, ValueError) as e:
            return fail(str(e))
        if args.secret_file == "-":
            # a simulated reset re-executes this process; stdin is spent by then. The environment is
            # readable only by this user (/proc/PID/environ is 0400), unlike argv
            os.environ[_STDIN_SECRET] = secret
    if not secret:
        db = os.environ.get("ARCADE_DB")
        if not db:
            return fail("no secret: pass --secret-file FILE (or - for stdin) or set ARCADE_DB to the relay database")
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
    display = None
    if args.display or board.get("display") is not None:
        try:
            block = screen.display_block(args.board, args.display) if args.display else board["display"]
            public = args.public_url or os.environ.get("ARCADE_PUBLIC_URL") or "http://localhost:8000"
            display = {"block": block, "qr": screen.qr_pbm(pay_url(public, args.cabinet), block)}
        except ProvisionError as e:
            return fail(str(e))
        except KeyError as e:
            return fail("the display in boards/%s.json is incomplete (%s): see docs/hardware.md" % (args.board, e))
    elif args.screen:
        return fail("--screen needs a screen: pass --display KIND (%s)" % ", ".join(sorted(screen.KINDS)))
    umqtt = ROOT / "build" / "umqtt"
    if not (umqtt / "umqtt" / "simple.py").is_file():
        return fail("the pinned umqtt.simple is missing from %s: run `make umqtt`" % umqtt)

    if args.ticks_start is not None and not 0 <= args.ticks_start < 1 << 30:
        return fail("--ticks-start %d: the tick counter runs from 0 to %d" % (args.ticks_start, (1 << 30) - 1))
    if args.watchdog_ms is not None and args.watchdog_ms < 1:
        return fail("--watchdog-ms must be at least 1")
    if args.dns_delay < 0:
        return fail("--dns-delay must be 0 or more seconds")
    sim = simulator.Board(ticks_start=args.ticks_start, watchdog_ms=args.watchdog_ms,
                          dns_delay=args.dns_delay, micropython=args.micropython, chip=args.chip,
                          wifi_off_file=args.wifi_off_file)
    rc = simulator.run(args.cabinet, url, secret, args.state, profile, board, prefix=args.prefix,
                       keepalive=args.keepalive, inhibit_file=args.inhibit_file, pulse_ms=args.pulse_ms,
                       gap_ms=args.gap_ms, ca_data=ca_data, sim=sim, display=display,
                       screen_png=Path(args.screen).resolve() if args.screen else None)
    if rc:
        print("arcade simulate: the firmware refused its configuration (see above)", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
