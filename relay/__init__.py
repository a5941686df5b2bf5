"""Arcade relay: Stripe webhooks in, signed QoS 1 MQTT credits out.

create_app() builds the web side (webhook, health, pay pages); the dispatcher (relay/dispatcher.py)
that publishes credits runs beside it in the `arcade relay` process, one per database.
"""
import hashlib
import hmac
import ipaddress
import logging
import threading
from urllib.parse import urlsplit

from flask import Flask, has_request_context, jsonify, request
from flask.sessions import SecureCookieSessionInterface

from relay import config

log = logging.getLogger("arcade.relay")

# Stripe events are a few KB (the largest documented object is far below this). Flask's own default
# config already holds MAX_CONTENT_LENGTH = None, so setdefault() would never apply: set it.
MAX_BODY = 256 * 1024


def create_app(test_config=None):
    """The Flask application. Settings come from the environment / .env, or from `test_config`.
    Raises config.ConfigError (e.g. no STRIPE_WEBHOOK_SECRET): the relay refuses to start."""
    app = Flask(__name__)
    settings = config.load() if test_config is None else config.check(test_config)
    app.config.from_mapping(settings)
    app.config["MAX_CONTENT_LENGTH"] = min(int(settings.get("MAX_CONTENT_LENGTH") or MAX_BODY), MAX_BODY)
    app.config["MAX_FORM_MEMORY_SIZE"] = 64 * 1024
    # The pay page's CSRF token lives in Flask's signed session cookie; the key is derived from the
    # webhook secret so every relay process on the database agrees, and it is no secret of its own.
    app.config["SECRET_KEY"] = hmac.new(settings["STRIPE_WEBHOOK_SECRET"].encode(), b"arcade-pay session cookie",
                                        hashlib.sha256).hexdigest() if settings["STRIPE_WEBHOOK_SECRET"] else None
    public = settings.get("ARCADE_PUBLIC_URL")
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_NAME="arcade",
                      SESSION_COOKIE_SECURE=bool(public and public.startswith("https://")))
    app.config["TRUSTED_HOSTS"] = trusted_hosts(settings)
    hops = app.config["ARCADE_PROXY_HOPS"]
    if hops:
        app.wsgi_app = _FromProxies(app.wsgi_app, hops, app.config["ARCADE_PROXY_NETWORKS"])
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
        pay_cookie = {k: app.config[k] for k in _COOKIE_KEYS}
        console.init_app(app)
        # one app, two cookies: the console's (Path=/admin, Strict) and the pay pages' CSRF one
        app.session_interface = _AreaSessions(pay_cookie)

    def storage_failed(e):
        log.error("storage failure: %s", e)
        return jsonify(error="storage unavailable, retry later"), 503

    for error in ledger.StorageError:   # one base error per backend
        app.register_error_handler(error, storage_failed)

    return app


_COOKIE_KEYS = ("SESSION_COOKIE_NAME", "SESSION_COOKIE_PATH", "SESSION_COOKIE_SECURE", "SESSION_COOKIE_SAMESITE")


class _AreaSessions(SecureCookieSessionInterface):
    """The console's session cookie settings under /admin, the pay pages' everywhere else."""

    def __init__(self, pay_cookie):
        self.pay = pay_cookie

    def _pick(self, app, key):
        if has_request_context() and not request.path.startswith("/admin"):
            return self.pay[key]
        return app.config[key]

    def get_cookie_name(self, app):
        return self._pick(app, "SESSION_COOKIE_NAME")

    def get_cookie_path(self, app):
        return self._pick(app, "SESSION_COOKIE_PATH") or app.config["APPLICATION_ROOT"]

    def get_cookie_secure(self, app):
        return self._pick(app, "SESSION_COOKIE_SECURE")

    def get_cookie_samesite(self, app):
        return self._pick(app, "SESSION_COOKIE_SAMESITE")


def trusted_hosts(settings):
    """The Host names the relay answers to: ARCADE_PUBLIC_URL's, loopback (health checks, the proxy) and
    ARCADE_TRUSTED_HOSTS. None (any) only when no public address is configured: then nothing is sold
    and no absolute URL is ever built."""
    public = settings.get("ARCADE_PUBLIC_URL")
    if not public:
        return None
    hosts = [urlsplit(public).hostname, "localhost", "127.0.0.1"]
    hosts += [h.strip() for h in str(settings.get("ARCADE_TRUSTED_HOSTS") or "").split(",") if h.strip()]
    return hosts


class _FromProxies:
    """ProxyFix (X-Forwarded-For and -Proto only; never -Host) applied to requests that come from a
    trusted proxy address (ARCADE_PROXY_FROM). A client that reaches the relay directly keeps its
    own address, whatever X-Forwarded-For it sends."""

    def __init__(self, app, hops, networks):
        from werkzeug.middleware.proxy_fix import ProxyFix
        self.direct = app
        self.fixed = ProxyFix(app, x_for=hops, x_proto=hops, x_host=0, x_port=0, x_prefix=0)
        self.networks = networks

    def __call__(self, environ, start_response):
        try:
            addr = ipaddress.ip_address(environ.get("REMOTE_ADDR", ""))
        except ValueError:
            addr = None
        trusted = addr is not None and any(addr in net for net in self.networks)
        return (self.fixed if trusted else self.direct)(environ, start_response)
