# Over-the-air update, flash side: staging, hashes, signatures, resume, the switch, probation and
# rollback, and a power cut at every flash write of the whole update (MicroPython-compatible).
import hashlib
import json
import os

import ota
import otaboot
from fwutil import KEY, scratch

try:
    from binascii import hexlify
except ImportError:
    from ubinascii import hexlify

MPY = (1, 27, 0)
BIG = 1 << 30


def _hex(b):
    return hexlify(hashlib.sha256(b).digest()).decode()


def release(files, version="2.0.0", key=KEY, min_mpy="1.22.0", chips=("esp32", "esp32c3")):
    """(manifest bytes, mac, {name: bytes}) as `arcade ota build` + the relay would send them."""
    m = {"v": 1, "version": version, "min_micropython": min_mpy, "chips": list(chips),
         "files": [{"name": n, "size": len(files[n]), "sha256": _hex(files[n])} for n in sorted(files)]}
    raw = json.dumps(m).encode()
    return raw, ota.sign(key, b"ota\n" + raw), files


FILES = {"app.mpy": b"A" * 1500 + b"app", "protocol.mpy": bytes(range(256)) * 3, "umqtt/simple.mpy": b"U" * 700}


def chunks(data, n=512):
    return [(i, data[i:i + n]) for i in range(0, len(data), n)] or [(0, b"")]


def legacy_board(root):
    """A board flashed over USB: firmware at the root, a journal with a credit in it."""
    with open(root + "app.mpy", "wb") as f:
        f.write(b"old app")
    with open(root + "state.json", "w") as f:
        f.write('{"v": 1, "ledger": "ab", "last": 7, "recent": ["cs_7"], "cur": null, "total": 14, "ack": null}')


def read(path):
    with open(path, "rb") as f:
        return f.read()


def transfer(u, files):
    for name in sorted(files):
        for off, data in chunks(files[name]):
            u.write(name, off, data)


def slot_complete(root, slot, files):
    for name in files:
        try:
            if read(root + slot + "/" + name) != files[name]:
                return False
        except OSError:
            return False
    return True


def expect_error(fn, text):
    try:
        fn()
    except ota.OtaError as e:
        assert text in str(e), str(e)
        return
    raise AssertionError("no OtaError(%r)" % text)


def test_clean_update_switches_on_next_boot_and_keeps_the_journal():
    root = scratch()
    legacy_board(root)
    journal = read(root + "state.json")
    raw, mac, files = release(FILES)
    u = ota.Updater(root, KEY, "esp32", MPY, free=lambda r: BIG)
    assert u.begin(raw, mac) == "2.0.0"
    transfer(u, files)
    assert u.missing() == []
    assert u.install() == "2.0.0"
    path = []
    s = otaboot.select(root, path)
    assert s["cur"] == "s0" and s["ver"] == "2.0.0" and s["probe"] == 2 and path == [root + "s0"]
    assert slot_complete(root, "s0", files)
    assert read(root + "state.json") == journal, "credits in the journal survive the update"
    assert read(root + "app.mpy") == b"old app", "the previous firmware is left in place"
    assert otaboot.confirm(root) and otaboot.select(root, [])["probe"] == 0


def test_wrong_signature_stages_nothing():
    root = scratch()
    raw, mac, files = release(FILES)
    u = ota.Updater(root, KEY, "esp32", MPY, free=lambda r: BIG)
    other = release(FILES, key=b"another cabinet's secret")[1]
    unprefixed = ota.sign(KEY, raw)
    for bad_raw, bad_mac in ((raw, other), (raw + b" ", mac), (raw, mac[:-1] + ("1" if mac[-1] == "0" else "0")),
                             (raw, None), (raw, unprefixed)):
        expect_error(lambda: u.begin(bad_raw, bad_mac), "bad signature")
    assert "ota.json" not in os.listdir(root[:-1]) and "s0" not in os.listdir(root[:-1])
    expect_error(lambda: u.write("app.mpy", 0, b"x"), "no release")


