# TLS with the pinned umqtt.simple 1.3.4 on MicroPython >= 1.23: umqtt imports `ussl`, which only
# the firmware's shim provides; the shim calls `ssl.wrap_socket` with certificate verification.
# A fake `ssl` module records the call (neither the host nor the WebAssembly VM has the ESP32's).
import sys

import app as fwapp
import ussl
from coin import Coin
from fwutil import FakeSock, board, clock, scratch, write_json
from fwutil import config as good_config


class FakeSSL:
    CERT_NONE = 0
    CERT_OPTIONAL = 1
    CERT_REQUIRED = 2

    def __init__(self):
        self.calls = []

    def wrap_socket(self, sock, **kw):
        self.calls.append((sock, kw))
        return FakeTLSSocket(sock)


class FakeTLSSocket:
    # like MicroPython's SSLSocket: read/write/setblocking/close, and no settimeout
    def __init__(self, raw):
        self.raw = raw

    def setblocking(self, flag):
        self.raw.setblocking(flag)

    def read(self, n):
        return self.raw.read(n)

    def write(self, buf, n=None):
        return self.raw.write(buf, n)

    def close(self):
        self.raw.close()


def _with_fake_ssl(fn):
    fake = FakeSSL()
    old = sys.modules.get("ssl")
    sys.modules["ssl"] = fake
    try:
        fn(fake)
    finally:
        if old is None:
            del sys.modules["ssl"]
        else:
            sys.modules["ssl"] = old


def _ca(root):
    with open(root + "ca.pem", "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n")
    return root + "ca.pem"


def test_shim_maps_umqtt_call_to_ssl_with_verification():
    root = scratch()
    ca = _ca(root)

    def check(fake):
        raw = FakeSock()
        s = ussl.wrap_socket(raw, cafile=ca, server_hostname="broker.example")
        assert isinstance(s, FakeTLSSocket) and s.raw is raw
        assert len(fake.calls) == 1
        sock, kw = fake.calls[0]
        assert sock is raw
        assert kw == {"cert_reqs": FakeSSL.CERT_REQUIRED, "server_hostname": "broker.example",
                      "cadata": b"-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"}

    _with_fake_ssl(check)


def test_shim_refuses_unverified_tls():
    def check(fake):
        for kw in ({}, {"server_hostname": "broker.example"}, {"cafile": "ca.pem"}):
            try:
                ussl.wrap_socket(FakeSock(), **kw)
                assert False, kw
            except ValueError as e:
                assert "CA file" in str(e)
        try:
            ussl.wrap_socket(FakeSock(), cafile="/nonexistent/ca.pem", server_hostname="h")
            assert False
        except OSError:
            pass
        assert fake.calls == []

    _with_fake_ssl(check)


def test_shim_turns_a_rejected_certificate_into_a_link_error():
    # MicroPython >= 1.23 raises ValueError(mbedTLS verify info, a reason a line) when the
    # broker's certificate fails verification; the app retries OSError, a ValueError would
    # escape its loop and reset the board
    root = scratch()
    ca = _ca(root)

    def check(fake):
        def refuse(sock, **kw):
            fake.calls.append((sock, kw))
            raise ValueError("\nThe certificate is not correctly signed by the trusted CA\n"
                             "The certificate Common Name (CN) does not match with the expected CN\n")
        fake.wrap_socket = refuse
        try:
            ussl.wrap_socket(FakeSock(), cafile=ca, server_hostname="broker.example")
            assert False
        except OSError as e:
            msg = str(e)
        assert len(fake.calls) == 1
        assert msg.startswith("TLS: The certificate is not correctly signed by the trusted CA; "
                              "The certificate Common Name (CN) does not match"), msg

    _with_fake_ssl(check)


class FakeNTP:
    def __init__(self, error=None):
        self.calls = 0
        self.error = error

    def settime(self):
        self.calls += 1
        if self.error is not None:
            raise self.error


def _at_power_on(ntp, fn):
    # the clock as an ESP32 has it after power-on (year 2000), and a fake ntptime
    old_year, old_ntp = ussl._clock_year, sys.modules.get("ntptime")
    ussl._clock_year = lambda: 2000
    sys.modules["ntptime"] = ntp
    try:
        _with_fake_ssl(fn)
    finally:
        ussl._clock_year = old_year
        if old_ntp is None:
            del sys.modules["ntptime"]
        else:
            sys.modules["ntptime"] = old_ntp


def test_shim_sets_the_clock_over_ntp_before_tls_at_power_on():
    root = scratch()
    ca = _ca(root)
    ntp = FakeNTP()

    def check(fake):
        ussl.wrap_socket(FakeSock(), cafile=ca, server_hostname="broker.example")
        assert ntp.calls == 1 and len(fake.calls) == 1
    _at_power_on(ntp, check)


def test_shim_does_not_touch_a_clock_that_is_already_set():
    root = scratch()
    ca = _ca(root)
    ntp = FakeNTP()
    old_ntp = sys.modules.get("ntptime")
    sys.modules["ntptime"] = ntp
    try:
        _with_fake_ssl(lambda fake: ussl.wrap_socket(FakeSock(), cafile=ca, server_hostname="b.example"))
    finally:
        if old_ntp is None:
            del sys.modules["ntptime"]
        else:
            sys.modules["ntptime"] = old_ntp
    assert ntp.calls == 0


def test_shim_refuses_tls_when_ntp_fails_and_says_why():
    root = scratch()
    ca = _ca(root)
    ntp = FakeNTP(OSError(110))

    def check(fake):
        try:
            ussl.wrap_socket(FakeSock(), cafile=ca, server_hostname="broker.example")
        except OSError as e:
            assert "NTP" in str(e.args[0])
        else:
            assert False, "TLS went ahead with an unset clock"
        assert fake.calls == []          # no handshake attempted
    _at_power_on(ntp, check)


def test_app_hands_umqtt_the_ssl_params_and_times_out_the_tcp_socket():
    root = scratch()
    ca = _ca(root)
    c = clock()
    write_json(root + "board.json", board())
    b = fwapp.config.check_board(board())
    cfg = fwapp.config.check_config(good_config(broker="mqtts://cab:pw@broker.example", ca=ca))
    a = fwapp.App(cfg, b, Coin(25, True, 100, 150, c.ticks_ms, c.sleep_ms), root, lambda e, d: None)
    cl = a.client
    assert cl.ssl is True and cl.port == 8883
    assert cl.ssl_params == {"cafile": ca, "server_hostname": "broker.example"}
    # after connect(), umqtt's sock is the TLS socket; the timeout goes on the TCP one under it
    raw = FakeSock()
    d = fwapp.DeadlineSocket(FakeTLSSocket(raw), 7, raw)
    assert raw.timeout == 7
    d.setblocking(False)
    assert raw.blocking is False
    d.setblocking(True)
    assert raw.timeout == 7 and raw.blocking
