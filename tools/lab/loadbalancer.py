"""A real load balancer in front of several relays: Debian's nginx, its own configuration, logs and
pid file under a work directory, on a free loopback port (never the machine's nginx service or its
files).

Stripe's webhook lands on any relay: nginx spreads requests round-robin and passes a request whose
relay refuses the connection (killed, restarting) on to the next one, as a production balancer would.
A relay that answers slowly is not retried behind Stripe's back (a POST already sent stays with its
relay; Stripe retries what got no 2xx).
"""
import os
import shutil
import subprocess
from pathlib import Path

from tools.lab.broker import end_process, free_port, wait_port
from tools.lab.stack import WebhookEndpoint

INSTALL_HINT = ("nginx is not installed: run `make setup` (installs it with apt) or `apt-get install nginx` "
                "(the multi-relay tests put it in front of the relays as their load balancer)")


def nginx_path():
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if not found:
        raise RuntimeError(INSTALL_HINT)
    return found


class LoadBalancer(WebhookEndpoint):
    """nginx on 127.0.0.1:<port> proxying to the relays on `backend_ports`."""

    def __init__(self, workdir, backend_ports, port=None):
        self.workdir = Path(workdir)
        self.backend_ports = list(backend_ports)
        self.port = port or free_port()
        self.proc = None
        self.log_path = self.workdir / "nginx-error.log"
        self.access_log = self.workdir / "nginx-access.log"

    def _conf(self):
        servers = "\n".join("        server 127.0.0.1:%d max_fails=0;" % p for p in self.backend_ports)
        temp = self.workdir / "temp"
        user = "user nobody nogroup;\n" if os.geteuid() == 0 else ""
        return """%sworker_processes 1;
pid %s;
error_log %s info;
events { worker_connections 256; }
http {
    access_log %s;
    client_body_temp_path %s/body;
    proxy_temp_path %s/proxy;
    fastcgi_temp_path %s/fastcgi;
    uwsgi_temp_path %s/uwsgi;
    scgi_temp_path %s/scgi;
    upstream relays {
%s
        keepalive 16;
    }
    server {
        listen 127.0.0.1:%d;
        location / {
            proxy_pass http://relays;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;    # the public name (the relays check it: TRUSTED_HOSTS), not "relays"
            proxy_connect_timeout 2s;
            proxy_read_timeout 5s;      # a relay cut off from its database: Stripe (the sender) retries
            proxy_next_upstream error timeout http_502 http_503;
            proxy_next_upstream_tries %d;
        }
    }
}
""" % (user, self.workdir / "nginx.pid", self.log_path, self.access_log, temp, temp, temp, temp, temp, servers,
       self.port, len(self.backend_ports))

    def start(self, timeout=10.0):
        binary = nginx_path()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "temp").mkdir(exist_ok=True)
        os.chmod(self.workdir / "temp", 0o777)      # nginx's worker (nobody, when started as root) writes there
        conf = self.workdir / "nginx.conf"
        conf.write_text(self._conf())
        self._out = open(self.workdir / "nginx.out", "ab")
        self.proc = subprocess.Popen([binary, "-p", str(self.workdir), "-e", str(self.log_path), "-c", str(conf),
                                      "-g", "daemon off;"], stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        if not wait_port("127.0.0.1", self.port, timeout, self.proc):
            self.stop()
            raise RuntimeError("nginx did not start on port %d (see %s and %s)" % (self.port, self.log_path,
                                                                                 self.workdir / "nginx.out"))
        return self

    def stop(self, timeout=10.0):
        if self.proc is not None:
            end_process(self.proc, timeout=timeout)   # SIGTERM: nginx's fast shutdown
            self.proc = None
            self._out.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
