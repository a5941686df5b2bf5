"""TLS to a real mosquitto TLS listener: the unchanged firmware, the pinned umqtt.simple and
firmware/brokertls.py (installed as `ussl`), over tools/hostsim/mpssl.py (MicroPython's ssl semantics on CPython's OpenSSL).
A throwaway CA and broker certificate are made with the openssl command line for each run."""
import importlib.util
import json
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from relay import protocol
from tools.lab.broker import Mosquitto
from tools.hostsim import mpssl, usocket
from tools.lab.stack import Cabinet

ROOT = Path(__file__).resolve().parents[1]
SECRET = "3b9d0e1f2a4c6e8a0b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a"
LEDGER = "fedcba9876543210fedcba9876543210"
WAIT = 15.0

pytestmark = [
    pytest.mark.skipif(not (ROOT / "build/umqtt/umqtt/simple.py").exists(),
                       reason="pinned umqtt.simple not fetched (make umqtt)"),
    pytest.mark.skipif(shutil.which("openssl") is None,
                       reason="the openssl command line makes the test CA (apt-get install openssl)"),
]


# -- a throwaway PKI -------------------------------------------------------------------------

def _openssl(*args, cwd):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, "openssl %s: %s" % (" ".join(args), r.stderr)


def make_ca(d, name):
    """A self-signed CA (EC P-256, which an ESP32's mbedTLS verifies): (cert.pem, key)."""
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", name + ".key", "-out", name + ".pem", "-days", "2", "-subj", "/CN=" + name,
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    return d / (name + ".pem"), d / (name + ".key")


