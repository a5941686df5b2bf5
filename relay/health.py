"""GET /healthz: 200 {"status": "ok"} when the database is readable and the broker reachable, else 503
{"status": "not ok"}. Details (database, broker, dispatcher, leader, pending credits) only with
`Authorization: Bearer <ARCADE_METRICS_TOKEN>`: the public learns nothing about the inside.

When the dispatcher runs in another process, the broker is probed at most once per PROBE_EVERY
seconds whatever the request rate (a request never opens a broker connection of its own)."""
import hmac
import socket
import threading
import time

from flask import Blueprint, current_app, jsonify, request

from relay.config import parse_mqtt_urls
from relay.db import get_ledger
from relay.ledger import StorageError

bp = Blueprint("health", __name__)
PROBE_EVERY = 10.0


class _BrokerProbe:
    """The last TCP probe of the broker, refreshed by at most one request at a time."""

    def __init__(self):
        self.lock = threading.Lock()
        self.at = None
        self.ok = False

    def reachable(self, url, now=None):
        now = time.monotonic() if now is None else now
        if (self.at is None or now - self.at >= PROBE_EVERY) and self.lock.acquire(blocking=False):
            try:
                self.ok = _broker_reachable(url)
                self.at = time.monotonic()
            finally:
                self.lock.release()
        return self.ok


def _broker_reachable(url, timeout=1.0):
    """Any of MQTT_URL's brokers (a cluster's nodes) accepts a TCP connection."""
    for target in parse_mqtt_urls(url):
        try:
            with socket.create_connection((target["host"], target["port"]), timeout=timeout):
                return True
        except OSError:
            pass
    return False


def authorized(app):
    """True when the request carries the metrics token (constant-time compare); never without one set."""
    token = app.config.get("ARCADE_METRICS_TOKEN")
    given = request.headers.get("Authorization", "")
    if not token or not given.startswith("Bearer "):
        return False
    return hmac.compare_digest(given[len("Bearer "):].strip().encode(), str(token).encode())


@bp.get("/healthz")
def healthz():
    app = current_app
    out = {"db": "down", "broker": "down"}
    try:
        ledger = get_ledger()
        ledger.ping()
        out.update(db="ok", ledger=ledger.ledger_id[:8], pending=ledger.count_pending())
    except StorageError as e:
        app.logger.warning("healthz: database: %s", e)
    dispatcher = app.extensions["arcade"].get("dispatcher")
    if dispatcher is not None:
        out["dispatcher"] = "running"
        out["broker"] = "ok" if dispatcher.connected else "down"
    else:
        out["dispatcher"] = "elsewhere"
        probe = app.extensions["arcade"].setdefault("broker_probe", _BrokerProbe())
        out["broker"] = "ok" if probe.reachable(app.config["MQTT_URL"]) else "down"
    lead = app.extensions["arcade"].get("leadership")     # relay/leadership.py: runs reconcile, alerts, refunds
    out["leader"] = bool(lead is not None and lead.leader)
    ok = out["db"] == "ok" and out["broker"] == "ok"
    out["status"] = "ok" if ok else "not ok"
    body = out if authorized(app) else {"status": out["status"]}
    resp = jsonify(body)
    resp.headers["Cache-Control"] = "no-store"
    return resp, 200 if ok else 503
