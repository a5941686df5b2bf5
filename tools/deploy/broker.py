"""The broker part of the kit: mosquitto's conf.d file, its password file and its ACL, made from the
relay's ledger with issue 9's generator (relay/mosquitto.py): the relay's login and one per enabled
cabinet (`arcade provision` writes that cabinet's into its config.json), each cabinet limited to its
own topics. After adding, disabling or re-keying a cabinet, `arcade init --force` (same options)
rewrites them and `systemctl reload mosquitto` makes the broker re-read them.

use_username_as_clientid is set, as in issue 9's own configuration: without it a cabinet's login could
connect with another cabinet's (or the relay's) client id and knock it off the broker. On such a broker
`arcade doctor` does not log in as the relay or a cabinet (the probe would take over that client's
session) and says so; the login and isolation probes run against a broker without the option.
"""
import os
import shutil
import subprocess
import tempfile

from tools.deploy import File

CONF_NAME = "mosquitto.conf"
PASSWD_NAME = "mosquitto.passwd"
ACL_NAME = "mosquitto.acl"
RELAY_USER = "arcade-relay"


class BrokerKitError(Exception):
    pass


def mosquitto_passwd_path():
    found = shutil.which("mosquitto_passwd") or (
        "/usr/bin/mosquitto_passwd" if os.path.exists("/usr/bin/mosquitto_passwd") else None)
    if not found:
        raise BrokerKitError("mosquitto_passwd is not installed: apt-get install mosquitto (it hashes the broker "
                             "passwords; `make setup` installs it)")
    return found


def hash_passwords(users):
    """{user: password} -> mosquitto password-file text, hashed by mosquitto_passwd itself. The
    passwords go through a 0600 temp file (`mosquitto_passwd -U` hashes it in place), never argv."""
    with tempfile.TemporaryDirectory(prefix="arcade-passwd-") as tmp:
        path = os.path.join(tmp, "passwd")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            for user, password in sorted(users.items()):
                if ":" in user or "\n" in user or "\n" in password:
                    raise BrokerKitError("broker user %r: names may not contain ':' or newlines" % (user,))
                f.write("%s:%s\n" % (user, password))
        done = subprocess.run([mosquitto_passwd_path(), "-U", path], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise BrokerKitError("mosquitto_passwd -U failed: %s" % (done.stderr.strip() or done.returncode))
        with open(path) as f:
            return f.read()


def conf(s, passwd_path, acl_path=None):
    lines = [
        "# arcade-pay broker settings (written by `arcade init`; docs/deploy.md), for Debian's mosquitto:",
        "# ln -s %s /etc/mosquitto/conf.d/arcade.conf" % (s.dir / CONF_NAME),
        "# Debian's /etc/mosquitto/mosquitto.conf already keeps persistence on (the relay's session and queue).",
        "per_listener_settings false",
        "listener %d" % s.mqtt_port,
        "allow_anonymous false",
        "password_file %s" % passwd_path,
        "# a login's user name is its client id: nobody can take the relay's or another cabinet's connection",
        "use_username_as_clientid true",
    ]
    if acl_path:
        lines.append("acl_file %s" % acl_path)
    lines += [
        "# one MQTT message is at most this big (a cabinet holds 2 KB of one incoming message)",
        "max_packet_size 2048",
        "# credits are tiny: without this, Nagle's algorithm adds ~40 ms a hop",
        "set_tcp_nodelay true",
        "max_queued_messages 10000",
        "max_inflight_messages 20",
        "connection_messages true",
    ]
    return "\n".join(lines) + "\n"


def broker_files(s, sec):
    """The broker's configuration from the relay's ledger (issue 9's per-cabinet logins): the conf.d
    file, the password file (the relay's login and each enabled cabinet's, hashed by relay.mosquitto)
    and the ACL (each cabinet its own topics). Creates the ledger if it is not there yet. Returns
    ({name: File}, (relay user, relay password))."""
    from relay import mosquitto as broker_acl
    from relay.ledger import open_ledger
    old_umask = os.umask(0o077)          # a ledger created here is 0600 from its first byte
    try:
        with open_ledger(str(s.db_path)) as led:
            logins = led.broker_logins()
    finally:
        os.umask(old_umask)
    relay_user, relay_pw = logins["relay"]
    cabinets = [cab for cab, _ in logins["cabinets"]]
    passwd, acl = s.dir / PASSWD_NAME, s.dir / ACL_NAME
    return {
        CONF_NAME: File(conf(s, passwd, acl), 0o644, "root", False),
        PASSWD_NAME: File(broker_acl.password_file([(relay_user, relay_pw)] + list(logins["cabinets"])), 0o600,
                          "broker", True),
        ACL_NAME: File(broker_acl.acl_file(cabinets, "arcade", relay_user), 0o640, "broker", False),
    }, (relay_user, relay_pw)
