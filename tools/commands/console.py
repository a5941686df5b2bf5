"""arcade console: serve the operator's console (/admin) from its own process, on a private port.

The public relay (`arcade relay`) then need not expose /admin at all: run this on 127.0.0.1 and reach
it over SSH or a VPN, or behind a proxy with HTTPS (the session cookie is Secure: browsers send it
over HTTPS, or to localhost). It shares the relay's database (ARCADE_DB).
"""
import argparse
import signal
import sys

import waitress

from relay import logs
from relay.config import ConfigError
from relay.console import create_app
from relay.ledger import StorageError


def _stop(signum, frame):
    raise SystemExit(0)


def main(argv=None):
    p = argparse.ArgumentParser(prog="arcade console", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s: this host only)")
    p.add_argument("--port", type=int, default=8001, help="port (default %(default)s; 0 = any free)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = p.parse_args(argv)
    try:
        logs.setup(args.log_level)      # ARCADE_LOG_FORMAT=json: one JSON object a line
    except ValueError as e:
        print("arcade console: %s" % e, file=sys.stderr)
        return 2
    try:
        app = create_app()
    except (ConfigError,) + StorageError as e:
        print("arcade console: %s" % e, file=sys.stderr)
        return 2
    try:
        server = waitress.create_server(app, host=args.host, port=args.port, threads=4, ident="arcade-console")
    except OSError as e:
        print("arcade console: cannot listen on %s:%d: %s (try --port)" % (args.host, args.port, e), file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print("arcade console: listening on http://%s:%d/admin (database %s)" % (args.host, int(server.effective_port),
                                                                         app.config["ARCADE_DB"]), flush=True)
    try:
        server.run()
    finally:
        server.close()
    return 0