def make_server_cert(d, ca, name, dns_names):
    """A broker certificate signed by `ca` for `dns_names` only: (cert.pem, key)."""
    _openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + dns_names[0], cwd=d)
    (d / (name + ".ext")).write_text(
        "subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        "keyUsage=digitalSignature\n" % ",".join("DNS:" + n for n in dns_names))
    _openssl("x509", "-req", "-in", name + ".csr", "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-set_serial", "0x%x" % (int.from_bytes(name.encode(), "big") + 1), "-days", "2",
             "-extfile", name + ".ext", "-out", name + ".pem", cwd=d)
    return d / (name + ".pem"), d / (name + ".key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "arcade-test-ca")
    other = make_ca(d, "some-other-ca")
    server = make_server_cert(d, ca, "broker", ["localhost"])
    _openssl("x509", "-in", ca[0].name, "-outform", "DER", "-out", "ca.der", cwd=d)
    return {"ca": ca[0], "ca_der": d / "ca.der", "other": other[0], "cert": server[0],
            "key": server[1]}


@pytest.fixture(scope="module")
def tls_broker(pki, tmp_path_factory):
    with Mosquitto(tmp_path_factory.mktemp("mosquitto"), tls={"cafile": pki["ca"], "certfile": pki["cert"], "keyfile": pki["key"]}) as b:
        yield b


# -- the host ssl stand-in and the shim, in process ------------------------------------------

CONNECT = bytes([0x10, 14, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 30, 0, 2]) + b"t1"


def _tcp(port):
    s = usocket.socket()
    s.settimeout(WAIT)
    s.connect(("127.0.0.1", port))
    return s


@pytest.mark.parametrize("ca, host", [("ca", "localhost"), ("ca_der", "localhost")],
                         ids=["pem", "der"])
def test_stand_in_verifies_the_broker_and_speaks_mqtt(pki, tls_broker, ca, host):
    raw = _tcp(tls_broker.tls_port)
    try:
        s = mpssl.wrap_socket(raw, cert_reqs=mpssl.CERT_REQUIRED, cadata=pki[ca].read_bytes(),
                              server_hostname=host)
    except BaseException:
        raw.close()
        raise
    try:
        assert s.cipher()[1] == "TLSv1.2"
        assert not hasattr(s, "settimeout"), "MicroPython's SSLSocket has none"
        assert s.write(CONNECT + b"junk", len(CONNECT)) == len(CONNECT)
        assert s.read(4) == b"\x20\x02\x00\x00", "CONNACK, accepted"
        s.setblocking(False)
        assert s.read(1) is None, "non-blocking and nothing sent: None, like MicroPython"
    finally:
        s.close()


@pytest.mark.parametrize("ca, host, error", [
    ("other", "localhost", "The certificate is not correctly signed by the trusted CA"),
    ("ca", "127.0.0.1", "The certificate Common Name (CN) does not match with the expected CN"),
    ("ca", None, "CERT_REQUIRED requires server_hostname"),
    (b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n", "localhost",
     "invalid cert"),
], ids=["other-ca", "name-not-on-cert", "no-name", "garbage-ca"])
def test_stand_in_refuses_like_mbedtls(pki, tls_broker, ca, host, error):
    cadata = pki[ca].read_bytes() if isinstance(ca, str) else ca
    raw = _tcp(tls_broker.tls_port)
    try:
        with pytest.raises(ValueError) as e:
            mpssl.wrap_socket(raw, cert_reqs=mpssl.CERT_REQUIRED, cadata=cadata,
                              server_hostname=host)
        assert str(e.value).strip() == error
    finally:
        raw.close()


def _load_ussl():
    spec = importlib.util.spec_from_file_location("fw_brokertls", ROOT / "firmware" / "brokertls.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("ca, host, ok", [
    ("ca", "localhost", None),
    ("other", "localhost", "TLS: The certificate is not correctly signed by the trusted CA"),
    ("ca", "127.0.0.1", "TLS: The certificate Common Name (CN) does not match"),
], ids=["good", "other-ca", "name-not-on-cert"])
def test_firmware_shim_over_the_stand_in(pki, tls_broker, ca, host, ok):
    ussl = _load_ussl()
    raw = _tcp(tls_broker.tls_port)
    saved = sys.modules["ssl"]
    sys.modules["ssl"] = mpssl          # what the board's `import ssl` finds
    try:
        if ok is None:
            s = ussl.wrap_socket(raw, cafile=str(pki[ca]), server_hostname=host)
            s.write(CONNECT)
            assert s.read(4) == b"\x20\x02\x00\x00"
            s.close()
        else:
            with pytest.raises(OSError) as e:
                ussl.wrap_socket(raw, cafile=str(pki[ca]), server_hostname=host)
            assert type(e.value) is OSError and str(e.value).startswith(ok), str(e.value)
    finally:
        sys.modules["ssl"] = saved
        raw.close()


# -- `arcade simulate` over TLS, end to end --------------------------------------------------

class Payer:
    """paho over TLS (verifying the broker with the same CA) publishing signed credits."""

    def __init__(self, broker, ca, cab):
        self.cab = cab
        self.acks = queue.Queue()
        self.subscribed = threading.Event()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-payer-" + cab)
        self.c.tls_set(ca_certs=str(ca))
        self.c.on_message = lambda c, u, m: self.acks.put(json.loads(m.payload))
        self.c.on_subscribe = lambda *a: self.subscribed.set()
        self.c.connect("localhost", broker.tls_port)
        self.c.loop_start()
        self.c.subscribe("arcade/%s/ack" % cab, 1)
        assert self.subscribed.wait(WAIT)

    def pay(self, seq, pulses, session, retain=False, epoch=""):
        msg = protocol.build_credit(self.cab, LEDGER, seq, pulses, pulses, session, SECRET, epoch=epoch)
        self.c.publish("arcade/%s/credit" % self.cab, msg, qos=1, retain=retain).wait_for_publish(WAIT)

    def close(self):
        self.c.loop_stop()
        self.c.disconnect()


def _cabinet(tmp_path, cab, url, ca, micropython="1.27"):
    return Cabinet(tmp_path, cab, SECRET, url, keepalive=5,
                   extra_args=["--ca", str(ca), "--pulse-ms", "50", "--gap-ms", "50",
                               "--micropython", micropython]).start()


@pytest.mark.parametrize("micropython", ["1.27", "1.22"])
def test_simulated_cabinet_over_tls_pulses_and_acks(pki, tls_broker, tmp_path, micropython):
    # on 1.22 umqtt's `import ussl` returns the built-in ssl before any file (tools/hostsim/mp122.py):
    # the firmware must have put its shim in sys.modules, or the built-in's wrap_socket(cafile=)
    # raises TypeError and the board reset-loops
    payer = Payer(tls_broker, pki["ca"], "tls1")
    cab = _cabinet(tmp_path, "tls1", tls_broker.tls_url("localhost"), pki["ca"], micropython)
    try:
        cab.wait_connected(WAIT)
        assert (cab.state_dir / "ca.pem").read_bytes() == pki["ca"].read_bytes()
        assert json.loads((cab.state_dir / "config.json").read_text())["ca"] == "ca.pem"
        payer.pay(1, 2, "cs_test_tls_1", epoch=cab.epoch())
        pulses = cab.wait_pulses(2, WAIT)
        assert [(p["n"], p["of"], p["seq"]) for p in pulses] == [(1, 2, 1), (2, 2, 1)]
        ack = payer.acks.get(timeout=WAIT)
        assert protocol.verify_ack(ack, SECRET)
        assert (ack["result"], ack["seq"], ack["pulses"], ack["session"]) == \
            ("applied", 1, 2, "cs_test_tls_1")
    finally:
        cab.stop()
        payer.close()
    assert not cab.events("disconnected"), cab.events("disconnected")


@pytest.mark.parametrize("ca, host, reason", [
    ("other", "localhost", "The certificate is not correctly signed by the trusted CA"),
    ("ca", "127.0.0.1", "The certificate Common Name (CN) does not match with the expected CN"),
], ids=["other-ca", "name-not-on-cert"])
def test_simulated_cabinet_refuses_an_unverified_broker(pki, tls_broker, tmp_path, ca, host, reason):
    cab_id = "tlsno-" + ca
    payer = Payer(tls_broker, pki["ca"], cab_id)
    cab = _cabinet(tmp_path, cab_id, tls_broker.tls_url(host), pki[ca])
    try:
        first = cab.wait_for(lambda ls: [x for x in ls if x.get("event") in
                                         ("connected", "disconnected")], WAIT, "a TLS handshake")[0]
        assert first["event"] == "disconnected", "connected to a broker it cannot verify"
        assert "TLS: " + reason in first["error"], first["error"]
        # a paid credit waits on the broker (retained): a link that came up would get it
        payer.pay(1, 2, "cs_test_tls_refused", retain=True)
        n = len(cab.events("disconnected")) + 2      # the second one began after the payment
        cab.wait_for(lambda ls: len([x for x in ls if x.get("event") == "disconnected"]) >= n,
                     WAIT, "two more refused attempts after the payment")
        assert cab.alive(), "a refused broker is retried with backoff, not a crash"
    finally:
        cab.stop()
        payer.c.publish("arcade/%s/credit" % cab_id, b"", qos=1, retain=True).wait_for_publish(WAIT)
        payer.close()
    assert not cab.events("connected") and not cab.pulses()
    assert payer.acks.empty()
    state = cab.state_dir / "state.json"
    assert not state.exists() or json.loads(state.read_text())["last"] == 0
    log = cab.log_path.read_text()
    assert "failed TLS verification" in log and reason in log
    assert "Traceback" not in log


@pytest.mark.parametrize("url, ca, message", [
    ("mqtts://localhost:8883", None, "MQTT_URL is mqtts://: pass --ca FILE"),
    ("mqtt://127.0.0.1:1883", "ca", "is only used with an mqtts:// broker"),
    ("mqtts://localhost:8883", "key", "is not a certificate"),
    ("mqtts://localhost:8883", "missing", "cannot be read"),
], ids=["mqtts-without-ca", "ca-without-mqtts", "not-a-cert", "missing-file"])
def test_simulate_tls_arguments(pki, tmp_path, url, ca, message):
    files = {"ca": pki["ca"], "key": pki["key"], "missing": tmp_path / "nope.pem"}
    (tmp_path / "secret").write_text(SECRET)
    argv = [sys.executable, "-m", "tools.cli", "simulate", "cab1", "--state", str(tmp_path / "flash"),
            "--secret-file", str(tmp_path / "secret")]
    if ca:
        argv += ["--ca", str(files[ca])]
    r = subprocess.run(argv, cwd=ROOT, env={"PATH": "/usr/bin:/bin", "MQTT_URL": url},
                       capture_output=True, text=True, timeout=WAIT)
    assert r.returncode == 2
    assert message in r.stderr and r.stdout == ""
    assert not (tmp_path / "flash").exists(), "nothing written"
