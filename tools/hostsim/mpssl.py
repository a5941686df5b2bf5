"""Host stand-in for MicroPython's `ssl` module (the frozen micropython-lib ssl over the `tls`
built-in, mbedTLS on the ESP32), over CPython's ssl.SSLObject. CPython only.

It is not called `ssl.py`: tools/hostsim is on sys.path in the test process, where paho, urllib
and stripe need CPython's ssl. `arcade simulate` (a process that is the device) installs it as
sys.modules["ssl"], which is what the firmware's ussl.py imports; tests swap it in the same way.

What it keeps of MicroPython 1.27 (extmod/modtls_mbedtls.c, python-stdlib/ssl/ssl.py):
- wrap_socket(sock, server_side=False, key=None, cert=None, cert_reqs=CERT_NONE, cadata=None,
  server_hostname=None, do_handshake=True); client side only here.
- cadata is bytes, PEM (one or more certificates) or DER (one); bad data -> ValueError("invalid cert").
- CERT_REQUIRED without server_hostname -> ValueError("CERT_REQUIRED requires server_hostname").
- server_hostname is the SNI and the name checked against the certificate.
- a certificate that fails verification -> ValueError carrying mbedTLS's verify-info text ("\\n"
  before each reason), not OSError; other handshake failures -> OSError.
- TLS 1.2 at most (the ESP32 port's mbedTLS has no TLS 1.3).
- the TLS engine reads and writes through the wrapped socket's own read/write (MicroPython's
  stream protocol), one record at a time like mbedTLS, so timeouts and non-blocking mode are
  the TCP socket's: SSLSocket has read/write/setblocking/close/cipher and no settimeout.
Host-only: fileno(), so CPython's select.poll can watch it (MicroPython polls through ioctl,
which also reports plaintext already decrypted; here poll sees only the TCP socket, which is
the same thing while the broker sends one MQTT packet per TLS record, as mosquitto does).
"""
import errno
import socket as _socket
import ssl as _ssl

CERT_NONE = 0
CERT_OPTIONAL = 1
CERT_REQUIRED = 2
PROTOCOL_TLS_CLIENT = 0
PROTOCOL_TLS_SERVER = 1
MBEDTLS_VERSION = "hostsim (CPython %s)" % _ssl.OPENSSL_VERSION

_MODES = {CERT_NONE: _ssl.CERT_NONE, CERT_OPTIONAL: _ssl.CERT_OPTIONAL,
          CERT_REQUIRED: _ssl.CERT_REQUIRED}
# mbedtls_x509_crt_verify_info() wording for the OpenSSL verify codes a broker can cause
_NOT_TRUSTED = "The certificate is not correctly signed by the trusted CA"
_VERIFY_TEXT = {
    9: "The certificate validity starts in the future",
    10: "The certificate validity has expired",
    18: _NOT_TRUSTED, 19: _NOT_TRUSTED, 20: _NOT_TRUSTED, 21: _NOT_TRUSTED, 7: _NOT_TRUSTED,
    62: "The certificate Common Name (CN) does not match with the expected CN",
    64: "The certificate Common Name (CN) does not match with the expected CN",
}
_ERR_SSL_CONN_EOF = -0x7280
_BLOCKED = object()     # an operation that would block on a non-blocking socket


def _context(cert_reqs, cadata, server_hostname):
    ctx = _ssl.SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
    ctx.maximum_version = _ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    if cert_reqs not in _MODES:
        raise ValueError("cert_reqs must be CERT_NONE, CERT_OPTIONAL or CERT_REQUIRED")
    ctx.verify_mode = _MODES[cert_reqs]
    # mbedTLS checks the name whenever it verifies and a name was set
    ctx.check_hostname = cert_reqs == CERT_REQUIRED and server_hostname is not None
    if cadata:
        if not isinstance(cadata, (bytes, bytearray, str)):
            raise TypeError("cadata must be bytes")
        data = bytes(cadata, "ascii") if isinstance(cadata, str) else bytes(cadata)
        try:
            if b"-----BEGIN " in data:
                ctx.load_verify_locations(cadata=data.decode("ascii"))
            else:
                ctx.load_verify_locations(cadata=data)
        except (_ssl.SSLError, UnicodeDecodeError, ValueError):
            raise ValueError("invalid cert")
    return ctx


