"""`arcade init` (issue 15): what it writes is checked by the programs that will read it — systemd-analyze
(verify, and its offline security review), caddy (validate, adapt, and a real caddy proxying to a real
HTTP server), nginx (-t, and a real nginx over HTTPS), and a real mosquitto started on the generated broker configuration — plus the
modes and owners, and the bad inputs it must refuse without changing anything.

A missing tool fails with what to install (`make setup` installs them all with apt)."""
import getpass
import io
import json
import os
import shutil
import stat
import subprocess
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from relay import config
from tools.commands import init as init_cmd
from tools.deploy import kit
from tools.lab.broker import end_process, free_port, mosquitto_path, wait_port

WHSEC = "whsec_" + "k" * 32
API_KEY = "sk_test_" + "a1" * 12
ME = getpass.getuser()


def tool(name, package):
    found = shutil.which(name) or next((p for p in ("/usr/sbin/" + name, "/usr/bin/" + name) if os.path.exists(p)),
                                       None)
    if not found:
        pytest.fail("%s is not installed: run `make setup` (or apt-get install %s)" % (name, package))
    return found


def run_init(tmp_path, *extra, secrets=WHSEC + "\n" + API_KEY + "\n", url="https://pay.example.com"):
    out, err = io.StringIO(), io.StringIO()
    argv = ["--public-url", url, "--dir", str(tmp_path / "etc"), "--data-dir", str(tmp_path / "data"),
            "--user", ME, "--broker-user", ME, "--name", "Pixel Palace", "--tz", "Europe/London"] + list(extra)
    import contextlib
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = init_cmd.main(argv, stdin=io.StringIO(secrets))
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture
def made(tmp_path):
    rc, out, err = run_init(tmp_path)
    assert rc == 0, err
    return tmp_path / "etc"


def snapshot(folder):
    return {str(p.relative_to(folder)): (p.read_bytes(), stat.S_IMODE(p.stat().st_mode))
            for p in sorted(folder.rglob("*")) if p.is_file()}


# -- modes, owners, the environment file ---------------------------------------------------------------

def test_files_modes_and_the_relay_accepts_the_environment_file(made, tmp_path):
    modes = {name: stat.S_IMODE((made / name).stat().st_mode) for name in
             ("arcade.env", "mosquitto.passwd", "mosquitto.acl", "mosquitto.conf", "arcade-relay.service",
              "mosquitto.service.d/arcade.conf", "Caddyfile", "nginx-arcade.conf")}
    assert stat.S_IMODE((tmp_path / "data" / "arcade.db").stat().st_mode) == 0o600   # the ledger init made
    assert modes == {"arcade.env": 0o600, "mosquitto.passwd": 0o600, "mosquitto.acl": 0o640, "mosquitto.conf": 0o644,
                     "arcade-relay.service": 0o644, "mosquitto.service.d/arcade.conf": 0o644, "Caddyfile": 0o644,
                     "nginx-arcade.conf": 0o644}
    data = tmp_path / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert os.readlink(data / ".env") == str(made / "arcade.env")
    # the relay's own configuration loader takes the file as it is (the relay would start)
    cfg = config.load(environ={}, dotenv_path=str(data / ".env"))
    assert cfg["STRIPE_WEBHOOK_SECRET"] == WHSEC and cfg["STRIPE_API_KEY"] == API_KEY
    assert cfg["ARCADE_PUBLIC_URL"] == "https://pay.example.com" and cfg["ARCADE_PROXY_HOPS"] == 1
    assert cfg["ARCADE_NAME"] == "Pixel Palace" and cfg["ARCADE_DB"] == str(data / "arcade.db")
    assert cfg["ARCADE_CONSOLE"] is True        # /admin is served by the relay, behind the proxy
    assert config.parse_mqtt_url(cfg["MQTT_URL"])["username"] == "arcade.relay"      # the ledger's relay login (issue 9)
    # no secret anywhere but the two 0600 files
    password = config.parse_mqtt_url(cfg["MQTT_URL"])["password"]
    for name, (content, mode) in snapshot(made).items():
        if name not in ("arcade.env",):
            assert WHSEC.encode() not in content and API_KEY.encode() not in content and password.encode() not in content, name


