"""`arcade doctor` (issue 15) on a real test deployment: the kit `arcade init` wrote, a real mosquitto on
its broker configuration with a per-cabinet login and ACL, a real relay holding the dispatcher lock, a
cabinet provisioned with `arcade provision`, and the fake Stripe listing the webhook endpoint. Healthy:
every check ok, exit 0. Then one row per way to be broken, each with the message its check prints, and
never a secret in the output."""
import contextlib
import getpass
import io
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from relay import config
from relay import ledger as ledger_mod
from relay.ledger import backup_database, open_ledger
from tools.commands import doctor as doctor_cmd
from tools.commands import init as init_cmd
from tools.commands.provision import provision
from tools.deploy import broker as broker_kit
from tools.deploy.doctor import EVENTS, Doctor, report
from tools.lab import stack
from tools.lab.broker import Mosquitto, end_process, free_port, mosquitto_path, wait_port
from tools.lab.fake_stripe import FakeStripe

WHSEC = "whsec_" + "D0c" * 11
API_KEY = "sk_test_" + "doctorKey" * 3
CAB_PASSWORD = "cabinet-pw-" + "x" * 20
URL = "https://pay.example.com"
ME = getpass.getuser()


def run(main, argv, stdin=None):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv, stdin=stdin) if stdin is not None else main(argv)
    return rc, out.getvalue() + err.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deploy")
    port = free_port()
    rc, out = run(init_cmd.main, ["--public-url", URL, "--dir", str(tmp / "etc"), "--data-dir", str(tmp / "data"),
                                  "--user", ME, "--broker-user", ME, "--mqtt-port", str(port)],
                  stdin=io.StringIO(WHSEC + "\n" + API_KEY + "\n"))
    assert rc == 0, out
    etc, data = tmp / "etc", tmp / "data"
    env = config.load(environ={}, dotenv_path=str(etc / "arcade.env"))
    relay_login = config.parse_mqtt_url(env["MQTT_URL"])
    fake = FakeStripe(api_key=API_KEY).start()
    fake.add_webhook_endpoint(URL + "/stripe/webhook", events=EVENTS)
    with open(etc / "arcade.env", "a") as f:
        f.write("STRIPE_API_BASE=%s\n" % fake.url)       # tests only: the fake Stripe on loopback
    db = str(data / "arcade.db")
    with open_ledger(db) as led:
        led.add_cabinet("galaga-1", price_cents=100)
        galaga_pw = led.broker_password("galaga-1")
    os.chmod(db, 0o600)
    # The broker's logins and ACL, written here by hand (independent of the kit's generator, which
    # test_deploy_kit checks): the relay's from the env file, galaga-1's own from the ledger (arcade
    # provision writes it into config.json), and nosy-1, a login with too many rights for the isolation rows.
    (etc / "mosquitto.passwd").write_text(broker_kit.hash_passwords({
        relay_login["username"]: relay_login["password"], "galaga-1": galaga_pw, "nosy-1": CAB_PASSWORD}))
    (etc / "mosquitto.acl").write_text("user %s\ntopic readwrite arcade/#\n\n" % relay_login["username"] +
                                       "user nosy-1\ntopic readwrite arcade/#\n\n"
                                       "pattern read arcade/%u/credit\npattern read arcade/%u/config\n"
                                       "pattern read arcade/%u/test\npattern write arcade/%u/ack\n"
                                       "pattern readwrite arcade/%u/status\n")
    confd = tmp / "conf.d"
    confd.mkdir()
    # The kit sets use_username_as_clientid (a login can't take another client's connection); doctor then
    # skips its login probes (test_no_login_probe_where_the_user_name_is_the_client_id). This world
    # runs without it so that the probes themselves are tested.
    kit = (etc / "mosquitto.conf").read_text()
    assert "use_username_as_clientid true" in kit
    kit = "".join(l for l in kit.splitlines(True) if not l.startswith("use_username_as_clientid"))
    (etc / "mosquitto.conf").write_text(kit)
    (confd / "arcade.conf").write_text(kit)      # names mosquitto.acl
    (tmp / "mdata").mkdir()
    (tmp / "mosquitto-main.conf").write_text("persistence true\npersistence_location %s/\nlog_dest file %s\nuser %s\n"
                                             "include_dir %s\n" % (tmp / "mdata", tmp / "mosquitto.log", ME, confd))
    broker = subprocess.Popen([mosquitto_path(), "-c", str(tmp / "mosquitto-main.conf")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prov = tmp / "provisioned"
    provision("galaga-1", "esp32-devkitc", "ArcadeWiFi", "wifi-pw", "mqtt://galaga-1:%s@192.0.2.10:%d"
              % (CAB_PASSWORD, port), db, out=prov)
    relay = None
    try:
        assert wait_port("127.0.0.1", port, 20, broker), "mosquitto did not start (log: %s)" % (tmp / "mosquitto.log")
        relay = stack.Relay(tmp, db, env["MQTT_URL"], WHSEC, extra_env={"ARCADE_RECONCILE_EVERY": "0"}).start()
        stack.wait_until(lambda: relay.health().get("broker") == "ok", 30, 0.1, "relay on the broker")
        yield {"tmp": tmp, "etc": etc, "env": str(etc / "arcade.env"), "db": db, "prov": str(prov), "fake": fake,
               "port": port, "relay": relay, "relay_password": relay_login["password"]}
    finally:
        if relay is not None:
            relay.stop()
        end_process(broker)
        fake.stop()


def settings(w):
    return doctor_cmd.settings(w["env"])


SECRETS = (WHSEC, API_KEY, CAB_PASSWORD, WHSEC[6:], API_KEY[8:])


def assert_no_secret(text, w):
    for secret in SECRETS + (w["relay_password"],):
        assert secret not in text


def test_a_healthy_deployment_passes_every_check(world):
    rc, out = run(doctor_cmd.main, ["--env", world["env"], "--provisioned", world["prov"], "--no-timedatectl"])
    print(out)          # the closing note of issue 15 quotes it
    assert rc == 0, out
    assert "FAIL" not in out and "all checks passed" in out
    for name in ("settings file", "webhook secret", "Stripe API key", "public URL", "database", "schema",
                 "broker login", "cabinet isolation", "cabinets", "dispatcher", "Stripe API", "clock", "disk space"):
        line = [l for l in out.splitlines() if l[8:].startswith(name)]
        assert line and line[0].split()[0] == "ok", (name, out)
    assert "pid %d" % world["relay"].proc.pid in out
    assert_no_secret(out, world)
    # the single list call Stripe got
    assert [r.path for r in world["fake"].api_requests("GET", "/v1/webhook_endpoints")]


# -- one row per way to be broken --------------------------------------------------------------------------

def _chmod(path, mode):
    def undo(old=os.stat(path).st_mode):
        os.chmod(path, old)
    os.chmod(path, mode)
    return undo


def copy_db(w):
    """A copy of the database no relay runs on."""
    path = w["tmp"] / ("copy-%d.db" % time.monotonic_ns())
    path.touch(mode=0o600)
    backup_database(w["db"], path)
    return str(path)


def provisioned_with(w, cabinets):
    """A provisioning folder with these (cabinet, broker user, password): galaga-1's config.json as
    `arcade provision` wrote it, with the cabinet id and the broker login the row needs."""
    out = w["tmp"] / ("prov-%d" % time.monotonic_ns())
    out.mkdir()
    template = json.loads((Path(w["prov"]) / "galaga-1" / "config.json").read_text())
    for cab, user, password in cabinets:
        with open_ledger(w["db"]) as led:
            if led.get_cabinet(cab) is None:
                led.add_cabinet(cab, price_cents=100)
        (out / cab).mkdir()
        cfg = dict(template, cabinet=cab, broker="mqtt://%s:%s@192.0.2.10:%d" % (user, password, w["port"]))
        (out / cab / "config.json").write_text(json.dumps(cfg))
    return str(out)


def endpoint(w, host, **kw):
    w["fake"].add_webhook_endpoint("https://%s/stripe/webhook" % host, **kw)
    return "https://" + host


BROKEN = [
    # (id, change -> (settings, Doctor kwargs, undo), check, message)
    ("env-mode", lambda w, s: (s, {}, _chmod(w["env"], 0o644)), "settings file", "is mode 0644: other users"),
    ("no-webhook-secret", lambda w, s: (dict(s, STRIPE_WEBHOOK_SECRET=""), {}, None), "webhook secret",
     "STRIPE_WEBHOOK_SECRET missing"),
    ("api-key-as-webhook-secret", lambda w, s: (dict(s, STRIPE_WEBHOOK_SECRET=API_KEY), {}, None), "webhook secret",
     "does not start with whsec_"),
    ("cli-secret-with-live-key", lambda w, s: (dict(s, STRIPE_WEBHOOK_SECRET="whsec_" + "ab12" * 16,
                                                    STRIPE_API_KEY="sk_live_" + "L" * 24), {}, None),
     "webhook secret", "`stripe listen` prints (test mode"),
    ("publishable-key", lambda w, s: (dict(s, STRIPE_API_KEY="pk_test_" + "p" * 24), {}, None), "Stripe API key",
     "not shaped like a Stripe secret key"),
    ("http-url", lambda w, s: (dict(s, ARCADE_PUBLIC_URL="http://pay.example.com"), {}, None), "public URL",
     "is not https"),
    ("no-public-url", lambda w, s: (dict(s, ARCADE_PUBLIC_URL=""), {}, None), "public URL", "is not set"),
    ("no-database", lambda w, s: (dict(s, ARCADE_DB=str(w["tmp"] / "nope.db")), {}, None), "database",
     "no database at"),
    ("database-mode", lambda w, s: (s, {}, _chmod(w["db"], 0o644)), "database", "is mode 0644: others can read"),
    ("schema-behind", lambda w, s: (s, {}, _extra_migration()), "schema", "lacks 1 migration(s): test_doctor_future"),
    ("broker-wrong-password", lambda w, s: (dict(s, MQTT_URL="mqtt://arcade.relay:wrong@127.0.0.1:%d" % w["port"]),
                                            {}, None), "broker login", "refused the relay's login"),
    ("broker-down", lambda w, s: (dict(s, MQTT_URL="mqtt://arcade.relay:x@127.0.0.1:%d" % free_port()), {}, None),
     "broker login", "cannot connect to 127.0.0.1"),
    ("broker-anonymous", None, "broker login", "lets a client in without a password"),
    ("cluster-node-down", lambda w, s: (dict(s, MQTT_URL="%s,mqtt://arcade.relay:x@127.0.0.1:%d"
                                             % (s["MQTT_URL"], free_port())), {}, None),
     "broker login", "(node 2 of 2): cannot connect to 127.0.0.1"),
    ("cluster-node-wrong-password", lambda w, s: (dict(s, MQTT_URL="%s,mqtt://arcade.relay:wrong@127.0.0.1:%d"
                                                       % (s["MQTT_URL"], w["port"])), {}, None),
     "broker login", "(node 2 of 2) refused the relay's login"),
    ("cabinet-uses-relay-login", lambda w, s: (s, {"provisioned": provisioned_with(
        w, [("galaga-1", "arcade.relay", "whatever")])}, None), "cabinet isolation", "logs into the broker as the relay"),
    ("cabinet-reads-everything", lambda w, s: (s, {"provisioned": provisioned_with(
        w, [("nosy-1", "nosy-1", CAB_PASSWORD)])}, None), "cabinet isolation", "may publish on another cabinet's topics and read other cabinets' topics"),
    ("cabinet-unknown-login", lambda w, s: (s, {"provisioned": provisioned_with(
        w, [("galaga-1", "galaga-9", CAB_PASSWORD)])}, None), "cabinet isolation", "cannot log into the broker"),
    ("provisioned-not-registered", None, "cabinets", "but not in the database: ghost-1"),
    ("registered-not-provisioned", lambda w, s: (s, {"provisioned": str(_empty(w))}, None), "cabinets",
     "never provisioned into"),
    ("no-relay-running", lambda w, s: (dict(s, ARCADE_DB=copy_db(w)), {}, None), "dispatcher", "no process holds"),
    ("stripe-refuses-key", lambda w, s: (dict(s, STRIPE_API_KEY="sk_test_" + "w" * 24), {}, None), "Stripe API",
     "Stripe refused the API key"),
    ("no-endpoint", lambda w, s: (dict(s, ARCADE_PUBLIC_URL="https://elsewhere.example.com"), {}, None), "Stripe API",
     "no test-mode webhook endpoint for https://elsewhere.example.com/stripe/webhook"),
    ("endpoint-live", lambda w, s: (dict(s, ARCADE_PUBLIC_URL=endpoint(w, "live.example.com", events=EVENTS,
                                                                      livemode=True)), {}, None),
     "Stripe API", "is live mode, the API key test mode"),
    ("endpoint-disabled", lambda w, s: (dict(s, ARCADE_PUBLIC_URL=endpoint(w, "off.example.com", events=EVENTS,
                                                                          status="disabled")), {}, None),
     "Stripe API", "is disabled"),
    ("endpoint-events", lambda w, s: (dict(s, ARCADE_PUBLIC_URL=endpoint(w, "few.example.com",
                                                                        events=["checkout.session.completed"])), {}, None),
     "Stripe API", "does not send checkout.session.async_payment_succeeded"),
    ("clock-off", lambda w, s: (s, {}, _skew(w, 400)), "clock", "s behind Stripe's: webhook signatures"),
    ("disk-full", lambda w, s: (s, {"min_free_mb": 10 ** 9}, None), "disk space", "MB free on"),
]


def _extra_migration():
    ledger_mod.MIGRATIONS.append(("test_doctor_future", ["CREATE TABLE doctor_future (x INTEGER)"]))
    return ledger_mod.MIGRATIONS.pop


def _skew(w, seconds):
    w["fake"].clock_offset = seconds

    def undo():
        w["fake"].clock_offset = 0.0
    return undo


def _empty(w):
    path = w["tmp"] / ("empty-%d" % time.monotonic_ns())
    path.mkdir()
    return path


@pytest.mark.parametrize("case, change, check, message", BROKEN, ids=[b[0] for b in BROKEN])
def test_each_broken_check_says_what_and_how_to_fix(world, tmp_path, case, change, check, message):
    s = settings(world)
    kwargs, undo, anon = {}, None, None
    if case == "broker-anonymous":
        anon = Mosquitto(tmp_path / "anon").start()        # the lab broker: allow_anonymous true
        s = dict(s, MQTT_URL="mqtt://arcade.relay:x@127.0.0.1:%d" % anon.port)
    elif case == "provisioned-not-registered":
        prov = Path(provisioned_with(world, [("galaga-1", "galaga-1", CAB_PASSWORD)]))
        shutil.copytree(prov / "galaga-1", prov / "ghost-1")
        (prov / "ghost-1" / "config.json").write_text((prov / "ghost-1" / "config.json").read_text()
                                                      .replace('"galaga-1"', '"ghost-1"'))
        kwargs = {"provisioned": str(prov)}
    else:
        s, kwargs, undo = change(world, s)
    kwargs.setdefault("provisioned", world["prov"])
    try:
        checks = Doctor(s, env_path=world["env"], use_timedatectl=False, **kwargs).run()
    finally:
        if undo:
            undo()
        if anon:
            anon.stop()
    mine = [c for c in checks if c.name == check]
    assert mine and mine[0].status == "FAIL", checks
    assert message in mine[0].detail, mine[0]
    assert mine[0].fix
    lines, failures = report(checks)
    text = "\n".join(lines)
    assert failures >= 1 and "fix: " + mine[0].fix in text
    assert_no_secret(text, world)


def test_every_node_of_a_cluster_is_checked(world):
    # MQTT_URL lists a cluster's nodes: each must take the relay's login (here the same broker twice)
    s = settings(world)
    s = dict(s, MQTT_URL="%s,%s" % (s["MQTT_URL"], s["MQTT_URL"]))
    checks = {c.name: c for c in Doctor(s, env_path=world["env"], provisioned=world["prov"], offline=True,
                                        use_timedatectl=False).run()}
    assert checks["broker login"].status == "ok", checks["broker login"]
    assert "all 2 nodes of" in checks["broker login"].detail
    assert checks["cabinet isolation"].status == "ok", checks["cabinet isolation"]
    assert_no_secret(checks["broker login"].detail, world)


def test_a_database_this_user_cannot_write(world, monkeypatch):
    # root writes anything, so the permission is what os.access answers for a user who could not
    import tools.deploy.doctor as doctor_mod
    monkeypatch.setattr(doctor_mod.os, "access", lambda path, mode: not (mode & os.W_OK and path == world["db"]))
    checks = {c.name: c for c in Doctor(settings(world), env_path=world["env"], offline=True,
                                        use_timedatectl=False).run()}
    assert checks["database"].status == "FAIL" and "is not writable by" in checks["database"].detail
    assert checks["database"].fix.startswith("chown -R arcade: ")


def test_no_login_probe_where_the_user_name_is_the_client_id(world, tmp_path):
    # issue 9's broker configuration: a probe as the relay would take over the relay's own session
    conf = tmp_path / "mosquitto.conf"
    conf.write_text("listener 1883\nuse_username_as_clientid true\n")
    checks = {c.name: c for c in Doctor(settings(world), env_path=world["env"], provisioned=world["prov"], offline=True,
                                        use_timedatectl=False, broker_confs=[str(conf)]).run()}
    assert checks["broker login"].status == "skip" and "would take over" in checks["broker login"].detail
    assert checks["cabinet isolation"].status == "skip"


def test_a_postgresql_database_is_skipped_with_a_note_and_no_password(world):
    s = dict(settings(world), ARCADE_DB="postgresql://arcade:pg-s3cret@127.0.0.1:5432/arcade")
    checks = {c.name: c for c in Doctor(s, env_path=world["env"], offline=True, use_timedatectl=False).run()}
    assert checks["database"].status == "skip" and "PostgreSQL" in checks["database"].detail
    assert checks["dispatcher"].status == "skip" and "advisory lock" in checks["dispatcher"].detail
    assert "pg-s3cret" not in "\n".join(report(list(checks.values()))[0])


def test_stripe_unreachable_is_a_skip_with_a_note_not_a_failure(world):
    s = dict(settings(world), STRIPE_API_BASE="http://127.0.0.1:%d" % free_port())
    checks = {c.name: c for c in Doctor(s, env_path=world["env"], provisioned=world["prov"], use_timedatectl=False).run()}
    assert checks["Stripe API"].status == "skip" and "unreachable" in checks["Stripe API"].detail
    offline = {c.name: c for c in Doctor(s, env_path=world["env"], offline=True, use_timedatectl=False).run()}
    assert offline["Stripe API"] == ("Stripe API", "skip", "skipped (--offline)", "")


def test_a_broken_deployment_exits_non_zero_and_prints_each_fix(world, tmp_path):
    env = tmp_path / "broken.env"
    env.write_text(Path(world["env"]).read_text().replace(URL, "http://pay.example.com")
                   .replace("STRIPE_WEBHOOK_SECRET=" + WHSEC, "STRIPE_WEBHOOK_SECRET=" + API_KEY)
                   .replace(world["db"], str(tmp_path / "missing.db")))
    env.chmod(0o644)
    rc, out = run(doctor_cmd.main, ["--env", str(env), "--provisioned", world["prov"], "--no-timedatectl"])
    print(out)          # the closing note of issue 15 quotes it
    assert rc == 1
    for text in ("FAIL  settings file", "FAIL  webhook secret", "FAIL  public URL", "FAIL  database",
                 "FAIL  dispatcher", "problem(s) found"):
        assert text in out, out
    assert out.count("fix: ") == out.count("FAIL  ")
    assert_no_secret(out, world)
