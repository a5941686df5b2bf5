"""GET /healthz: is the database readable and the broker reachable? 200 when both are, else 503."""
import socket

from flask import Blueprint, current_app, jsonify

from relay.config import parse_mqtt_url
from relay.db import get_ledger
from relay.ledger import StorageError

bp = Blueprint("health", __name__)


def _broker_reachable(url, timeout=1.0):
    target = parse_mqtt_url(url)
    try:
        with socket.create_connection((target["host"], target["port"]), timeout=timeout):
            return True
    except OSError:
        return False


@bp.get("/healthz")
def healthz():
    out = {"db": "down", "broker": "down", "ledger": None}
    try:
        ledger = get_ledger()
        ledger.ping()
        out.update(db="ok", ledger=ledger.ledger_id[:8], pending=ledger.count_pending())
    except StorageError as e:
        out["db_error"] = str(e)
    dispatcher = current_app.extensions["arcade"].get("dispatcher")
    if dispatcher is not None:
        out["dispatcher"] = "running"
        out["broker"] = "ok" if dispatcher.connected else "down"
    else:
        # The dispatcher runs in another relay process (or none yet): check the broker answers.
        out["dispatcher"] = "elsewhere"
        out["broker"] = "ok" if _broker_reachable(current_app.config["MQTT_URL"]) else "down"
    ok = out["db"] == "ok" and out["broker"] == "ok"
    return jsonify(out), 200 if ok else 503
