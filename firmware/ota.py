# Over-the-air updates, the staging half (otaboot.py selects the slot at boot). A release is a
# manifest (version, minimum MicroPython, chips, and per file its name, size and sha256) that the
# relay authenticates for this cabinet with HMAC-SHA256 under the cabinet's own secret, over
# b"ota\n" + the manifest's exact bytes (the prefix keeps it apart from every other signed kind).
# Its files arrive in chunks at explicit offsets, appended to <slot>/<name>.part, so a transfer
# resumes where flash says it stopped (after a reconnect or a reboot). A file whose last byte
# arrives is hashed from flash in small blocks and renamed into place, or deleted. install()
# re-hashes every file, then switches slot.json in one rename. Nothing here touches the running
# slot, the journal (state.json) or the config: credits survive an update and a rollback.
import hashlib
import json
import os
from micropython import const

import otaboot
from protocol import equal, sign

try:
    from binascii import hexlify
except ImportError:
    from ubinascii import hexlify

_MAX_MANIFEST = const(4096)
_MAX_FILES = const(40)
_MAX_FILE = const(262144)
_MARGIN = const(16384)          # flash left free after staging: journal saves must still fit
_BLOCK = const(512)
_NAME_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_."


class OtaError(Exception):
    pass


def _name_ok(n):
    if not isinstance(n, str) or not 1 <= len(n) <= 48 or n[0] == "." or ".." in n:
        return False
    parts = n.split("/")
    if len(parts) > 2:
        return False
    for p in parts:
        if not p:
            return False
        for c in p:
            if c not in _NAME_CHARS:
                return False
    return n not in ("boot.py", "main.py", "otaboot.py", "otaboot.mpy")


def _version(v):
    """'1.23.0' or [1, 23, 0] -> (1, 23, 0); None when malformed."""
    if isinstance(v, str):
        v = v.split(".")
    try:
        t = tuple(int(x) for x in v)
    except (TypeError, ValueError):
        return None
    return t if len(t) == 3 else None


def parse(raw, mac, key, chip, mpy):
    """Verify and check a manifest. raw: its bytes as received; mac: hex; key: the cabinet secret
    (bytes); chip: 'esp32', 'esp32c3', ...; mpy: this MicroPython's (major, minor, micro).
    Returns the manifest dict; raises OtaError saying why (nothing staged)."""
    if not isinstance(raw, (bytes, bytearray)) or len(raw) > _MAX_MANIFEST:
        raise OtaError("manifest too large")
    if not isinstance(mac, str) or not equal(sign(key, b"ota\n" + raw), mac):
        raise OtaError("bad signature")
    try:
        m = json.loads(raw)
    except ValueError:
        raise OtaError("manifest is not JSON")
    if not isinstance(m, dict) or m.get("v") != 1:
        raise OtaError("unknown manifest version")
    ver = m.get("version")
    if not isinstance(ver, str) or not 1 <= len(ver) <= 32:
        raise OtaError("bad version")
    need = _version(m.get("min_micropython"))
    if need is None:
        raise OtaError("bad min_micropython")
    if tuple(mpy) < need:
        raise OtaError("needs MicroPython %d.%d.%d" % need)
    chips = m.get("chips")
    if not isinstance(chips, list) or chip not in chips:
        raise OtaError("not built for %s" % chip)
    files = m.get("files")
    if not isinstance(files, list) or not 1 <= len(files) <= _MAX_FILES:
        raise OtaError("bad file list")
    seen = []
    for f in files:
        if not isinstance(f, dict) or not _name_ok(f.get("name")) or f["name"] in seen:
            raise OtaError("bad file name")
        size, digest = f.get("size"), f.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= _MAX_FILE:
            raise OtaError("bad size for %s" % f["name"])
        if not isinstance(digest, str) or len(digest) != 64:
            raise OtaError("bad sha256 for %s" % f["name"])
        seen.append(f["name"])
    return m


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        return -1


def _sha256(path):
    h = hashlib.sha256()
    buf = bytearray(_BLOCK)
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(buf if n == _BLOCK else buf[:n])
    return hexlify(h.digest()).decode()


def _rmtree(d):
    try:
        names = os.listdir(d)
    except OSError:
        return
    for n in names:
        p = d + "/" + n
        try:
            os.remove(p)
        except OSError:
            _rmtree(p)
    os.rmdir(d)


def free_bytes(root=""):
    st = os.statvfs(root or "/")
    return st[0] * st[4]