def test_init_prints_no_secret(tmp_path):
    rc, out, err = run_init(tmp_path)
    assert rc == 0
    assert "arcade.env" in out and "0600" in out
    for secret in (WHSEC, API_KEY, WHSEC[6:]):
        assert secret not in out + err


def test_secrets_are_owned_by_their_readers(made):
    # --user and --broker-user are this test's user: as root init chowns to them, otherwise leaves them ours
    assert (made / "arcade.env").stat().st_uid == os.getuid()
    assert (made / "mosquitto.passwd").stat().st_uid == os.getuid()


def test_as_root_a_missing_system_user_is_refused_before_anything_is_written(tmp_path):
    if os.geteuid() != 0:
        rc, out, err = run_init(tmp_path)          # not root: no chown, so no user is needed
        assert rc == 0, err
        return
    out, err = io.StringIO(), io.StringIO()
    import contextlib
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = init_cmd.main(["--public-url", "https://pay.example.com", "--dir", str(tmp_path / "etc"), "--data-dir",
                            str(tmp_path / "data"), "--user", "no-such-user-i15"],
                           stdin=io.StringIO(WHSEC + "\n\n"))
    assert rc == 2 and "system user 'no-such-user-i15' does not exist" in err.getvalue()
    assert not (tmp_path / "etc").exists()


# -- systemd ---------------------------------------------------------------------------------------------

def verify(unit, env=None):
    done = subprocess.run([tool("systemd-analyze", "systemd"), "verify", "--man=no", str(unit)],
                          capture_output=True, text=True, timeout=60, env=env)
    # systemd-analyze exits 0 on unknown keys and misspelled sections: its warnings are failures here
    return done.returncode, [l for l in done.stderr.splitlines() if l.strip()]


