"""The broker part of the kit: mosquitto's conf.d file and its password file.

PLACEHOLDER until issue 9 lands (per-cabinet broker users and ACLs, `arcade broker config`): this
writes today's single-user configuration — one login, `arcade-relay`, for the relay (cabinets are
provisioned with the same broker URL), no acl_file. When issue 9's generator is on main, `broker_files`
calls it instead and the kit gains its acl_file; nothing else in `arcade init` changes.
"""
import os
import shutil
import subprocess
import tempfile

from tools.deploy import File

CONF_NAME = "mosquitto.conf"
PASSWD_NAME = "mosquitto.passwd"
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
    ]
    if acl_path:
        lines.append("acl_file %s" % acl_path)
    lines += [
        "# credits are tiny: without this, Nagle's algorithm adds ~40 ms a hop",
        "set_tcp_nodelay true",
        "max_queued_messages 10000",
        "max_inflight_messages 20",
        "connection_messages true",
    ]
    return "\n".join(lines) + "\n"


def broker_files(s, sec):
    """PLACEHOLDER (issue 9): today's single-user broker configuration, {name: File}."""
    passwd = s.dir / PASSWD_NAME
    return {
        CONF_NAME: File(conf(s, passwd), 0o644, "root", False),
        PASSWD_NAME: File(hash_passwords({RELAY_USER: sec.mqtt_password}), 0o600, "broker", True),
    }
