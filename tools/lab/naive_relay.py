"""The naive design, as a benchmark baseline: what most webhook-to-MQTT tutorials build.

A minimal Flask handler that verifies the Stripe signature and publishes the credit inline, QoS 0,
with no ledger: no record of the payment, no sequence numbers kept anywhere, no redelivery, no
idempotency. It signs credits in the real protocol format so the unchanged firmware pulses them
(seq = milliseconds since the epoch under a per-process random ledger id), which makes the two
designs comparable on the same cabinets. Served by waitress like `arcade relay`.

Not for production: a payment that arrives while the broker or the cabinet is away is lost, and a
retried event pulses again (unless the cabinet's own dedupe catches it).

  python -m tools.lab.naive_relay --cabinets cabs.json [--host H] [--port P] [--threads N]
cabs.json: {"<cabinet id>": {"secret": "<hex>", "price_cents": 100, "coins_per_credit": 1}, ...}
Environment: MQTT_URL, STRIPE_WEBHOOK_SECRET, ARCADE_TOPIC_PREFIX (default arcade).
"""
import argparse
import itertools
import json
import os
import secrets
import signal
import sys
import threading
import time

import paho.mqtt.client as mqtt
import stripe
import waitress
from flask import Flask, jsonify, request

from relay import protocol
from relay.config import parse_mqtt_url


def create_app(cabinets, webhook_secret, mqtt_url, prefix="arcade"):
    app = Flask(__name__)
    target = parse_mqtt_url(mqtt_url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="naive-relay-" + secrets.token_hex(4))
    # the one thing it must know to be pulsed at all: each cabinet's epoch, from its status
    epochs = {}

    def on_status(c, userdata, msg):
        try:
            epochs[msg.topic.split("/")[-2]] = json.loads(msg.payload).get("epoch") or ""
        except (ValueError, AttributeError):
            pass

    client.on_connect = lambda c, *a: c.subscribe("%s/+/status" % prefix, qos=0)
    client.on_message = on_status
    client.connect_async(target["host"], target["port"], keepalive=30)
    client.loop_start()
    app.extensions["naive"] = client
    ledger = secrets.token_hex(16)
    lock = threading.Lock()
    counter = itertools.count(int(time.time() * 1000))

    @app.post("/stripe/webhook")
    def webhook():
        payload = request.get_data()
        try:
            stripe.Webhook.construct_event(payload, request.headers.get("Stripe-Signature", ""), webhook_secret)
        except (stripe.SignatureVerificationError, ValueError):
            return jsonify(error="bad signature"), 400
        event = json.loads(payload)
        if event["type"] != "checkout.session.completed":
            return jsonify(received=True), 200
        session = event["data"]["object"]
        cab = cabinets.get((session.get("metadata") or {}).get("cabinet_id"))
        if cab is None:
            return jsonify(received=True, ignored="unknown cabinet"), 200
        credits = session["amount_total"] // cab["price_cents"]
        with lock:
            seq = next(counter)
        msg = protocol.build_credit(cab["id"], ledger, seq, credits, credits * cab["coins_per_credit"],
                                    session["id"], cab["secret"], epoch=epochs.get(cab["id"], ""))
        client.publish("%s/%s/credit" % (prefix, cab["id"]), msg, qos=0)  # fire and forget
        return jsonify(received=True), 200

    return app


def main(argv=None):
    p = argparse.ArgumentParser(prog="naive_relay", description=__doc__.strip().splitlines()[0])
    p.add_argument("--cabinets", required=True, help="JSON file: cabinet id -> secret, price_cents, coins_per_credit")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument("--threads", type=int, default=8)
    args = p.parse_args(argv)
    secret = os.environ.get("STRIPE_WEBHOOK_SECRET")
    if not secret:
        print("naive_relay: STRIPE_WEBHOOK_SECRET is not set", file=sys.stderr)
        return 2
    with open(args.cabinets) as f:
        cabinets = {k: dict(v, id=k) for k, v in json.load(f).items()}
    app = create_app(cabinets, secret, os.environ.get("MQTT_URL", "mqtt://127.0.0.1:1883"),
                     os.environ.get("ARCADE_TOPIC_PREFIX", "arcade"))
    server = waitress.create_server(app, host=args.host, port=args.port, threads=args.threads, ident="naive-relay")

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    print("naive relay: listening on http://%s:%s" % (args.host, server.effective_port), flush=True)
    try:
        server.run()
    finally:
        server.close()
        app.extensions["naive"].loop_stop()
        app.extensions["naive"].disconnect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
