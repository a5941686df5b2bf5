"""Over-the-air releases on the relay's side: load one that `arcade ota build` made and authenticate
its manifest for one cabinet (docs/protocol.md, Over-the-air updates). Not imported by the webhook,
ledger or dispatcher path."""
import hashlib
import hmac
import json
import time
from pathlib import Path

MAX_MANIFEST = 4096


class ReleaseError(Exception):
    pass


def manifest_mac(secret, raw):
    """HMAC-SHA256 under the cabinet's secret over b"ota\\n" + the manifest's exact bytes (hex)."""
    return hmac.new(secret.encode("ascii"), b"ota\n" + raw, hashlib.sha256).hexdigest()


def load(release_dir):
    """(manifest bytes, manifest dict, {name: bytes}) of a built release, every file checked
    against the manifest. Raises ReleaseError saying what is wrong."""
    d = Path(release_dir)
    try:
        raw = (d / "manifest.json").read_bytes()
    except OSError as e:
        raise ReleaseError("%s: no manifest.json (%s): build one with `arcade ota build`" % (d, e.strerror or e))
    if len(raw) > MAX_MANIFEST:
        raise ReleaseError("%s: manifest.json is %d bytes, more than the firmware takes (%d)"
                           % (d, len(raw), MAX_MANIFEST))
    try:
        m = json.loads(raw)
        entries = [(f["name"], f["size"], f["sha256"]) for f in m["files"]]
    except (ValueError, KeyError, TypeError) as e:
        raise ReleaseError("%s: manifest.json is malformed (%s)" % (d, e))
    files = {}
    for name, size, digest in entries:
        path = (d / "files" / name).resolve()
        if (d / "files").resolve() not in path.parents:
            raise ReleaseError("%s: file name %r leaves the release" % (d, name))
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ReleaseError("%s: %s is missing (%s)" % (d, name, e.strerror or e))
        if len(data) != size or not hmac.compare_digest(hashlib.sha256(data).hexdigest(), digest):
            raise ReleaseError("%s: %s does not match the manifest (size or sha256): rebuild the release"
                               % (d, name))
        files[name] = data
    return raw, m, files


# -- delivery over MQTT (docs/protocol.md, Over-the-air updates) -------------------------------------
# Its own paho client (the dispatcher never sees OTA traffic): publishes on <prefix>/<cab>/ota, reads
# the cabinet's signed status, whose `ota` field answers each message. Stop and wait: one message,
# then the next status says what the cabinet wants next (so a reconnect or a reboot resumes at the
# offset its flash holds).

CHUNK = 1024                # bytes of a file per message: with its header, well below the firmware's 2048
PROBATION_S = 120


class PushError(Exception):
    pass


def version_tuple(v):
    try:
        t = tuple(int(x) for x in str(v).split("."))
    except ValueError:
        return None
    return t if len(t) == 3 else None


def compatible(m, ota_field):
    """None when the release fits what the cabinet reported ("<chip> <mpy> ..."), else why not."""
    parts = (ota_field or "").split(" ")
    if len(parts) < 2:
        return "the cabinet reported no chip and MicroPython version"
    chip, mpy = parts[0], version_tuple(parts[1])
    if chip not in m["chips"]:
        return "release %s is built for %s, the cabinet is an %s" % (m["version"], ", ".join(m["chips"]), chip)
    need = version_tuple(m["min_micropython"])
    if mpy is None or need is None or mpy < need:
        return "release %s needs MicroPython >= %s, the cabinet runs %s" % (m["version"], m["min_micropython"],
                                                                             parts[1])
    return None