def test_relay_unit_passes_systemd_analyze_verify_and_its_security_review(made):
    unit = made / "arcade-relay.service"
    assert verify(unit) == (0, [])
    text = unit.read_text()
    for line in ("ProtectSystem=strict", "ReadWritePaths=%s" % (made.parent / "data"), "NoNewPrivileges=yes",
                 "Restart=on-failure", "UMask=0077", "EnvironmentFile=%s" % (made / "arcade.env")):
        assert line in text.splitlines()
    # systemd's own exposure score (0 = locked down, 10 = exposed): ours must stay "OK" and low
    done = subprocess.run([tool("systemd-analyze", "systemd"), "security", "--offline=yes", "--threshold=25",
                           str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout[-800:]


def test_the_verify_check_can_fail(made, tmp_path):
    broken = tmp_path / "arcade-relay.service"
    broken.write_text((made / "arcade-relay.service").read_text().replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    rc, warnings = verify(broken)
    assert any("NoNewPrivilege" in w for w in warnings)
    missing = tmp_path / "x" / "arcade-relay.service"
    missing.parent.mkdir()
    missing.write_text((made / "arcade-relay.service").read_text().replace(str(kit.default_arcade_bin()),
                                                                          "/nonexistent/arcade"))
    assert verify(missing)[0] != 0


def test_mosquitto_drop_in_verifies_with_debians_unit(made, tmp_path):
    debian = Path("/lib/systemd/system/mosquitto.service")
    if not debian.exists():
        pytest.fail("Debian's mosquitto.service is missing: apt-get install mosquitto (make setup)")
    units = tmp_path / "units"
    (units / "mosquitto.service.d").mkdir(parents=True)
    shutil.copy(debian, units / "mosquitto.service")
    shutil.copy(made / "mosquitto.service.d" / "arcade.conf", units / "mosquitto.service.d" / "arcade.conf")
    env = dict(os.environ, SYSTEMD_UNIT_PATH=str(units) + ":")
    assert verify(units / "mosquitto.service", env) == (0, [])
    # the drop-in is really read: a bad key in it is reported
    (units / "mosquitto.service.d" / "arcade.conf").write_text(
        (made / "mosquitto.service.d" / "arcade.conf").read_text() + "Restrt=always\n")
    assert any("Restrt" in w for w in verify(units / "mosquitto.service", env)[1])


# -- Caddy -----------------------------------------------------------------------------------------------

def caddy_env(tmp_path):
    return dict(os.environ, HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path / "xdg-data"),
                XDG_CONFIG_HOME=str(tmp_path / "xdg-config"))


def test_caddyfile_validates_and_exposes_only_the_public_paths(made, tmp_path):
    caddy = tool("caddy", "caddy")
    done = subprocess.run([caddy, "validate", "--adapter", "caddyfile", "--config", str(made / "Caddyfile")],
                          capture_output=True, text=True, timeout=120, env=caddy_env(tmp_path))
    assert done.returncode == 0, done.stderr[-800:]
    adapted = subprocess.run([caddy, "adapt", "--adapter", "caddyfile", "--config", str(made / "Caddyfile")],
                             capture_output=True, text=True, timeout=120, env=caddy_env(tmp_path))
    assert adapted.returncode == 0, adapted.stderr[-800:]
    server = json.loads(adapted.stdout)["apps"]["http"]["servers"]["srv0"]
    assert server["listen"] == [":443"]                    # HTTPS, automatic certificate for the host
    route = server["routes"][0]
    assert route["match"] == [{"host": ["pay.example.com"]}]
    paths = sorted(path_matchers(route))
    assert paths == sorted(["/stripe/webhook", "/pay/*", "/paid", "/paid/status", "/cancel", "/static/*",
                            "/admin", "/admin/*"])


def path_matchers(node):
    """Every path matcher anywhere in Caddy's JSON."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "path" and isinstance(v, list):
                yield from v
            else:
                yield from path_matchers(v)
    elif isinstance(node, list):
        for v in node:
            yield from path_matchers(v)


class _Backend(BaseHTTPRequestHandler):
    def _answer(self):
        body = ("backend saw %s %s" % (self.command, self.path)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


def get(url, method="GET"):
    req = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read().decode()


def test_a_real_caddy_on_the_generated_file_proxies_only_the_public_paths(tmp_path):
    caddy = tool("caddy", "caddy")
    backend = ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    port = free_port()
    try:
        rc, out, err = run_init(tmp_path, "--insecure-for-testing", "--relay-port", str(backend.server_address[1]),
                                url="http://127.0.0.1:%d" % port)
        assert rc == 0, err
        conf = tmp_path / "Caddyfile.test"
        # our own process: no admin endpoint (another caddy may have :2019), the generated site as it is
        conf.write_text("{\n\tadmin off\n\tauto_https off\n}\n" + (tmp_path / "etc" / "Caddyfile").read_text())
        proc = subprocess.Popen([caddy, "run", "--adapter", "caddyfile", "--config", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=caddy_env(tmp_path))
        try:
            assert wait_port("127.0.0.1", port, 30, proc), proc.stderr.read().decode()[-800:] if proc.poll() else ""
            base = "http://127.0.0.1:%d" % port
            for path in ("/pay/galaga-1", "/paid?session_id=cs_1", "/paid/status?session_id=cs_1", "/cancel",
                         "/static/pay.css", "/admin/", "/admin"):
                assert get(base + path) == (200, "backend saw GET %s" % path), path
            assert get(base + "/stripe/webhook", "POST") == (200, "backend saw POST /stripe/webhook")
            for path in ("/healthz", "/metrics", "/", "/pay", "/paidx", "/stripe/webhookx", "/static", "/.env"):
                assert get(base + path)[0] == 404, path
        finally:
            end_process(proc)
            proc.stderr.close()
    finally:
        backend.shutdown()
        backend.server_close()


# -- nginx -----------------------------------------------------------------------------------------------

def nginx_files(tmp_path, backend_port=8000, http_port=80, https_port=443):
    tool("nginx", "nginx")
    openssl = tool("openssl", "openssl")
    s = kit.Settings("https://pay.example.com", dir=tmp_path / "etc", data_dir=tmp_path / "data", user=ME,
                     relay_port=backend_port)
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=pay.example.com", "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")],
                   check=True, capture_output=True, timeout=120)
    site = tmp_path / "arcade.conf"
    site.write_text(kit.nginx_conf(s, tmp_path / "cert.pem", tmp_path / "key.pem", http_port, https_port))
    main = tmp_path / "nginx.conf"
    temp = tmp_path / "temp"
    temp.mkdir()
    # nginx's own main file around the generated site, every path in this test's directory
    main.write_text("%spid %s/nginx.pid;\nerror_log %s/error.log;\nevents {}\nhttp {\n access_log off;\n"
                    " client_body_temp_path %s/body;\n proxy_temp_path %s/proxy;\n fastcgi_temp_path %s/fcgi;\n"
                    " uwsgi_temp_path %s/uwsgi;\n scgi_temp_path %s/scgi;\n include %s;\n}\n"
                    % ((("user %s;\n" % ME) if os.geteuid() == 0 else "",) + (tmp_path,) * 2 + (temp,) * 5 + (site,)))
    return site, main


def test_nginx_alternative_passes_nginx_t(tmp_path):
    nginx = tool("nginx", "nginx")
    site, main = nginx_files(tmp_path)
    done = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(main)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "test is successful" in done.stderr
    # and the check can fail: a mistyped directive
    site.write_text(site.read_text().replace("proxy_pass", "proxy_passs", 1))
    assert subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(main)], capture_output=True,
                          timeout=60).returncode != 0


def test_a_real_nginx_on_the_generated_file_proxies_only_the_public_paths(tmp_path):
    import ssl
    nginx = tool("nginx", "nginx")
    backend = ThreadingHTTPServer(("127.0.0.1", 0), _Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    http_port, https_port = free_port(), free_port()
    site, main = nginx_files(tmp_path, backend.server_address[1], http_port, https_port)
    proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(main), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_port("127.0.0.1", https_port, 30, proc), proc.stderr.read().decode() if proc.poll() is not None else ""
        context = ssl.create_default_context(cafile=str(tmp_path / "cert.pem"))
        context.check_hostname = False          # the certificate names pay.example.com; we dial 127.0.0.1

        def fetch(path, method="GET"):
            req = urllib.request.Request("https://127.0.0.1:%d%s" % (https_port, path), method=method,
                                         data=b"{}" if method == "POST" else None, headers={"Host": "pay.example.com"})
            try:
                with urllib.request.urlopen(req, timeout=10, context=context) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                e.close()
                return e.code, ""

        for path in ("/pay/galaga-1", "/paid?session_id=cs_1", "/paid/status?session_id=cs_1", "/cancel",
                     "/static/pay.css", "/admin/", "/admin"):
            assert fetch(path) == (200, "backend saw GET %s" % path), path
        assert fetch("/stripe/webhook", "POST") == (200, "backend saw POST /stripe/webhook")
        for path in ("/healthz", "/metrics", "/", "/pay", "/paidx", "/stripe/webhookx", "/static", "/.env"):
            assert fetch(path)[0] == 404, path
        # plain HTTP is redirected to HTTPS
        req = urllib.request.Request("http://127.0.0.1:%d/pay/galaga-1" % http_port, headers={"Host": "pay.example.com"})
        opener = urllib.request.build_opener(_NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as got:
            opener.open(req, timeout=10)
        got.value.close()
        assert got.value.code == 301 and got.value.headers["Location"] == "https://pay.example.com/pay/galaga-1"
    finally:
        end_process(proc)
        proc.stderr.close()
        backend.shutdown()
        backend.server_close()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


# -- mosquitto -------------------------------------------------------------------------------------------

def mqtt_login(port, username=None, password=None, timeout=10.0):
    """The broker's CONNACK for a login: True (accepted), or the reason it refused."""
    done = threading.Event()
    result = {}
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-kit-%d" % os.getpid())
    if username is not None:
        c.username_pw_set(username, password)

    def on_connect(client, userdata, flags, rc, props):
        result["rc"] = rc
        done.set()

    c.on_connect = on_connect
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        assert done.wait(timeout), "no CONNACK within %.0f s" % timeout
    finally:
        c.disconnect()
        c.loop_stop()
    return True if not result["rc"].is_failure else str(result["rc"])


def test_a_real_mosquitto_runs_on_the_generated_broker_configuration(tmp_path):
    port = free_port()
    rc, out, err = run_init(tmp_path, "--mqtt-port", str(port))
    assert rc == 0, err
    made = tmp_path / "etc"
    # Debian's /etc/mosquitto/mosquitto.conf, with this test's own paths, including conf.d like Debian's
    confd = tmp_path / "conf.d"
    confd.mkdir()
    (confd / "arcade.conf").symlink_to(made / "mosquitto.conf")
    (tmp_path / "mdata").mkdir()
    main = tmp_path / "mosquitto.conf"
    main.write_text("persistence true\npersistence_location %s/\nlog_dest file %s\nuser %s\ninclude_dir %s\n"
                    % (tmp_path / "mdata", tmp_path / "mosquitto.log", ME, confd))
    proc = subprocess.Popen([mosquitto_path(), "-c", str(main)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_port("127.0.0.1", port, 20, proc), proc.stderr.read().decode() if proc.poll() is not None else ""
        url = config.parse_mqtt_url(config.load(environ={}, dotenv_path=str(made / "arcade.env"))["MQTT_URL"])
        assert url["port"] == port
        assert mqtt_login(port, url["username"], url["password"]) is True
        assert mqtt_login(port, url["username"], url["password"] + "x") is not True
        assert mqtt_login(port) is not True                    # anonymous refused
    finally:
        end_process(proc)
        proc.stderr.close()
    # a cabinet added later: init --force regenerates the logins and the ACL from the ledger (issue 9's
    # generator); the cabinet's own login gets in and can neither publish nor read another's credits
    from relay.ledger import open_ledger
    from tools.deploy.doctor import isolation_probe
    with open_ledger(tmp_path / "data" / "arcade.db") as led:
        led.add_cabinet("galaga-1", price_cents=100)
        cab_pw = led.broker_password("galaga-1")
    rc, out, err = run_init(tmp_path, "--mqtt-port", str(port), "--force")
    assert rc == 0, err
    assert "user galaga-1" in (made / "mosquitto.acl").read_text()
    proc = subprocess.Popen([mosquitto_path(), "-c", str(main)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_port("127.0.0.1", port, 20, proc), proc.stderr.read().decode() if proc.poll() is not None else ""
        assert mqtt_login(port, "galaga-1", cab_pw) is True
        cab = {"host": "127.0.0.1", "port": port, "username": "galaga-1", "password": cab_pw, "tls": False}
        relay = dict(cab, username=url["username"], password=url["password"])
        got = isolation_probe(relay, cab, "arcade", timeout=10)
        assert got == {"cab_wrote": False, "cab_read": False, "error": None}
    finally:
        end_process(proc)
        proc.stderr.close()


def test_debians_privilege_drop_can_read_the_password_file():
    """Debian's mosquitto starts as root and reads password_file after becoming `mosquitto`: the kit's
    mosquitto.passwd must belong to that user (a root-owned 0600 file stops the broker). As root this
    runs the broker exactly so; otherwise it stays who it is (and init leaves the file ours)."""
    import pwd
    import tempfile
    as_root = os.geteuid() == 0
    broker_user = "mosquitto" if as_root else ME
    if as_root:
        try:
            pwd.getpwnam(broker_user)
        except KeyError:
            pytest.fail("no `mosquitto` user: apt-get install mosquitto (make setup)")
    base = Path(tempfile.mkdtemp(prefix="arcade-kit-"))   # not under pytest's 0700 tree: the broker user must get in
    try:
        os.chmod(base, 0o755)
        port = free_port()
        rc, out, err = run_init(base, "--mqtt-port", str(port), "--broker-user", broker_user)
        assert rc == 0, err
        data = base / "mdata"
        data.mkdir()
        if as_root:
            pw = pwd.getpwnam(broker_user)
            os.chown(data, pw.pw_uid, pw.pw_gid)
        main = base / "mosquitto.conf"
        main.write_text("persistence true\npersistence_location %s/\nlog_dest stderr\nuser %s\ninclude_dir %s\n"
                        % (data, broker_user, base / "conf.d"))
        (base / "conf.d").mkdir()
        (base / "conf.d" / "arcade.conf").symlink_to(base / "etc" / "mosquitto.conf")

        def start():
            proc = subprocess.Popen([mosquitto_path(), "-c", str(main)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
            up = wait_port("127.0.0.1", port, 20, proc)
            return proc, up

        proc, up = start()
        try:
            assert up, proc.stderr.read().decode() if proc.poll() is not None else "no listener"
            url = config.parse_mqtt_url(config.load(environ={}, dotenv_path=str(base / "etc" / "arcade.env"))["MQTT_URL"])
            assert mqtt_login(port, url["username"], url["password"]) is True
        finally:
            end_process(proc)
            proc.stderr.close()
        if as_root:
            # the counter-proof: the same file owned by root stops Debian's broker at start
            os.chown(base / "etc" / "mosquitto.passwd", 0, 0)
            proc, up = start()
            try:
                assert not up
                assert "Unable to open pwfile" in proc.stderr.read().decode()
            finally:
                end_process(proc)
                proc.stderr.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)


# -- bad input -------------------------------------------------------------------------------------------

def test_an_existing_kit_is_refused_without_force_and_nothing_changes(made, tmp_path):
    before = snapshot(made)
    rc, out, err = run_init(tmp_path, secrets="whsec_" + "z" * 32 + "\n\n")
    assert rc == 2 and "--force" in err and "already has" in err
    assert snapshot(made) == before


def test_force_rewrites_configuration_but_never_a_secret(made, tmp_path):
    before = snapshot(made)
    rc, out, err = run_init(tmp_path, "--force", secrets="whsec_" + "z" * 32 + "\n\n", url="https://arcade.example.org")
    assert rc == 0, err
    after = snapshot(made)
    assert after["arcade.env"] == before["arcade.env"]            # secrets kept, stdin not read for them
    # the broker's logins follow the ledger: rewritten (new salts), the relay's password the same
    from relay.mosquitto import check_password
    relay_pw = config.parse_mqtt_url(config.load(environ={}, dotenv_path=str(made / "arcade.env"))["MQTT_URL"])["password"]
    line = after["mosquitto.passwd"][0].decode().splitlines()[0]
    assert line.startswith("arcade.relay:") and check_password(relay_pw, line.split(":", 1)[1])
    assert "arcade.example.org" in after["Caddyfile"][0].decode()
    assert "kept" in out


@pytest.mark.parametrize("url, secrets, extra, message", [
    ("http://pay.example.com", WHSEC + "\n\n", [], "is not https://"),
    ("https://pay.example.com/relay", WHSEC + "\n\n", [], "just the scheme and host"),
    ("pay.example.com", WHSEC + "\n\n", [], "is not https://"),
    ("https://pay.example.com", "\n\n", [], "secret missing"),
    ("https://pay.example.com", "sk_test_abcdefghijkl\n\n", [], "does not start with whsec_"),
    ("https://pay.example.com", "whsec_short\n\n", [], "starts with whsec_ but"),
    ("https://pay.example.com", WHSEC + "\npk_test_abcdefghijkl\n", [], "API key is not shaped like one"),
    ("https://pay.example.com", WHSEC + "\n\n", ["--name", 'Bob"s'], "--name"),
    ("https://pay.example.com", WHSEC + "\n\n", ["--tz", "Mars/Olympus"], "is not a time zone"),
    ("https://pay.example.com", WHSEC + "\n\n", ["--mqtt-port", "0"], "is not a TCP port"),
])
def test_bad_input_is_refused_and_nothing_is_written(tmp_path, url, secrets, extra, message):
    rc, out, err = run_init(tmp_path, *extra, secrets=secrets, url=url)
    assert rc == 2 and message in err, err
    assert not (tmp_path / "etc").exists() and not (tmp_path / "data").exists()
    for line in secrets.splitlines():
        if len(line) > 6:
            assert line not in err


def test_an_http_url_only_with_the_testing_flag(tmp_path):
    rc, out, err = run_init(tmp_path, "--insecure-for-testing", url="http://127.0.0.1:8080")
    assert rc == 0, err


def test_secrets_are_not_accepted_on_the_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        init_cmd.main(["--public-url", "https://pay.example.com", "--webhook-secret", WHSEC], stdin=io.StringIO(""))
    assert WHSEC not in capsys.readouterr().out