class Updater:
    """Stages one release at a time into the slot that is not running."""

    def __init__(self, root, key, chip, mpy, free=free_bytes):
        self.root = root
        self.key = key
        self.chip = chip
        self.mpy = mpy
        self.free = free
        self.m = None           # the manifest being staged
        self.slot = ""
        self.writes = 0         # flash writes (chunks appended), for the status and the bench
        self._resume()

    def _resume(self):
        """After a reboot: carry on with the release ota.json says is being staged."""
        try:
            with open(self.root + "ota.json") as f:
                s = json.load(f)
            m = parse(s["raw"].encode(), s["mac"], self.key, self.chip, self.mpy)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, OtaError):
            return
        if s.get("slot") in otaboot.SLOTS and s["slot"] != otaboot.load(self.root)["cur"]:
            self.m, self.slot = m, s["slot"]

    def begin(self, raw, mac):
        """A new release offered. Returns its version; the same release again resumes."""
        m = parse(raw, mac, self.key, self.chip, self.mpy)
        if self.m is not None and self.m["version"] == m["version"] and self.m["files"] == m["files"]:
            return m["version"]
        boot = otaboot.load(self.root)
        if boot["probe"]:
            raise OtaError("the running firmware is still on probation")
        if m["version"] == boot["ver"]:
            raise OtaError("already running %s" % m["version"])
        total = 0
        for f in m["files"]:
            total += f["size"]
        slot = otaboot.SLOTS[1] if boot["cur"] == otaboot.SLOTS[0] else otaboot.SLOTS[0]
        if boot["prev"] == slot:
            # the fallback is about to be overwritten: stop naming it before touching it
            boot["prev"], boot["prev_ver"] = "", ""
            otaboot.save(boot, self.root)
        d = self.root + slot
        _rmtree(d)
        if self.free(self.root) < total + _MARGIN:
            raise OtaError("not enough flash: %d bytes needed, %d free" % (total + _MARGIN, self.free(self.root)))
        os.mkdir(d)
        with open(self.root + "ota.tmp", "w") as f:
            f.write(json.dumps({"raw": bytes(raw).decode(), "mac": mac, "slot": slot}))
        os.rename(self.root + "ota.tmp", self.root + "ota.json")
        self.m, self.slot = m, slot
        return m["version"]

    def _file(self, name):
        for f in self.m["files"]:
            if f["name"] == name:
                return f
        raise OtaError("no file %s in release %s" % (name, self.m["version"]))

    def _path(self, name):
        return self.root + self.slot + "/" + name

    def offset(self, name):
        """Where the next chunk of `name` goes: bytes in flash so far (its size when complete)."""
        f = self._file(name)
        if _size(self._path(name)) >= 0:
            return f["size"]
        at = max(0, _size(self._path(name) + ".part"))
        if at >= f["size"] and _size(self._path(name) + ".part") >= 0:
            return self._finish(f)        # power was cut between the last chunk and its rename
        return at

    def _finish(self, f):
        """The whole file is in <name>.part: hash it from flash, then rename it into place or
        delete it. Returns the next offset (size, or 0 to start again)."""
        part = self._path(f["name"]) + ".part"
        if _size(part) != f["size"] or _sha256(part) != f["sha256"]:
            os.remove(part)
            raise OtaError("sha256 mismatch for %s" % f["name"])
        os.rename(part, self._path(f["name"]))
        return f["size"]

    def write(self, name, offset, data):
        """Append a chunk at `offset`. Returns the next offset wanted (a chunk at another offset
        is ignored and the answer says where to resume). Raises OtaError when the completed file's
        hash is wrong (the file is deleted: it is sent again from 0)."""
        if self.m is None:
            raise OtaError("no release being staged")
        f = self._file(name)
        at = self.offset(name)
        if offset != at or at >= f["size"] and f["size"]:
            return at
        if offset + len(data) > f["size"]:
            raise OtaError("chunk past the end of %s" % name)
        part = self._path(name) + ".part"
        if "/" in name:
            try:
                os.mkdir(self._path(name.split("/")[0]))
            except OSError:
                pass
        with open(part, "ab") as fh:
            fh.write(data)
        self.writes += 1
        at += len(data)
        if at == f["size"]:
            return self._finish(f)
        return at

    def missing(self):
        """Names not yet complete in flash."""
        if self.m is None:
            return []
        return [f["name"] for f in self.m["files"] if self.offset(f["name"]) < f["size"] or
                _size(self._path(f["name"])) < 0]

    def install(self):
        """Every file there with its hash: switch to the new slot from the next boot (on probation).
        Returns the version; the caller resets the board."""
        if self.m is None:
            raise OtaError("no release being staged")
        if self.missing():
            raise OtaError("incomplete: %s" % ", ".join(self.missing()))
        for f in self.m["files"]:
            if _sha256(self._path(f["name"])) != f["sha256"]:
                os.remove(self._path(f["name"]))
                raise OtaError("sha256 mismatch for %s in flash" % f["name"])
        otaboot.switch(self.root, self.slot, self.m["version"])
        try:
            os.remove(self.root + "ota.json")
        except OSError:
            pass
        ver, self.m = self.m["version"], None
        return ver
