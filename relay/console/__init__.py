"""The operator's console at /admin: one blueprint, server-rendered, mobile-first.

`init_app(app)` adds it to a Flask app: the relay's own (ARCADE_CONSOLE=1) or the separate one
`create_app()` builds for `arcade console --port N`, a private port, so that the public webhook
host need not expose /admin at all. The webhook -> ledger -> dispatcher path imports nothing of it.

Every page and action needs a signed-in operator (else a redirect to the sign-in page, never
data); every form carries a CSRF token (Flask-WTF); every action is written to the audit log.
The session cookie is Secure, HttpOnly and SameSite=Strict, and names the operator together with
a fingerprint of their password hash, so a changed password or a removed operator signs out
every session at once.
"""
import hashlib
import logging
import os
import threading
from datetime import timedelta

from flask import Flask
from flask_wtf.csrf import CSRFProtect

from relay import config
from relay.console.auth import Throttle

log = logging.getLogger("arcade.console")
csrf = CSRFProtect()
SESSION_HOURS = 12


def secret_key(cfg):
    """ARCADE_SECRET_KEY, else a random key made once into <ARCADE_DB>.console-key, mode 0600 (so every
    console process on the database signs cookies alike, and no secret sits in a 0644 file)."""
    if cfg.get("ARCADE_SECRET_KEY"):
        return cfg["ARCADE_SECRET_KEY"]
    path = str(cfg["ARCADE_DB"]) + ".console-key"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(os.urandom(32).hex())
    if os.stat(path).st_mode & 0o077:
        raise config.ConfigError("%s is readable by other users: chmod 600 it (it signs console sessions)" % path)
    with open(path) as f:
        key = f.read().strip()
    if len(key) < 32:
        raise config.ConfigError("%s is too short to sign sessions: delete it (a new one is made)" % path)
    return key


def init_app(app):
    from relay.console import views
    app.secret_key = secret_key(app.config)
    app.config.update(
        SESSION_COOKIE_NAME="arcade_console",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_PATH="/admin",
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
        WTF_CSRF_CHECK_DEFAULT=False,      # the console checks its own forms; /stripe/webhook and /pay are not forms of ours
        WTF_CSRF_TIME_LIMIT=SESSION_HOURS * 3600,
    )
    csrf.init_app(app)
    app.extensions["arcade_console"] = {"throttle": Throttle(), "lock": threading.Lock(),
                                        "key_id": hashlib.sha256(app.secret_key.encode()).hexdigest()[:8]}
    app.register_blueprint(views.bp)


def create_app(test_config=None):
    """A Flask app that serves only the console (and /metrics, /admin/static): `arcade console`."""
    from relay import db, metrics
    app = Flask(__name__, static_folder=None)
    settings = config.load(require_webhook_secret=False) if test_config is None else \
        config.check(test_config, require_webhook_secret=False)
    app.config.from_mapping(settings)
    app.config.setdefault("MAX_CONTENT_LENGTH", 64 * 1024)
    if app.config["ARCADE_PROXY_HOPS"]:
        from werkzeug.middleware.proxy_fix import ProxyFix
        hops = app.config["ARCADE_PROXY_HOPS"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
    app.extensions["arcade"] = {"dispatcher": None}
    db.init_app(app)
    metrics.init_app(app)
    init_app(app)

    @app.get("/")
    def root():
        from flask import redirect, url_for
        return redirect(url_for("console.now"))

    return app
