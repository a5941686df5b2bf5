# TLS for umqtt.simple 1.3.4, which does `import ussl; ussl.wrap_socket(sock, **ssl_params)`.
# The app installs this module as sys.modules["ussl"] before connecting: on MicroPython 1.22 a
# u-prefixed import returns the built-in `ssl` before any file (py/objmodule.c), so a file named
# ussl.py would never load there and the C wrap_socket would reject `cafile=` (TypeError -> reset);
# >= 1.23 has no `ussl` at all. This maps umqtt's call onto `ssl.wrap_socket` (1.22's C function
# and >= 1.23's frozen ssl take the same keywords) and refuses to talk TLS without verifying the
# broker: CERT_REQUIRED, the CA read from a file, the broker's name for SNI and the name check.
import time

feed = None        # the app's watchdog feed: called around the handshake


def _clock_year():
    return time.gmtime()[0]


def set_clock():
    # An ESP32's clock restarts at 2000-01-01 on every power-on and mbedTLS checks the broker
    # certificate's dates against it. The app calls this right after WiFi, before any broker socket
    # is open. Any failure (no reply: OSError; a short reply: ValueError from struct.unpack in
    # ntptime; OverflowError) is a link error the app retries with backoff, never a reset.
    if _clock_year() >= 2024:
        return
    try:
        import ntptime
        ntptime.settime()
    except Exception as e:
        raise OSError("NTP: could not set the clock (%r), so the broker's certificate dates can't "
                      "be checked; retrying" % (e,))


def wrap_socket(sock, cafile=None, server_hostname=None, **kw):
    import ssl
    if not cafile or not server_hostname:
        raise ValueError("TLS needs the CA file ('ca' in config.json) and the broker's host name")
    if _clock_year() < 2024:
        raise OSError("TLS: the clock is not set (NTP first), so the broker's certificate dates "
                      "can't be checked; retrying")
    with open(cafile, "rb") as f:
        cadata = f.read()
    if feed is not None:
        feed()
    try:
        return ssl.wrap_socket(sock, cert_reqs=ssl.CERT_REQUIRED, cadata=cadata,
                               server_hostname=server_hostname)
    except ValueError as e:
        # MicroPython >= 1.23 raises ValueError for a broker certificate that fails verification
        # (not signed by our CA, wrong name, expired; one reason a line) and for unusable CA
        # data. To the app that is a failed link like any other (OSError): it retries with
        # backoff instead of crashing into a reset loop.
        raise OSError("TLS: %s (check the CA in 'ca' and the broker's host name)"
                      % "; ".join([s for s in str(e).split("\n") if s]))
    finally:
        if feed is not None:
            feed()
