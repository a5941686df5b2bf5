"""Arcade relay: Stripe webhooks in, signed QoS 1 MQTT credits out.

create_app() builds the web side (webhook, health); the dispatcher (relay/dispatcher.py) that
publishes credits runs beside it in the `arcade relay` process, one per database.
"""
import logging
import threading

from flask import Flask, jsonify

from relay import config

log = logging.getLogger("arcade.relay")


def create_app(test_config=None):
    """The Flask application. Settings come from the environment / .env, or from `test_config`.
    Raises config.ConfigError (e.g. no STRIPE_WEBHOOK_SECRET): the relay refuses to start."""
    app = Flask(__name__)
    settings = config.load() if test_config is None else config.check(test_config)
    app.config.from_mapping(settings)
    app.config.setdefault("MAX_CONTENT_LENGTH", 512 * 1024)  # Stripe events are a few KB
    hops = app.config["ARCADE_PROXY_HOPS"]
    if hops:
        # Behind a TLS-terminating proxy every request comes from the proxy: take the client's
        # address (rate limits are per phone) from the X-Forwarded-* the trusted hops set. Not
        # without them, or any client could pick its own address.
        from werkzeug.middleware.proxy_fix import ProxyFix
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
    # wake: set after a credit is committed, so the dispatcher publishes at once (no polling delay).
    app.extensions["arcade"] = {"wake": threading.Event(), "dispatcher": None}

    from relay import db, health, ledger, metrics, pay, refunds, webhook
    db.init_app(app)
    # Refunds and disputes from Stripe (issue 13): the webhook hands these event types over.
    app.extensions["arcade"]["event_handlers"] = {t: refunds.handle_event for t in refunds.EVENTS}
    app.register_blueprint(webhook.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(pay.bp)  # the player's pages: /pay, /paid, /cancel
    metrics.init_app(app)           # GET /metrics (bearer token when ARCADE_METRICS_TOKEN is set)
    if app.config["ARCADE_CONSOLE"]:
        # The operator's console on this same host (off by default: `arcade console` serves it
        # from its own process on a private port, so the public host need not expose /admin).
        from relay import console
        console.init_app(app)

    def storage_failed(e):
        log.error("storage failure: %s", e)
        return jsonify(error="storage unavailable, retry later"), 503

    for error in ledger.StorageError:   # one base error per backend
        app.register_error_handler(error, storage_failed)

    return app