class SSLSocket:
    def __init__(self, sock, ctx, server_hostname):
        self._sock = sock
        self._in = _ssl.MemoryBIO()
        self._out = _ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._in, self._out, server_side=False,
                                 server_hostname=server_hostname)
        self._rx = bytearray()        # ciphertext of a record not yet complete
        self._closed = False

    # -- the TCP side, through the wrapped socket's stream methods
    def _flush(self):
        data = self._out.read()
        if data:
            self._sock.write(data)

    def _recv(self, n):
        try:
            return self._sock.recv(n)
        except BlockingIOError:
            return None
        except _socket.timeout:
            raise OSError(errno.ETIMEDOUT, "read timed out")

    def _fill(self):
        """Move one whole TLS record from the socket into the engine. False: nothing to read
        now (non-blocking). Raw EOF is handed to the engine."""
        while True:
            need = 5 if len(self._rx) < 5 else 5 + int.from_bytes(self._rx[3:5], "big")
            if len(self._rx) >= need and len(self._rx) >= 5:
                self._in.write(bytes(self._rx[:need]))
                del self._rx[:need]
                return True
            chunk = self._recv(need - len(self._rx))
            if chunk is None:
                return False
            if not chunk:
                self._in.write_eof()
                return True
            self._rx += chunk

    def _run(self, op, *args):
        """Drive the engine until `op` completes; _BLOCKED when it would block."""
        while True:
            try:
                r = op(*args)
            except _ssl.SSLWantReadError:
                self._flush()
                if not self._fill():
                    return _BLOCKED
                continue
            except (_ssl.SSLEOFError, _ssl.SSLSyscallError):
                raise OSError(_ERR_SSL_CONN_EOF, "MBEDTLS_ERR_SSL_CONN_EOF")
            self._flush()
            return r

    def _handshake(self):
        try:
            if self._run(self._obj.do_handshake) is _BLOCKED:
                raise OSError(errno.EAGAIN, "handshake would block")
        except _ssl.SSLCertVerificationError as e:
            self._drop()
            text = _VERIFY_TEXT.get(e.verify_code, e.verify_message or str(e))
            raise ValueError("\n%s\n" % text)
        except _ssl.SSLError as e:
            self._drop()
            raise OSError(-0x7780, "MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE (%s)" % (e.reason or e))
        except OSError:
            self._drop()
            raise

    def _drop(self):
        # like modtls' cleanup: the TLS state goes, the TCP socket stays with its owner
        try:
            self._flush()
        except OSError:
            pass
        self._closed = True

    def _check(self):
        if self._closed:
            raise OSError(errno.EBADF, "TLS socket closed")

    # -- MicroPython's SSLSocket
    def read(self, n=-1):
        self._check()
        buf = bytearray()
        while n < 0 or len(buf) < n:
            try:
                chunk = self._run(self._obj.read, 4096 if n < 0 else n - len(buf))
            except _ssl.SSLZeroReturnError:     # close_notify: end of stream
                break
            if chunk is _BLOCKED:
                return bytes(buf) if buf else None
            if not chunk:
                break
            buf += chunk
        return bytes(buf)

    def readinto(self, b):
        data = self.read(len(b))
        if data is None:
            return None
        b[:len(data)] = data
        return len(data)

    def write(self, buf, n=None):
        self._check()
        view = memoryview(buf)
        if n is not None:
            view = view[:n]
        self._run(self._obj.write, bytes(view))
        return len(view)

    def setblocking(self, flag):
        return self._sock.setblocking(flag)

    def cipher(self):
        c = self._obj.cipher()
        return (c[0], c[1]) if c else None

    def getpeercert(self, binary_form=True):
        return self._obj.getpeercert(True)

    def close(self):
        # no close_notify (mbedtls_ssl_free doesn't send one); closes the TCP socket too
        if self._sock is None:
            return
        self._closed = True
        sock, self._sock = self._sock, None
        sock.close()

    def fileno(self):
        return self._sock.fileno()


class SSLContext:
    def __init__(self, protocol):
        if protocol != PROTOCOL_TLS_CLIENT:
            raise NotImplementedError("the host stand-in does the client side only")
        self.verify_mode = CERT_REQUIRED
        self._cadata = None

    def load_verify_locations(self, cafile=None, cadata=None):
        if cafile:
            with open(cafile, "rb") as f:
                cadata = f.read()
        _context(CERT_NONE, cadata, None)      # same checks as on the device, at load time
        self._cadata = cadata

    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True,
                    server_hostname=None):
        if server_side:
            raise NotImplementedError("the host stand-in does the client side only")
        if self.verify_mode == CERT_REQUIRED and server_hostname is None:
            raise ValueError("CERT_REQUIRED requires server_hostname")
        s = SSLSocket(sock, _context(self.verify_mode, self._cadata, server_hostname),
                      server_hostname)
        if do_handshake_on_connect:
            s._handshake()
        return s


def wrap_socket(sock, server_side=False, key=None, cert=None, cert_reqs=CERT_NONE, cadata=None,
                server_hostname=None, do_handshake=True):
    if key or cert:
        raise NotImplementedError("client certificates are not simulated")
    con = SSLContext(PROTOCOL_TLS_SERVER if server_side else PROTOCOL_TLS_CLIENT)
    if cadata:
        con.load_verify_locations(cadata=cadata)
    con.verify_mode = cert_reqs
    return con.wrap_socket(sock, server_side=server_side, do_handshake_on_connect=do_handshake,
                           server_hostname=server_hostname)
