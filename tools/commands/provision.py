"""arcade provision: write a cabinet's config.json (and its board profile) for flashing.

  arcade provision ID --board B --wifi-ssid S --wifi-password P [--broker URL] [--ca FILE] [--out build/]

Writes <out>/<ID>/config.json (mode 0600, directory 0700) with a NEW secret for the cabinet (stored in
the relay database: the board it replaces, and every credit signed for it, stop verifying) and its own broker
login (user = its id, its password) from the relay database (ARCADE_DB): whatever login --broker or
MQTT_URL carries (the relay's, typically) is never copied onto a board, whose flash anyone with a USB
cable can read. Also <out>/<ID>/board.json (a copy of boards/<B>.json) and, with --ca, ca.pem.
With a screen (a `display` object in the profile, or --display KIND for the suggested wiring), also
qr.pbm: the pay page's QR (the sticker's URL, ARCADE_PUBLIC_URL/pay/<ID>) as a 1-bit bitmap sized for
that display, and the price line in config.json's "screen" (tools/hostsim/screen.py).
The result is checked by the firmware's own validation (firmware/config.py: load_board and
load_config, the code the board runs at boot) before anything is put in place: bad input is a
clear error and leaves an earlier provisioning untouched. The secret and the WiFi password are
never printed; the broker URL is shown with its password masked.
"""
import argparse
import ipaddress
import json
import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

from dotenv import dotenv_values

from relay.config import db_path, mask_url
from relay import checkout
from relay.backends import redact
from relay.ledger import LedgerError, StorageError, ledger_exists, open_ledger, valid_cabinet_id
from relay.stickers import from_price, pay_url
from tools.hostsim import screen
from tools.hostsim.boards import BOARDS, CA_NAME, ProvisionError, board_names, fw_config, load_profile

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = ROOT / "build"


def _setting(name, environ=None, dotenv_path=".env"):
    env = os.environ if environ is None else environ
    if env.get(name):
        return env[name]
    if dotenv_path and os.path.exists(dotenv_path):
        return dotenv_values(dotenv_path).get(name) or None
    return None


def default_broker(environ=None, dotenv_path=".env"):
    return _setting("MQTT_URL", environ, dotenv_path)


def public_url_default(environ=None, dotenv_path=".env"):
    return _setting("ARCADE_PUBLIC_URL", environ, dotenv_path)


