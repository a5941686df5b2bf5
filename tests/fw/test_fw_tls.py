# TLS with the pinned umqtt.simple 1.3.4: umqtt imports `ussl`, which the app installs as
# firmware/brokertls.py (sys.modules), on 1.22 as on >= 1.23; the shim calls `ssl.wrap_socket` with verification.
# A fake `ssl` module records the call (neither the host nor the WebAssembly VM has the ESP32's).
import sys

import app as fwapp
import config
import brokertls
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
        s = brokertls.wrap_socket(raw, cafile=ca, server_hostname="broker.example")
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
                brokertls.wrap_socket(FakeSock(), **kw)
                assert False, kw
            except ValueError as e:
                assert "CA file" in str(e)
        try:
            brokertls.wrap_socket(FakeSock(), cafile="/nonexistent/ca.pem", server_hostname="h")
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
            brokertls.wrap_socket(FakeSock(), cafile=ca, server_hostname="broker.example")
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
    old_year, old_ntp = brokertls._clock_year, sys.modules.get("ntptime")
    brokertls._clock_year = lambda: 2000
    sys.modules["ntptime"] = ntp
    try:
        _with_fake_ssl(fn)
    finally:
        brokertls._clock_year = old_year
        if old_ntp is None:
            del sys.modules["ntptime"]
        else:
            sys.modules["ntptime"] = old_ntp


def test_shim_refuses_tls_while_the_clock_is_unset():
    # the clock is the app's job, right after WiFi (below); the handshake never runs at year 2000
    root = scratch()
    ca = _ca(root)
    ntp = FakeNTP()

    def check(fake):
        try:
            brokertls.wrap_socket(FakeSock(), cafile=ca, server_hostname="broker.example")
        except OSError as e:
            assert "clock is not set" in str(e.args[0])
        else:
            assert False, "TLS went ahead with an unset clock"
        assert fake.calls == [] and ntp.calls == 0
    _at_power_on(ntp, check)


def test_set_clock_leaves_a_clock_that_is_already_set():
    ntp = FakeNTP()
    old_ntp = sys.modules.get("ntptime")
    sys.modules["ntptime"] = ntp
    try:
        brokertls.set_clock()
    finally:
        if old_ntp is None:
            del sys.modules["ntptime"]
        else:
            sys.modules["ntptime"] = old_ntp
    assert ntp.calls == 0


def test_any_ntp_failure_is_a_link_error_the_app_retries():
    # issue 11 item 8: ntptime raises ValueError on a short reply (struct.unpack of msg[40:44]),
    # OSError on no reply, OverflowError on a reply from the far future. Before the fix the
    # ValueError escaped App.run: a reset. Now every one is an OSError naming NTP.
    for err in (OSError(110), ValueError("buffer too small"), OverflowError("overflow"),
                IndexError("index out of range")):
        ntp = FakeNTP(err)

        def check(fake):
            try:
                brokertls.set_clock()
            except OSError as e:
                assert "NTP" in str(e.args[0]), e
            else:
                assert False, "no error from a failed NTP"
        _at_power_on(ntp, check)
        assert ntp.calls == 1


class _Net:
    # a socket module for umqtt.simple: records what happened in what order
    def __init__(self, log, incoming):
        self.log = log
        self.incoming = incoming

    def socket(self, *a):
        self.log.append("socket")
        s = FakeSock(self.incoming)
        s.connect = lambda addr: self.log.append("connect")
        s.setsockopt = lambda *a: None
        return s

    def getaddrinfo(self, host, port, *a):
        self.log.append("dns")
        return [(2, 1, 0, "", ("10.0.0.1", port))]


def _tls_app(root, net):
    c = clock()
    ca = _ca(root)
    b = config.check_board(board())
    cfg = config.check_config(good_config(broker="mqtts://cab:pw@broker.example", ca=ca))
    old = fwapp.simple.socket
    fwapp.simple.socket = net            # the App wraps it, as it wraps the real socket module
    a = fwapp.App(cfg, b, Coin(25, True, 100, 150, c.ticks_ms, c.sleep_ms), root, lambda e, d: None)
    a.net_was = getattr(old, "mod", old)
    return a


def test_ntp_runs_right_after_wifi_before_any_broker_socket():
    root = scratch()
    log = []
    a = _tls_app(root, _Net(log, b""))
    ntp = FakeNTP()
    ntp.settime = lambda: log.append("ntp")

    def check(fake):
        try:
            a._wifi()
        finally:
            fwapp.simple.socket = a.net_was
        assert log == ["ntp"], "the clock is set before DNS or a TCP socket to the broker"
    _at_power_on(ntp, check)


def test_umqtt_import_ussl_gets_the_shim_even_where_ussl_is_a_builtin():
    # issue 11 item 1: on MicroPython 1.22 `import ussl` (umqtt.simple's connect()) returns the
    # built-in ssl, never a ussl.py on the flash: its C wrap_socket rejects cafile= with
    # TypeError, which escaped App.run (reset loop). The 1.22 rule is modelled with sys.modules
    # (what the import system looks at first): the "built-in" is already there. The app must put
    # its shim in its place before connecting; the import umqtt really does then finds the shim.
    class Builtin122:
        CERT_REQUIRED = 2

        def __init__(self):
            self.calls = []

        def wrap_socket(self, sock, key=None, cert=None, server_side=False, server_hostname=None,
                        cert_reqs=0, cadata=None, do_handshake=True):
            self.calls.append((cert_reqs, cadata is not None, server_hostname))
            return FakeTLSSocket(sock)

    builtin = Builtin122()
    old = sys.modules.get("ussl")
    sys.modules["ussl"] = builtin          # what 1.22 hands `import ussl`
    root = scratch()
    log = []
    connack = b"\x20\x02\x00\x00"
    try:
        def check(fake):
            fake.wrap_socket = builtin.wrap_socket   # the shim's `import ssl`: the same C module
            a = _tls_app(root, _Net(log, connack))
            try:
                a.client.connect(False)    # umqtt's own `import ussl; ussl.wrap_socket(...)`
            finally:
                fwapp.simple.socket = a.net_was
            assert builtin.calls == [(2, True, "broker.example")], builtin.calls
        _with_fake_ssl(check)
    finally:
        if old is None:
            sys.modules.pop("ussl", None)
        else:
            sys.modules["ussl"] = old


def test_app_hands_umqtt_the_ssl_params_and_times_out_the_tcp_socket():
    root = scratch()
    ca = _ca(root)
    c = clock()
    write_json(root + "board.json", board())
    b = config.check_board(board())
    cfg = config.check_config(good_config(broker="mqtts://cab:pw@broker.example", ca=ca))
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
