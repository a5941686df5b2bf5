# umqtt.simple 1.3.4 does `import ussl; ussl.wrap_socket(sock, **ssl_params)`. MicroPython >= 1.23 has
# no ussl: the built-in is `tls` and micropython-lib's frozen `ssl` offers
# ssl.wrap_socket(sock, cert_reqs=, cadata=, server_hostname=). This maps one onto the other and
# refuses to talk TLS without verifying the broker: CERT_REQUIRED, the CA read from a file, and
# the broker's name for SNI and the certificate name check.


def wrap_socket(sock, cafile=None, server_hostname=None, **kw):
    import ssl
    if not cafile or not server_hostname:
        raise ValueError("TLS needs the CA file ('ca' in config.json) and the broker's host name")
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
