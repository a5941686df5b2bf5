"""arcade broker config: a mosquitto 2.x configuration with a login per cabinet and an ACL.

  arcade broker config --out DIR [--listen HOST:PORT] [--tls-cert F --tls-key F] [--relay-host NAME]
                       [--user NAME] [--reload PIDFILE] [--db PATH] [--prefix P]

Writes DIR/mosquitto.conf (run it as is: `mosquitto -c DIR/mosquitto.conf`), DIR/passwd (hashed as
mosquitto_passwd writes), DIR/acl, DIR/data/ (persistence) and DIR/relay.env (the relay's MQTT_URL
with its own login), all 0600. The logins come from the relay database: each cabinet's own, made
with it, and the relay's. Run it again after adding, disabling or re-keying a cabinet, then send
mosquitto SIGHUP (it re-reads the password file and the ACL), or let --reload PIDFILE do it.
"""
import argparse
import os
import re
import signal
import sys

from relay.config import db_path
from relay.ledger import StorageError, open_ledger
from relay.mosquitto import BrokerConfigError, write_config


def _fail(message):
    print("arcade broker: %s" % message, file=sys.stderr)
    return 2


def _listen(text):
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError("%r is not HOST:PORT (e.g. 0.0.0.0:1883)" % text)
    return host.strip("[]") or "0.0.0.0", int(port)


def _reload(pidfile):
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError) as e:
        raise BrokerConfigError("--reload %s: can't read a process id from it (%s)" % (pidfile, e))
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as e:
        raise BrokerConfigError("--reload %s: can't signal process %d (%s)" % (pidfile, pid, e.strerror or e))
    return pid


def _relay_names(text):
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", name):
            raise argparse.ArgumentTypeError("relay name %r: use 1-32 letters, digits, '.', '_' or '-' (its "
                                             "ARCADE_RELAY_NAME)" % name)
    return names


def cmd_config(args):
    if not os.path.exists(args.db):
        return _fail("no relay database at %s: set ARCADE_DB (or --db) to the relay's database" % args.db)
    host, port = args.listen
    try:
        with open_ledger(args.db) as ledger:
            for name in args.relays:        # several relays on one PostgreSQL database: a login each
                ledger.relay_login(name)
            logins = ledger.broker_logins()
            disabled = [c for c in ledger.list_cabinets() if not c["enabled"]]
        extra = ["user %s" % args.user] if args.user else []
        paths = write_config(args.out, logins, args.prefix, host, port, args.tls_cert, args.tls_key, extra,
                             args.relay_host)
        pid = _reload(args.reload) if args.reload else None
    except BrokerConfigError as e:
        return _fail(str(e))
    except StorageError as e:
        return _fail("database %s: %s" % (args.db, e))
    print("wrote %s: mosquitto.conf, passwd (%d logins: the relay and %d cabinet(s)), acl, relay.env (0600)"
          % (args.out, len(logins["cabinets"]) + 1 + len(logins["relays"]), len(logins["cabinets"])))
    for user, _ in logins["relays"]:
        print("  relay %s: its own login, its MQTT_URL in relay-%s.env (0600)" % (user, user[len("arcade.relay."):]))
    for cab in disabled:
        print("  %s is disabled: no login%s" % (cab["id"], " (it still has %d credit(s) to deliver)" % cab["pending"]
                                                if cab["pending"] else ""))
    print("  listener %s:%d%s; the relay's MQTT_URL (its own login) is in %s" % (host, port, " (TLS)" if args.tls_cert
                                                                              else "", paths["env"]))
    if pid:
        print("sent SIGHUP to mosquitto (pid %d): it re-reads the logins and the ACL" % pid)
    else:
        print("start: mosquitto -c %s   (already running: send it SIGHUP, or pass --reload PIDFILE)" % paths["conf"])
    if not args.user:
        print("  mosquitto started as root runs as user 'mosquitto' (or --user NAME): that user must be able to read "
              "%s and write %s" % (args.out, os.path.join(args.out, "data")))
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="arcade broker", description="Broker identities: a mosquitto configuration "
                                "with a login per cabinet, one for the relay, and an ACL.")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("config", help="write mosquitto.conf, passwd, acl and relay.env into DIR",
                       description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--out", required=True, metavar="DIR", help="directory for the files (created if needed)")
    c.add_argument("--listen", type=_listen, default=("0.0.0.0", 1883), metavar="HOST:PORT",
                   help="where mosquitto listens (default 0.0.0.0:1883)")
    c.add_argument("--tls-cert", metavar="FILE", help="the broker's certificate (PEM): a TLS listener")
    c.add_argument("--tls-key", metavar="FILE", help="its private key (PEM)")
    c.add_argument("--relay-host", metavar="NAME", help="host name the relay reaches the broker at (relay.env; "
                   "default: the listen address, 127.0.0.1 for 0.0.0.0)")
    c.add_argument("--user", metavar="NAME", help="the system user mosquitto runs as (its `user` setting)")
    c.add_argument("--reload", metavar="PIDFILE", help="send SIGHUP to the mosquitto whose pid is in PIDFILE")
    c.add_argument("--relays", type=_relay_names, default=[], metavar="NAME,...",
                   help="several relays on one PostgreSQL database: a broker login for each ARCADE_RELAY_NAME "
                        "(kept in the database; its MQTT_URL goes to relay-NAME.env)")
    c.add_argument("--prefix", default=None, help="topic prefix (default: ARCADE_TOPIC_PREFIX or arcade)")
    c.add_argument("--db", default=None, help="relay database (default: ARCADE_DB or ./arcade.db)")
    args = p.parse_args(argv)
    args.db = args.db or db_path()
    args.prefix = args.prefix or os.environ.get("ARCADE_TOPIC_PREFIX") or "arcade"
    return cmd_config(args)


if __name__ == "__main__":
    sys.exit(main())
