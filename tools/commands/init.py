"""arcade init: write a VPS's deployment kit (docs/deploy.md).

  arcade init --public-url https://pay.example.com [--dir /etc/arcade] [--data-dir /var/lib/arcade]
              [--user arcade] [--name TEXT] [--tz ZONE] [--force] < secrets

Writes into --dir: arcade.env (0600, the relay's user: the Stripe secrets and the broker password),
mosquitto.conf + mosquitto.passwd (0600, the broker's user) + mosquitto.acl (the relay's login and each
enabled cabinet's own, from the ledger, which is created when missing), arcade-relay.service (hardened systemd
unit), mosquitto.service.d/arcade.conf (a drop-in for Debian's mosquitto), Caddyfile (automatic
HTTPS, only the relay's public paths) and nginx-arcade.conf (the alternative). Creates --data-dir 0700
with .env pointing at arcade.env.

The Stripe secrets are asked for (hidden) on a terminal, or read from stdin: the webhook signing
secret on the first line, the API key (or an empty line) on the second. Never on the command line.
An existing kit is refused without --force; with --force the configuration is rewritten and the
secrets already there are kept, never replaced.
"""
import argparse
import getpass
import sys

from tools.deploy import kit
from tools.deploy.broker import BrokerKitError


def _read_secrets(stdin):
    if stdin.isatty():
        webhook = getpass.getpass("Stripe webhook signing secret (whsec_..., hidden): ").strip()
        api_key = getpass.getpass("Stripe secret API key (sk_test_... first; Enter for none, hidden): ").strip()
    else:
        webhook = stdin.readline().strip()
        api_key = stdin.readline().strip()
    return webhook, api_key


def main(argv=None, stdin=None):
    stdin = sys.stdin if stdin is None else stdin
    p = argparse.ArgumentParser(prog="arcade init", description=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--public-url", required=True, help="the https:// address phones and Stripe reach the relay at")
    p.add_argument("--dir", default="/etc/arcade", help="where the kit goes (default %(default)s)")
    p.add_argument("--data-dir", default="/var/lib/arcade", help="the relay's database directory (default %(default)s)")
    p.add_argument("--user", default="arcade", help="system user the relay runs as (default %(default)s)")
    p.add_argument("--broker-user", default="mosquitto", help="system user of the broker (default %(default)s)")
    p.add_argument("--name", default="Arcade", help="your arcade's name on the pay page (default %(default)s)")
    p.add_argument("--tz", default="UTC", help="IANA time zone for promotions (default %(default)s)")
    p.add_argument("--relay-port", type=int, default=8000, help="loopback port of the relay (default %(default)s)")
    p.add_argument("--mqtt-port", type=int, default=1883, help="the broker's port for cabinets (default %(default)s)")
    p.add_argument("--arcade-bin", help="the arcade program systemd runs (default: the one running now)")
    p.add_argument("--force", action="store_true", help="rewrite an existing kit (its secrets are kept)")
    p.add_argument("--insecure-for-testing", action="store_true", help="accept an http:// public URL (tests only)")
    args = p.parse_args(argv)
    try:
        s = kit.Settings(args.public_url, dir=args.dir, data_dir=args.data_dir, user=args.user, name=args.name,
                         tz=args.tz, relay_port=args.relay_port, mqtt_port=args.mqtt_port, arcade_bin=args.arcade_bin,
                         insecure=args.insecure_for_testing, broker_user=args.broker_user)
        old = kit.kept_secrets(s.dir) if args.force else None
        if old is None or not old.webhook_secret:
            if kit.existing(s.dir, {kit.ENV_NAME: None}) and not args.force:
                raise kit.KitError("%s already has %s: run with --force to rewrite the configuration (secrets "
                                   "already there are kept, never replaced)" % (s.dir, kit.ENV_NAME))
            webhook, api_key = _read_secrets(stdin)
            kit.check_secrets(webhook, api_key)
            sec = kit.Secrets(webhook, api_key, old.mqtt_password if old else kit.new_mqtt_password())
            keep = ()
        else:
            sec = old
            keep = (kit.ENV_NAME,)       # the broker's files follow the ledger: always rewritten
        if kit.existing(s.dir, {n: None for n in kit.KIT_NAMES}) and not args.force:
            raise kit.KitError("%s already has a kit: run with --force to rewrite the configuration (secrets "
                               "already there are kept, never replaced)" % s.dir)
        kit.prepare_data_dir(s)
        files = kit.generate(s, sec)     # the broker's logins come from the ledger (created if missing)
        kit.own_ledger(s)
        done = kit.write_kit(s, files, force=args.force, keep=[k for k in keep if (s.dir / k).exists()])
    except (kit.KitError, BrokerKitError) as e:
        print("arcade init: %s" % e, file=sys.stderr)
        return 2
    except OSError as e:
        print("arcade init: cannot write the kit: %s (run as root for %s, or pass --dir)" % (e, args.dir),
              file=sys.stderr)
        return 2
    print("arcade init: the kit for %s is in %s (%s)" % (s.public_url, s.dir, kit.stamp()))
    for name, mode, owner, action in done:
        print("  %-34s %04o %-7s %s" % (name, mode, {"user": s.user, "broker": s.broker_user}.get(owner, "root"),
                                         action))
    print("  data directory %s (0700, %s), .env -> %s" % (s.data_dir, s.user, s.dir / kit.ENV_NAME))
    print("Stripe API key: %s. Next: docs/deploy.md, step 6 (put the files in place and start the services)."
          % ("%s mode" % kit.api_key_mode(sec.api_key) if sec.api_key else "none (Payment Links only)"))
    return 0
