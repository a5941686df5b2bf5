# The cabinet's state in flash, saved atomically: write state.tmp, then os.rename over
# state.json (atomic on littlefs). A corrupt file is kept as state.bad, never silently reused.
import json
import os

RECENT = 32


def fresh():
    # ledger/last: the stored ledger and its last applied seq; recent: the last RECENT applied
    # session ids; cur: the credit being pulsed (with pulses done) or None; total: pulses since
    # flash; ack: the last applied credit's ack, kept until the broker PUBACKs it, or None.
    return {"v": 1, "ledger": "", "last": 0, "recent": [], "cur": None, "total": 0, "ack": None}


def _exists(path):
    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _valid(s):
    if not isinstance(s, dict) or s.get("v") != 1:
        return False
    if not isinstance(s.get("ledger"), str) or not isinstance(s.get("recent"), list):
        return False
    if not isinstance(s.get("last"), int) or not isinstance(s.get("total"), int):
        return False
    cur = s.get("cur")
    if cur is not None:
        for k in ("ledger", "seq", "pulses", "done", "session"):
            if k not in cur:
                return False
    return True


class Journal:
    def __init__(self, root=""):
        self.root = root
        self.path = root + "state.json"
        self.tmp = root + "state.tmp"
        self.bad = root + "state.bad"
        self.note = ""   # what load() had to do, for the boot message
        self.saves = 0

    def _read(self, path):
        with open(path) as f:
            return json.load(f)

    def load(self):
        path = self.path
        if not _exists(path):
            # a cut between os.remove and os.rename (filesystems without atomic replace)
            if not _exists(self.tmp):
                self.note = "fresh"
                return fresh()
            path = self.tmp
        try:
            s = self._read(path)
        except (OSError, ValueError):
            s = None
        if not _valid(s):
            try:
                os.rename(path, self.bad)
            except OSError:
                pass
            self.note = "corrupt %s kept as %s; starting from empty state" % (path, self.bad)
            return fresh()
        self.note = "loaded"
        return s

    def save(self, state):
        _atomic(state, self.tmp, self.path)
        self.saves += 1

    def load_cfg(self):
        """cfg.json: the applied config override and the last test-pulse number (docs/protocol.md)."""
        c = None
        for path in (self.root + "cfg.json", self.root + "cfg.tmp"):
            try:
                c = self._read(path)
                break
            except (OSError, ValueError):
                pass
        d = {"ver": 0, "width_ms": 0, "gap_ms": 0, "cpc": 0, "test": 0}
        if isinstance(c, dict):
            for k in d:
                if isinstance(c.get(k), int):
                    d[k] = c[k]
        return d

    def save_cfg(self, cfg):
        _atomic(cfg, self.root + "cfg.tmp", self.root + "cfg.json")


def _atomic(obj, tmp, path):
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        if hasattr(os, "fsync"):
            os.fsync(f.fileno())
    try:
        os.rename(tmp, path)
    except OSError:
        # FAT cannot rename over an existing file; load() falls back to the .tmp
        os.remove(path)
        os.rename(tmp, path)