class Pusher:
    """Push one release to one cabinet. `timeout`: seconds without an answer before asking again."""

    def __init__(self, mqtt_url, prefix, cab, secret, timeout=20.0, log=print):
        import threading

        import paho.mqtt.client as mqtt

        from relay import protocol
        from relay.config import mask_url, parse_mqtt_url
        from relay.testpulse import connect_any
        self.protocol = protocol
        self.cab, self.secret, self.timeout, self.log = cab, secret, timeout, log
        self.topic = "%s/%s/ota" % (prefix, cab)
        self.cond = threading.Condition()
        self.statuses = []          # the `ota` field of every verified online status, in arrival order
        self.writes = 0
        target = parse_mqtt_url(mqtt_url)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="arcade-ota-%s-%s" % (cab, secrets_hex()),
                        clean_session=True, protocol=mqtt.MQTTv311)
        if target["username"] is not None:
            c.username_pw_set(target["username"], target["password"])
        if target["tls"]:
            c.tls_set()
        subscribed = threading.Event()
        c.on_message = self._on_message
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("%s/%s/status" % (prefix, cab), 1)
        c.on_subscribe = lambda *a: subscribed.set()
        try:
            connect_any(c, mqtt_url)        # each broker of the list in turn
        except OSError as e:
            raise PushError("cannot reach the broker at %s: %s" % (mask_url(mqtt_url), e))
        c.loop_start()
        self.client = c
        if not subscribed.wait(timeout):
            self.close()
            raise PushError("the broker at %s did not take the subscription within %d s (login or ACL?)"
                            % (mask_url(mqtt_url), timeout))

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()

    def _on_message(self, client, userdata, msg):
        try:
            m = json.loads(msg.payload)
            ok = m.get("cab") == self.cab and self.protocol.verify_status(m, self.secret)
        except (ValueError, KeyError, TypeError, AttributeError):
            ok = False
        if not ok or not m.get("online"):
            return
        with self.cond:
            self.statuses.append(m.get("ota") or "")
            self.cond.notify_all()

    def send(self, head, data=b""):
        info = self.client.publish(self.topic, head.encode() + b"\n" + data, qos=1)
        info.wait_for_publish(self.timeout)

    def ask(self, head, data=b"", want=None, timeout=None):
        """Send a message; returns the `ota` field of the first status after it (matching `want`,
        a predicate, when given). Asks again ("q") when the cabinet says nothing for a while."""
        with self.cond:
            seen = len(self.statuses)
        self.send(head, data)
        deadline = time.monotonic() + (timeout or self.timeout * 3)
        asked = time.monotonic()
        while True:
            with self.cond:
                while len(self.statuses) > seen:
                    st = self.statuses[seen]
                    seen += 1
                    if st and (want is None or want(st)):
                        return st
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PushError("%s did not answer within %d s (offline?)" % (self.cab, timeout or self.timeout * 3))
                self.cond.wait(min(left, 1.0))
            if time.monotonic() - asked > self.timeout:
                asked = time.monotonic()
                if want is None:
                    self.send("q")          # where are we? (the answer drives the next step)
                else:
                    self.send(head, data)   # every message is idempotent: the same again

    def push(self, release_dir, idle=None, probation_s=PROBATION_S, progress=None):
        """Stage, install (when `idle()` says no credit is in flight), probe. Returns
        {"result": "ok"|"rolled back"|"refused"|..., ...}; raises PushError on a lost cabinet."""
        raw, m, files = load(release_dir)
        ver = m["version"]
        st = self.ask("q")
        why = compatible(m, st)
        if why:
            return {"result": "refused", "reason": why}
        state = st.split(" ")[2:]
        if state[:2] == ["idle", ver] or state[:2] == ["ok", ver]:
            return {"result": "already", "version": ver}
        mac = manifest_mac(self.secret, raw)
        t0, total, sent, errors = time.monotonic(), sum(map(len, files.values())), 0, 0
        for off in range(0, len(raw), CHUNK):
            st = self.ask("m %d %d %s" % (len(raw), off, mac), raw[off:off + CHUNK])
        while True:
            s = st.split(" ")[2:]
            if s[0] == "staged" and s[1:2] == [ver]:
                break
            if s[0] == "want" and s[1] == ver:
                name, off = s[2], int(s[3])
                if name not in files:
                    return {"result": "failed", "reason": "the cabinet wants %s, not in the release" % name}
                data = files[name][off:off + CHUNK]
                sent += len(data)
                self.writes += 1
                if progress:
                    progress(name, off, len(files[name]))
                st = self.ask("c %d %s" % (off, name), data)
            elif s[0] == "err":
                errors += 1
                if errors > 8 or "signature" in st or "needs" in st or "not built" in st:
                    return {"result": "failed", "reason": " ".join(s[1:])}
                st = self.ask("q")
            elif s[0] == "man":
                off = int(s[1])
                st = self.ask("m %d %d %s" % (len(raw), off, mac), raw[off:off + CHUNK])
            else:
                st = self.ask("q")
        staged_s = time.monotonic() - t0
        while idle is not None and not idle():
            time.sleep(1.0)
        # install: the cabinet refuses while a credit is being pulsed, held or unacked ("err busy")
        for _ in range(60):
            st = self.ask("i", want=lambda x: x.split(" ")[2] in ("probe", "err", "failed"),
                          timeout=probation_s * 4 + self.timeout * 3)
            if " err busy" not in st:
                break
            time.sleep(1.0)
        s = st.split(" ")[2:]
        if s[0] == "failed":
            return {"result": "rolled back", "version": ver, "reason": "the new firmware never reached the broker"}
        if s[0] != "probe":
            return {"result": "failed", "reason": " ".join(s)}
        nonce = secrets_hex()
        try:
            st = self.ask("p %s" % nonce, want=lambda x: x.split(" ")[2] in ("ok", "failed"),
                          timeout=probation_s * 4 + self.timeout * 3)
        except PushError:
            return {"result": "lost", "reason": "no answer to the health probe"}
        s = st.split(" ")[2:]
        res = {"version": ver, "bytes": total, "sent": sent, "chunks": self.writes,
               "staged_s": round(staged_s, 2), "total_s": round(time.monotonic() - t0, 2)}
        if s[0] == "ok" and s[1] == ver:
            res["result"] = "ok"
        else:
            res["result"] = "rolled back"
            res["reason"] = " ".join(s)
        return res


def secrets_hex():
    import secrets
    return secrets.token_hex(4)
