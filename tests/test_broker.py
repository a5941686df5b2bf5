"""The private broker the tests, demo and benchmarks run: it must really keep (or lose) sessions."""
import threading

import paho.mqtt.client as mqtt
import pytest

from tools.lab.broker import Mosquitto


def _session(port, client_id, on_message=None):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    if on_message:
        c.on_message = on_message
    ready = threading.Event()
    c.on_connect = lambda *a: ready.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert ready.wait(10), "no CONNACK from the broker"
    return c


def _close(c):
    c.disconnect()
    c.loop_stop()


@pytest.mark.parametrize("persistence, wipe, kept", [(True, False, True), (False, True, False)])
def test_queued_message_survives_a_restart_only_with_persistence(tmp_path, persistence, wipe, kept):
    broker = Mosquitto(tmp_path / "mq", persistence=persistence).start()
    try:
        sub = _session(broker.port, "cab-x")
        subscribed = threading.Event()
        sub.on_subscribe = lambda *a: subscribed.set()
        sub.subscribe("t/credit", qos=1)
        assert subscribed.wait(10)
        _close(sub)                                   # offline; the broker queues for it
        pub = _session(broker.port, "relay-x")
        pub.publish("t/credit", b"paid", qos=1).wait_for_publish(10)
        _close(pub)
        broker.restart(wipe=wipe)                     # SIGTERM: mosquitto writes its database
        seen, sentinel = [], threading.Event()

        def on_message(c, u, m):
            seen.append(m.payload)
            if m.payload == b"sentinel":
                sentinel.set()
        sub = _session(broker.port, "cab-x", on_message=on_message)
        try:
            # (re)subscribe (a wiped broker forgot the subscription), then a marker published after
            # the restart: the queued message, if kept, is delivered before it.
            subscribed.clear()
            sub.on_subscribe = lambda *a: subscribed.set()
            sub.subscribe("t/credit", qos=1)
            assert subscribed.wait(10)
            pub = _session(broker.port, "relay-x")
            pub.publish("t/credit", b"sentinel", qos=1).wait_for_publish(10)
            _close(pub)
            assert sentinel.wait(10)
            assert (b"paid" in seen) is kept, seen
        finally:
            _close(sub)
        assert broker.log_path.exists(), "mosquitto wrote no log: it could not write its work dir"
    finally:
        broker.stop()