def test_refusals_before_the_first_byte():
    root = scratch()
    rows = [
        (release(FILES, min_mpy="1.28.0"), "needs MicroPython 1.28.0"),
        (release(FILES, chips=("esp32s3",)), "not built for esp32"),
        (release({"../boot.py": b"x"}), "bad file name"),
        (release({"otaboot.mpy": b"x"}), "bad file name"),
        (release({"a/b/c.mpy": b"x"}), "bad file name"),
    ]
    u = ota.Updater(root, KEY, "esp32", MPY, free=lambda r: BIG)
    for (raw, mac, _), text in rows:
        expect_error(lambda: u.begin(raw, mac), text)
    big = b"{" + b" " * 5000 + b"}"
    expect_error(lambda: u.begin(big, ota.sign(KEY, b"ota\n" + big)), "too large")
    raw, mac, _ = release(FILES)
    small = ota.Updater(root, KEY, "esp32", MPY, free=lambda r: 4000)
    expect_error(lambda: small.begin(raw, mac), "not enough flash")
    assert "ota.json" not in os.listdir(root[:-1])


def test_corrupted_chunk_is_caught_and_the_file_sent_again():
    root = scratch()
    raw, mac, files = release(FILES)
    u = ota.Updater(root, KEY, "esp32", MPY, free=lambda r: BIG)
    u.begin(raw, mac)
    data = files["protocol.mpy"]
    assert u.write("protocol.mpy", 0, data[:512]) == 512
    assert u.write("protocol.mpy", 0, data[:512]) == 512, "a repeated chunk is ignored"
    assert u.write("protocol.mpy", 700, b"z") == 512, "a gap says where to resume"
    flipped = bytearray(data[512:])
    flipped[3] ^= 1
    expect_error(lambda: u.write("protocol.mpy", 512, bytes(flipped)), "sha256 mismatch")
    assert u.offset("protocol.mpy") == 0
    expect_error(u.install, "incomplete")
    transfer(u, files)
    assert u.install() == "2.0.0"


def test_transfer_resumes_after_a_reboot():
    root = scratch()
    raw, mac, files = release(FILES)
    u = ota.Updater(root, KEY, "esp32", MPY, free=lambda r: BIG)
    u.begin(raw, mac)
    u.write("app.mpy", 0, files["app.mpy"][:512])
    u2 = ota.Updater(root, KEY, "esp32", MPY, free=lambda r: BIG)     # reboot
    assert u2.offset("app.mpy") == 512
    assert u2.begin(raw, mac) == "2.0.0" and u2.offset("app.mpy") == 512, "the same release resumes"
    transfer(u2, files)
    assert u2.install() == "2.0.0"


def test_a_release_that_never_confirms_rolls_back_by_itself():
    root = scratch()
    legacy_board(root)
    raw, mac, files = release(FILES)
    u = ota.Updater(root, KEY, "esp32", MPY, free=lambda r: BIG)
    u.begin(raw, mac)
    transfer(u, files)
    u.install()
    booted = [otaboot.select(root, [])["cur"] for _ in range(4)]
    assert booted == ["s0", "s0", "s0", ""], booted
    s = otaboot.load(root)
    assert s["failed"] == "2.0.0" and s["probe"] == 0 and s["ver"] == ""
    # the next release goes to the free slot again and can be confirmed
    raw, mac, files = release(FILES, version="2.0.1")
    u = ota.Updater(root, KEY, "esp32", MPY, free=lambda r: BIG)
    u.begin(raw, mac)
    transfer(u, files)
    u.install()
    assert otaboot.select(root, [])["cur"] == "s0" and otaboot.confirm(root)
    # a second update goes to s1, and a failed one comes back to s0
    raw, mac, files = release(FILES, version="2.0.2")
    u = ota.Updater(root, KEY, "esp32", MPY, free=lambda r: BIG)
    expect_error(lambda: u.begin(*release(FILES, version="2.0.1")[:2]), "already running")
    u.begin(raw, mac)
    transfer(u, files)
    u.install()
    assert [otaboot.select(root, [])["cur"] for _ in range(4)] == ["s1", "s1", "s1", "s0"]