def _loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _write_private(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def provision(cab, board, wifi_ssid, wifi_password, broker, db, out=DEFAULT_OUT, ca=None, prefix="arcade",
              keepalive=30, boards=BOARDS, display=None, public_url=None):
    """Write <out>/<cab>/{config.json, board.json[, ca.pem]}; returns the directory.
    Raises ProvisionError (nothing changed) on bad input."""
    if not valid_cabinet_id(cab):
        raise ProvisionError("cabinet id %r is not valid: use 1 to 32 letters, digits, '-' or '_'" % (cab,))
    profile = load_profile(board, boards)
    raw_profile = json.loads((Path(boards) / (board + ".json")).read_text())
    if display is not None:
        raw_profile["display"] = screen.display_block(board, display)
        try:
            profile = fw_config().check_board(raw_profile, "boards/%s.json with --display %s" % (board, display))
        except fw_config().ConfigError as e:
            raise ProvisionError(str(e))
    if profile.get("display") is not None and not public_url:
        raise ProvisionError("the board has a screen, which shows the pay page's QR: set ARCADE_PUBLIC_URL "
                             "(or pass --public-url) to the address phones reach the relay at")
    if not broker:
        raise ProvisionError("no broker: pass --broker mqtt://user:pass@host:1883 (the address the board "
                             "reaches the broker at) or set MQTT_URL")
    fw = fw_config()
    # several brokers (a cluster's nodes), comma-separated: the board's config.json gets the list
    nodes = []
    for one in broker.split(","):
        try:
            mqtt = fw.parse_broker(one.strip(), "--broker", "broker")
        except fw.ConfigError as e:
            raise ProvisionError(str(e))
        if _loopback(mqtt["host"]):
            raise ProvisionError("--broker %s points at %s, which on the board is the board itself: use the "
                                 "broker's LAN address or host name" % (mask_url(one.strip()), mqtt["host"]))
        nodes.append(mqtt)
    if len(nodes) > 4 or len({n["ssl"] for n in nodes}) > 1:
        raise ProvisionError("--broker %s: a board takes 1 to 4 brokers, all mqtt:// or all mqtts://"
                             % mask_url(broker))
    mqtt = nodes[0]
    if ca is not None:
        if not mqtt["ssl"]:
            raise ProvisionError("--ca %s is only used with an mqtts:// broker; %s is plain mqtt://"
                                 % (ca, mask_url(broker)))
        try:
            ca_data = Path(ca).read_bytes()
        except OSError as e:
            raise ProvisionError("--ca %s cannot be read: %s" % (ca, e.strerror or e))
        if not (b"-----BEGIN CERTIFICATE-----" in ca_data or ca_data[:1] == b"\x30"):
            raise ProvisionError("--ca %s is not a certificate (PEM '-----BEGIN CERTIFICATE-----' or DER)" % ca)
    elif mqtt["ssl"]:
        raise ProvisionError("%s is mqtts://: pass --ca FILE, the CA certificate that signed the broker's "
                             "certificate, so the board can verify it" % mask_url(broker))
    if not ledger_exists(db):
        raise ProvisionError("no relay database at %s: set ARCADE_DB (or --db) to the relay's database" % redact(db))
    with open_ledger(db) as ledger:
        cabinet = ledger.get_cabinet(cab)
        if cabinet is None:
            raise ProvisionError("cabinet %r is not in the relay database %s: add it with `arcade cabinet add "
                                 "%s --price ...` first" % (cab, db, cab))
        broker_pw = ledger.broker_password(cab)
        if broker_pw is None:
            raise ProvisionError("cabinet %r has no broker login in %s: open it with this version's relay first"
                                 % (cab, db))
        # the cabinet's own login: host and port from --broker/MQTT_URL, never its user and password
        own = ["%s://%s:%s@%s:%d" % ("mqtts" if n["ssl"] else "mqtt", cab, broker_pw,
                                     "[%s]" % n["host"] if ":" in n["host"] else n["host"], n["port"]) for n in nodes]
        own = own[0] if len(own) == 1 else own
        # always a new secret: the board's flash is readable, and a replaced or re-provisioned board
        # must not share a key with the old one (whose captured credits would verify on it)
        secret = secrets.token_hex(32)
        config = {"wifi_ssid": wifi_ssid, "wifi_password": wifi_password, "broker": own, "cabinet": cab,
                  "secret": secret, "board": profile["name"], "prefix": prefix,
                  "keepalive": keepalive}
        if ca is not None:
            config["ca"] = CA_NAME
        qr = None
        if profile.get("display") is not None:
            qr = screen.qr_pbm(pay_url(public_url, cab), profile["display"])
            config["screen"] = {"qr": screen.QR_NAME,
                                "price": from_price(checkout.options(cabinet), cabinet["currency"])}

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        target = out / cab
        # Build everything in a private staging directory and check it with the firmware's loaders
        # there, so a rejected provisioning never touches an earlier good one.
        stage = Path(tempfile.mkdtemp(prefix=".%s." % cab, dir=out))
        try:
            _write_private(stage / "config.json", (json.dumps(config, indent=1) + "\n").encode())
            if display is None:
                shutil.copyfile(Path(boards) / (board + ".json"), stage / "board.json")
            else:
                (stage / "board.json").write_text(json.dumps(raw_profile, indent=1) + "\n")
            if qr is not None:
                (stage / screen.QR_NAME).write_bytes(qr)
            if ca is not None:
                _write_private(stage / CA_NAME, ca_data)
            root = str(stage) + "/"
            try:
                fw.load_config(root, fw.load_board(root))
            except fw.ConfigError as e:
                # the firmware's messages never contain the secret or the WiFi password
                raise ProvisionError(str(e).replace(root, ""))
            ledger.rekey_cabinet(cab, secret)
            target.mkdir(mode=0o700, exist_ok=True)
            os.chmod(target, 0o700)
            for name in (CA_NAME, screen.QR_NAME):
                if not (stage / name).exists() and (target / name).exists():
                    (target / name).unlink()
            for name in ("board.json", CA_NAME, screen.QR_NAME, "config.json"):
                if (stage / name).exists():
                    os.replace(stage / name, target / name)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        ledger.set_board(cab, profile["name"])
    return target, own if isinstance(own, str) else ",".join(own)


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="arcade provision",
        description="Write a cabinet's config.json (with its secret from the relay database), its board "
                    "profile as board.json and the broker's CA into OUT/ID/ for `arcade flash`.")
    p.add_argument("cabinet", metavar="ID", help="cabinet id, as registered with `arcade cabinet add`")
    p.add_argument("--board", required=True, help="board profile: %s" % ", ".join(board_names()))
    p.add_argument("--wifi-ssid", required=True, metavar="SSID")
    p.add_argument("--wifi-password", required=True, metavar="PASSWORD",
                   help="WiFi password ('' for an open network; '-' reads it from standard input, "
                        "keeping it out of the shell history)")
    p.add_argument("--broker", metavar="URL",
                   help="mqtt://user:pass@host:1883 or mqtts://... as the board reaches it, or several comma-separated (a "
                        "broker cluster's nodes, tried in turn) (default: MQTT_URL)")
    p.add_argument("--ca", metavar="FILE", help="CA certificate (PEM or DER) of an mqtts:// broker")
    p.add_argument("--prefix", default=None, help="topic prefix (default: ARCADE_TOPIC_PREFIX or arcade)")
    p.add_argument("--keepalive", type=int, default=30, metavar="S", help="MQTT keepalive (default %(default)s)")
    p.add_argument("--out", default=str(DEFAULT_OUT), metavar="DIR", help="output directory (default build/)")
    p.add_argument("--db", default=None, help="relay database (default: ARCADE_DB or ./arcade.db)")
    p.add_argument("--display", metavar="KIND", help="the cabinet has a screen: %s (add @90/@180/@270 to "
                   "rotate), wired as docs/hardware.md suggests for the board; or put a `display` object in "
                   "the board profile" % ", ".join(sorted(screen.KINDS)))
    p.add_argument("--public-url", metavar="URL", help="where phones reach the relay, for the screen's QR "
                   "(default: ARCADE_PUBLIC_URL)")
    args = p.parse_args(argv)
    password = args.wifi_password
    if password == "-":
        password = sys.stdin.readline().rstrip("\r\n")
    prefix = args.prefix or os.environ.get("ARCADE_TOPIC_PREFIX") or "arcade"
    broker = args.broker or default_broker()
    db = args.db or db_path()
    try:
        target, own = provision(args.cabinet, args.board, args.wifi_ssid, password, broker, db, args.out,
                                args.ca, prefix, args.keepalive, display=args.display,
                                public_url=args.public_url or public_url_default())
    except ProvisionError as e:
        print("arcade provision: %s" % e, file=sys.stderr)
        return 2
    except (LedgerError,) + StorageError as e:
        print("arcade provision: database %s: %s" % (redact(db), e), file=sys.stderr)
        return 2
    shown = os.path.relpath(target) if not os.path.relpath(target).startswith("..") else str(target)
    files = ["config.json (0600)", "board.json"] + ([CA_NAME] if args.ca else []) + \
        ([screen.QR_NAME] if (target / screen.QR_NAME).exists() else [])
    print("provisioned %s for %s in %s/: %s" % (args.cabinet, args.board, shown, ", ".join(files)))
    print("  broker %s (the cabinet's own login; regenerate the broker's logins with `arcade broker config`), "
          "topic prefix %s, WiFi %r; the secret and the passwords are in config.json only"
          % (mask_url(own), prefix, args.wifi_ssid))
    print("next: make mpy, then `arcade flash %s --port /dev/ttyUSB0`" % args.cabinet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
