"""arcade relay: serve the webhook under waitress and run the dispatcher in this process.

Configuration comes from the environment or .env (see relay/config.py). SIGTERM or Ctrl-C stops
it cleanly: the web server stops taking requests, the dispatcher disconnects from the broker
(keeping its session), and the database is closed.
"""
import argparse
import atexit
import logging
import os
import signal
import sys
import threading

import waitress

from relay import MAX_BODY, db, alerts, autorefund, create_app, expiry, leadership, logs, reconcile
from relay.config import ConfigError, db_path, mask_url
from relay.dispatcher import start_for_app
from relay.backends import is_postgres, redact
from relay.ledger import StorageError, exposed_files
from relay import webworkers


def _stop(signum, frame):
    raise SystemExit(0)  # waitress's run() catches it and returns; cleanup follows in main()


def _server(app, args, listen):
    db.keep_connections(app)    # each web thread keeps its SQLite connection (relay/db.py)
    return waitress.create_server(app, threads=args.threads, ident="arcade-relay", max_request_body_size=MAX_BODY,
                                  max_request_header_size=64 * 1024, **listen)


def _worker(args, listen, wake):
    """A web worker process (--workers): its own app on the shared socket, no dispatcher."""
    signal.signal(signal.SIGTERM, _stop)
    app = create_app()
    app.extensions["arcade"]["wake"] = wake
    server = _server(app, args, listen)
    try:
        server.run()
    finally:
        server.close()


def main(argv=None):
    p = argparse.ArgumentParser(prog="arcade relay", description="Run the relay: POST /stripe/webhook, "
                                "GET /healthz, and the MQTT dispatcher. Settings: ARCADE_DB, MQTT_URL, "
                                "STRIPE_WEBHOOK_SECRET (required), STRIPE_API_KEY, ARCADE_TOPIC_PREFIX, "
                                "ARCADE_ACK_TIMEOUT, ARCADE_RECONCILE_EVERY (e.g. 15m; 0: off), ARCADE_RECONCILE_WINDOW "
                                "(e.g. 72h), from the environment or .env.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default %(default)s; 0 = any free)")
    p.add_argument("--threads", type=int, default=8, help="web worker threads (default %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="web worker processes (default %(default)s); above 1, "
                   "N-1 more serve the same socket and the dispatcher stays in this one (relay/webworkers.py)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = p.parse_args(argv)
    if args.threads < 1 or args.workers < 1:
        p.error("--threads %d --workers %d: give at least 1" % (args.threads, args.workers))
    try:
        logs.setup(args.log_level)      # ARCADE_LOG_FORMAT=json: one JSON object a line
    except ValueError as e:
        print("arcade relay: %s" % e, file=sys.stderr)
        return 2
    os.umask(0o077)   # the database, its -wal/-shm and anything else this process writes: owner only
    listen, wake_fd = dict(host=args.host, port=args.port), None
    if args.workers > 1:     # forked before anything opens a database connection or starts a thread
        try:
            sock = webworkers.listen(args.host, args.port)
        except OSError as e:
            print("arcade relay: cannot listen on %s:%d: %s" % (args.host, args.port, e), file=sys.stderr)
            return 2
        listen = dict(sockets=[sock])
        pids, wake_fd = webworkers.start(args.workers - 1, lambda wake: _worker(args, listen, wake))
        atexit.register(webworkers.stop, pids)
    try:
        app = create_app()
    except ConfigError as e:
        print("arcade relay: %s" % e, file=sys.stderr)
        return 2
    except StorageError as e:
        hint = "" if is_postgres(db_path()) else " (check the path and its directory's permissions)"
        print("arcade relay: cannot open the database ARCADE_DB=%s: %s%s" % (redact(db_path()), e, hint),
              file=sys.stderr)
        return 2
    try:
        reconcile.settings(app.config)   # a bad ARCADE_RECONCILE_* stops the relay before it listens
        alerts.Alerter(app.config)       # so does a bad alert setting (ARCADE_OPEN_HOURS, SMTP...)
        expiry.settings(app.config)      # and a bad ARCADE_REFUND_AFTER / _MARGIN / ARCADE_CLOCK_SKEW
    except ConfigError as e:
        print("arcade relay: %s" % e, file=sys.stderr)
        return 2
    for name, mode in exposed_files(app.config["ARCADE_DB"]):
        print("arcade relay: WARNING: %s is readable by others (mode %03o) and holds the cabinets' secrets: "
              "run `chmod 600 %s`" % (name, mode, name), file=sys.stderr)
    if not app.config.get("ARCADE_PUBLIC_URL"):
        print("arcade relay: ARCADE_PUBLIC_URL is not set: the pay pages sell nothing (Stripe's return addresses "
              "are never taken from a request's Host header). Set it to the address phones reach the relay at, "
              "e.g. https://pay.example.com", file=sys.stderr)
    try:
        # waitress refuses a larger body from its Content-Length (or as chunks arrive) with 413,
        # before the application sees it or it is buffered whole.
        server = _server(app, args, listen)
    except OSError as e:
        print("arcade relay: cannot listen on %s:%d: %s (is another relay running? try --port)"
              % (args.host, args.port, e), file=sys.stderr)
        return 2
    dispatcher = lead = None
    try:
        dispatcher = start_for_app(app)
        if wake_fd is not None:     # the workers' committed credits wake this process's dispatcher
            webworkers.relay_wakes(wake_fd, app.extensions["arcade"]["wake"], threading.Event())
        # the leader reconciles with Stripe (when STRIPE_API_KEY is set), alerts (once per incident) and
        # refunds expired credits: SQLite, the dispatcher's process; PostgreSQL (every relay dispatches
        # its leased cabinets), the holder of the leader lease, which moves (relay/leadership.py)
        lead = leadership.start_for_app(app, dispatcher, (reconcile.start_for_app, alerts.start_for_app,
                                                          autorefund.start_for_app))
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        print("arcade relay: listening on http://%s:%d (POST /stripe/webhook, GET /healthz); broker %s; "
              "database %s (ledger %s); dispatcher %s; leader: %s"
              % (args.host, int(server.effective_port), mask_url(app.config["MQTT_URL"]),
                 redact(app.config["ARCADE_DB"]), app.config["ARCADE_LEDGER_ID"][:8],
                 ("running, leases as %s" % dispatcher.leases.name if dispatcher and dispatcher.leases
                  else "running" if dispatcher else "in another relay process on this database"),
                 lead.describe() if lead else "the dispatcher's process"), flush=True)
        server.run()
    finally:
        server.close()
        if lead is not None:
            lead.stop()
        if dispatcher is not None:
            dispatcher.stop()
        logging.getLogger("arcade.relay").info("stopped")
    return 0

