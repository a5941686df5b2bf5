"""Test pulses from the console: a signed test message (docs/protocol.md, Test pulse) published QoS 1;
and `make_client`, a short-lived paho client for MQTT_URL, with `connect_any`, which tries each
broker of the list in turn (also `arcade cabinet test-pulse`'s and `arcade ota push`'s).

Refused when the ledger says the cabinet is offline: the broker would hold the message and the
cabinet would put coins in whenever it reconnects. The cabinet reports the result in its status
(`test`, `test_error`), which the cabinet page shows; `arcade cabinet test-pulse` waits for it.
"""
import os
import threading

import paho.mqtt.client as mqtt

from relay import protocol
from relay.config import mask_url, parse_mqtt_url, parse_mqtt_urls

TIMEOUT = 10.0


def make_client(url, name):
    """A clean-session paho client for `url` (user, password, TLS from it), client id arcade-<name>-<random>."""
    target = parse_mqtt_url(url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="arcade-%s-%s" % (name, os.urandom(4).hex()),
                         clean_session=True, protocol=mqtt.MQTTv311)
    if target["username"] is not None:
        client.username_pw_set(target["username"], target["password"])
    if target["tls"]:
        client.tls_set()
    return client, target


def connect_any(client, url, keepalive=30):
    """Connect `client` (paho, not connected yet) to the first of MQTT_URL's brokers (a cluster's nodes)
    that takes the connection, each in turn with its own login; returns that one's target. When none
    does, the OSError of the last one (each attempt is bounded by paho's connect timeout)."""
    error = None
    for target in parse_mqtt_urls(url):
        if target["username"] is not None:
            client.username_pw_set(target["username"], target["password"])
        try:
            client.connect(target["host"], target["port"], keepalive=keepalive)
            return target
        except OSError as e:
            error = e
    raise error


def send(ledger, cfg, cab, pulses):
    """(ok, text for the operator)."""
    if not cab["online"]:
        return False, ("%s is offline: a test pulse would wait at the broker and put coins in whenever it "
                       "reconnects. Nothing sent." % cab["id"])
    url = cfg["MQTT_URL"]
    client, _ = make_client(url, "console")
    done = threading.Event()
    result = {}

    def on_connect(client, userdata, flags, reason_code, properties):
        result["connected"] = not reason_code.is_failure
        if reason_code.is_failure:
            done.set()

    def on_publish(client, userdata, mid, reason_code, properties):
        result["puback"] = True
        done.set()

    client.on_connect, client.on_publish = on_connect, on_publish
    try:
        connect_any(client, url)
    except OSError as e:
        return False, "Cannot reach the broker %s: %s. Nothing sent." % (mask_url(url), e)
    client.loop_start()
    try:
        n = ledger.next_test_n(cab["id"])
        topic = "%s/%s/test" % (cfg["ARCADE_TOPIC_PREFIX"], cab["id"])
        client.publish(topic, protocol.build_test(cab["id"], n, pulses, cab["secret"]), qos=1)
        if not done.wait(TIMEOUT) or not result.get("puback"):
            return False, "The broker %s did not take test pulse %d within %d s." % (mask_url(url), n, TIMEOUT)
    finally:
        client.disconnect()
        client.loop_stop()
    return True, ("Test pulse %d (%d pulse%s) sent to %s: the game should show the coin%s; the cabinet's status "
                  "below says when it drove it." % (n, pulses, "" if pulses == 1 else "s", cab["id"],
                                                    "" if pulses == 1 else "s"))
