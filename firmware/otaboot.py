# Which firmware boots: the boot-time half of over-the-air updates (ota.py stages, this selects).
# It stays at the root of the flash and is never replaced by an update, so it must stay small and
# right. slot.json names the slot directory whose modules come first on sys.path: "" is the root
# itself (a board flashed over USB), "s0" and "s1" are update slots. An installed update boots on
# probation: every boot counts a try before any app code runs; ota.confirm() (the new firmware
# reached the broker and answered a health probe) ends it. After _TRIES boots without that, the
# next boot goes back to the previous slot by itself and remembers the failed version. Every
# change to slot.json is write slot.tmp, then rename (atomic on littlefs): a power cut at any
# instant leaves the old file or the new one, each naming a complete slot.
import json
import os
import sys
from micropython import const

_TRIES = const(3)
SLOTS = ("s0", "s1")
rolled = False      # select() went back to the previous slot at this boot


def legacy():
    return {"v": 1, "cur": "", "ver": "", "prev": "", "prev_ver": "", "probe": 0, "failed": ""}


def _valid(s):
    if not isinstance(s, dict) or s.get("v") != 1:
        return False
    for k in ("cur", "prev"):
        if s.get(k) not in ("",) + SLOTS:
            return False
    for k in ("ver", "prev_ver", "failed"):
        if not isinstance(s.get(k), str):
            return False
    return isinstance(s.get("probe"), int) and not isinstance(s.get("probe"), bool)


def load(root=""):
    """slot.json, or the temp file a cut left between remove and rename, or the legacy layout."""
    for name in ("slot.json", "slot.tmp"):
        try:
            with open(root + name) as f:
                s = json.load(f)
        except (OSError, ValueError):
            continue
        if _valid(s):
            return s
    return legacy()


def save(s, root=""):
    with open(root + "slot.tmp", "w") as f:
        f.write(json.dumps(s))
    try:
        os.rename(root + "slot.tmp", root + "slot.json")
    except OSError:
        # a filesystem without atomic replace: remove, then rename (load() falls back to slot.tmp)
        os.remove(root + "slot.json")
        os.rename(root + "slot.tmp", root + "slot.json")


def select(root="", path=None):
    """boot.py, first thing: count a probation try or roll back, then put the slot first on the
    path. Returns slot.json's state as booted. Never raises: a board must always reach its app."""
    global rolled
    s = load(root)
    try:
        if s["probe"]:
            if s["probe"] > _TRIES and s["prev"] != s["cur"]:
                rolled = True
                s = {"v": 1, "cur": s["prev"], "ver": s["prev_ver"], "prev": "", "prev_ver": "", "probe": 0,
                     "failed": s["ver"]}
            else:
                s["probe"] += 1
            save(s, root)
    except OSError as e:     # flash full or failing: boot what slot.json names, count nothing
        print("otaboot:", e)
    p = sys.path if path is None else path
    d = (root + s["cur"]) if s["cur"] else (root or "")
    if s["cur"] and d not in p:
        p.insert(0, d)
    return s


def switch(root, slot, ver):
    """Boot `slot` (fully staged and verified) from the next boot on, on probation."""
    s = load(root)
    save({"v": 1, "cur": slot, "ver": ver, "prev": s["cur"], "prev_ver": s["ver"], "probe": 1, "failed": ""},
         root)


def confirm(root=""):
    """The running firmware is healthy: end probation (keeps the previous slot as a fallback until
    the next update overwrites it). Returns True when it was on probation."""
    s = load(root)
    if not s["probe"]:
        return False
    s["probe"] = 0
    save(s, root)
    return True