def test_no_update_while_on_probation():
    root = scratch()
    raw, mac, files = release(FILES)
    u = ota.Updater(root, KEY, "esp32", MPY, free=lambda r: BIG)
    u.begin(raw, mac)
    transfer(u, files)
    u.install()
    otaboot.select(root, [])
    expect_error(lambda: u.begin(*release(FILES, version="3.0.0")[:2]), "probation")


class PowerCut(Exception):
    pass


class Cutter:
    """Counts every flash mutation (open for writing, write, rename, remove, mkdir, rmdir) and
    raises PowerCut at the k-th: the board loses power there."""

    def __init__(self, k, torn=False):
        self.k, self.n = k, 0
        self.torn = torn
        self.cut = False

    def tick(self):
        self.n += 1
        if self.n == self.k:
            self.cut = True
            raise PowerCut()

    def install(self, modules):
        cutter = self

        class OS:
            def __getattr__(self, name):
                return getattr(os, name)

            def rename(self, a, b):
                cutter.tick()
                os.rename(a, b)

            def remove(self, p):
                cutter.tick()
                os.remove(p)

            def mkdir(self, p):
                cutter.tick()
                os.mkdir(p)

            def rmdir(self, p):
                cutter.tick()
                os.rmdir(p)

        class File:
            def __init__(self, f):
                self.f = f

            def write(self, b):
                if cutter.n + 1 == cutter.k and cutter.torn and len(b) > 1:
                    self.f.write(b[:len(b) // 2])      # a torn write: half the chunk reached flash
                cutter.tick()
                return self.f.write(b)

            def __enter__(self):
                return self

            def __exit__(self, *a):
                self.f.close()

        def opener(path, mode="r"):
            if "w" in mode or "a" in mode:
                cutter.tick()
                return File(open(path, mode))
            return open(path, mode)

        for m in modules:
            m.os = OS()
            m.open = opener

    @staticmethod
    def remove(modules):
        for m in modules:
            m.os = os
            try:
                del m.open
            except (AttributeError, KeyError):
                m.open = open


def full_update(root, files, raw, mac):
    u = ota.Updater(root, KEY, "esp32", MPY, free=lambda r: BIG)
    u.begin(raw, mac)
    for name in sorted(files):
        for off, data in chunks(files[name]):
            at = u.offset(name)
            if off + len(data) <= at:
                continue
            u.write(name, at, data[at - off:])
    return u.install()


def test_power_cut_at_every_flash_write_leaves_a_bootable_board_that_finishes_the_update():
    power_cuts(torn=False)


def test_torn_write_at_every_flash_write_is_resumed_from_what_reached_flash():
    power_cuts(torn=True)


def power_cuts(torn):
    raw, mac, files = release(FILES)
    modules = (ota, otaboot)
    k = 0
    while True:
        k += 1
        root = scratch()
        legacy_board(root)
        journal = read(root + "state.json")
        cutter = Cutter(k, torn)
        cutter.install(modules)
        try:
            full_update(root, files, raw, mac)
        except PowerCut:
            pass
        finally:
            Cutter.remove(modules)
        # power back: the board boots a complete firmware, whichever it is
        s = otaboot.select(root, [])
        assert s["cur"] == "" or slot_complete(root, s["cur"], files), (k, s)
        assert read(root + "state.json") == journal, k
        if not cutter.cut:
            break                    # the whole update ran without reaching the k-th write
        if s["cur"] == "":
            # the relay offers the release again: it finishes and boots on probation
            assert full_update(root, files, raw, mac) == "2.0.0", k
            s = otaboot.select(root, [])
        assert s["cur"] == "s0" and slot_complete(root, "s0", files), (k, s)
    assert k > 10, "the update makes more than ten flash writes: %d" % k
