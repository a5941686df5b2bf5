# umqtt.simple 1.3.4 does `import ussl; ussl.wrap_socket(sock, **ssl_params)`. MicroPython >= 1.23 has
# no ussl: the built-in is `tls` and micropython-lib's frozen `ssl` offers
# ssl.wrap_socket(sock, cert_reqs=, cadata=, server_hostname=). This maps one onto the other and
# refuses to talk TLS without verifying the broker: CERT_REQUIRED, the CA read from a file, and
# the broker's name for SNI and the certificate name check.


import time


def _clock_year():
    return time.gmtime()[0]


def _set_clock():
    # An ESP32's clock restarts at 2000-01-01 on every power-on and mbedTLS checks the broker
    # certificate's dates against it ("validity starts in the future"): set it over NTP first.
    if _clock_year() >= 2024:
        return
    import ntptime
    try:
        ntptime.settime()
    except (OSError, OverflowError) as e:
        raise OSError("TLS: could not set the clock over NTP (%r), so the broker's certificate "
                      "dates can't be checked; retrying" % (e,))


def wrap_socket(sock, cafile=None, server_hostname=None, **kw):
    import ssl
    if not cafile or not server_hostname:
        raise ValueError("TLS needs the CA file ('ca' in config.json) and the broker's host name")
    _set_clock()
    with open(cafile, "rb") as f:
        cadata = f.read()
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
