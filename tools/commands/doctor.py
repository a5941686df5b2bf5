"""arcade doctor: check a deployment; each check prints ok, or what is wrong and how to fix it.

  arcade doctor [--env /etc/arcade/arcade.env] [--provisioned DIR] [--offline] [--min-free-mb N]

Checks: the settings file's mode; the webhook secret's shape; the API key's shape and mode; the
public URL is https; the database exists, is writable, 0600, and its schema current; the broker
takes the relay's login and refuses a cabinet's login the relay's topics; every provisioned cabinet
(DIR/<id>/config.json) is registered and vice versa; one relay holds the dispatcher lock; Stripe
answers the key (one list call: the webhook endpoint for this URL, its mode and events); the clock;
disk space. Exit status 1 when any check fails. Secrets are never printed.

The settings are read from --env (default /etc/arcade/arcade.env when it exists), otherwise from
this shell's environment and ./.env like the relay.
"""
import argparse
import os
import sys

from dotenv import dotenv_values

from relay.config import DEFAULTS
from tools.deploy.doctor import Doctor, report

DEFAULT_ENV = "/etc/arcade/arcade.env"


def settings(env_path):
    values = {k: v for k, v in DEFAULTS.items() if v is not None}
    if env_path:
        values.update({k: v for k, v in dotenv_values(env_path).items() if v is not None})
        return values
    if os.path.exists(".env"):
        values.update({k: v for k, v in dotenv_values(".env").items() if v is not None})
    values.update({k: os.environ[k] for k in DEFAULTS if k in os.environ})
    return values


def main(argv=None):
    p = argparse.ArgumentParser(prog="arcade doctor", description=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", help="the relay's environment file (default %s when it exists)" % DEFAULT_ENV)
    p.add_argument("--provisioned", help="the folder `arcade provision --out` wrote cabinets into")
    p.add_argument("--offline", action="store_true", help="don't call Stripe")
    p.add_argument("--min-free-mb", type=int, default=200, help="fail below this free space (default %(default)s)")
    p.add_argument("--no-timedatectl", action="store_true", help=argparse.SUPPRESS)   # tests: clock from Stripe only
    args = p.parse_args(argv)
    env_path = args.env or (DEFAULT_ENV if os.path.exists(DEFAULT_ENV) else None)
    if env_path and not os.path.exists(env_path):
        print("arcade doctor: no settings file %s: pass the one `arcade init` wrote (--env)" % env_path,
              file=sys.stderr)
        return 2
    doctor = Doctor(settings(env_path), env_path=env_path, provisioned=args.provisioned, offline=args.offline,
                    min_free_mb=args.min_free_mb, use_timedatectl=not args.no_timedatectl)
    print("arcade doctor: %s" % (env_path or "settings from this shell's environment and ./.env"), flush=True)
    lines, failures = report(doctor.run())
    print("\n".join(lines))
    return 1 if failures else 0
