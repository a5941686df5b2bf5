"""Over-the-air update end to end: `arcade simulate` (the real firmware on CPython) on a real mosquitto,
updated by relay/ota.py's Pusher with a source release built by `arcade ota build --source`: a clean
update while credits are queued (each paid pulse counted once on the simulated pin), a wrong
signature, a release that crashes at boot and one that can't reach the broker (both roll back)."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

from relay import ota as relay_ota
from test_simulate import SECRET, Observer, Sim, credit, epoch_of

ROOT = Path(__file__).resolve().parents[1]


def build(tmp_path, version, patch=None, probation_s=120):
    """A source release of firmware/ (optionally with one file patched) -> its directory."""
    src = tmp_path / ("src-" + version)
    shutil.copytree(ROOT / "firmware", src)
    if patch:
        name, fn = patch
        (src / name).write_text(fn((src / name).read_text()))
    out = tmp_path / "ota"
    r = subprocess.run([sys.executable, "-m", "tools.cli", "ota", "build", "--source", "--out", str(out),
                        "--src", str(src), "--version", version, "--probation-s", str(probation_s)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out / version


def paid_pulses(sim):
    """After sim.stop(): every pulse line the simulator wrote (the reader thread has finished)."""
    while not sim.lines.empty():
        item = sim.lines.get()
        if item is not None:
            sim.seen.append(item)
    return [ln for ln in sim.seen if ln["event"] == "pulse" and not ln.get("test")]


def test_clean_update_while_credits_are_queued(broker, tmp_path):
    rel = build(tmp_path, "0.9.0")
    state = tmp_path / "flash"
    obs = Observer(broker.port)
    sim = Sim(tmp_path, broker.url, state)
    try:
        sim.next("connected")
        ep = epoch_of(state)
        for seq in (1, 2, 3):
            obs.publish(credit(seq, 2, "cs_ota_%d" % seq, epoch=ep))
        p = relay_ota.Pusher(broker.url, "arcade", "cab1", SECRET, timeout=5)
        try:
            res = p.push(rel, probation_s=60)
        finally:
            p.close()
        assert res["result"] == "ok", res
        for seq in (4, 5):
            obs.publish(credit(seq, 2, "cs_ota_%d" % seq, epoch=ep))
        obs.next("arcade/cab1/ack", lambda m: m["seq"] == 5 and m["result"] == "applied", timeout=30)
        st = obs.next("arcade/cab1/status", lambda m: m.get("online") and m.get("last") == 5, timeout=30)
        assert st["last"] == 5
        slot = json.loads((state / "slot.json").read_text())
        assert (slot["ver"], slot["probe"], slot["failed"]) == ("0.9.0", 0, "")
        assert (state / slot["cur"] / "app.py").read_bytes() == (rel / "files" / "app.py").read_bytes()
    finally:
        sim.stop()
        obs.close()
    # every paid credit pulsed exactly its 2 pulses, counted on the simulated pin across the switch
    by_seq = {}
    for ln in paid_pulses(sim):
        by_seq.setdefault(ln["seq"], []).append(ln["n"])
    assert by_seq == {s: [1, 2] for s in (1, 2, 3, 4, 5)}, by_seq
    print("OTA clean update:", json.dumps(res))


def test_wrong_signature_is_refused_and_nothing_staged(broker, tmp_path):
    rel = build(tmp_path, "0.9.1")
    state = tmp_path / "flash"
    sim = Sim(tmp_path, broker.url, state)
    try:
        sim.next("connected")
        p = relay_ota.Pusher(broker.url, "arcade", "cab1", SECRET, timeout=5)
        try:
            raw, m, files = relay_ota.load(rel)
            # the manifest authenticated with another cabinet's secret (or altered after signing)
            st = p.ask("m %d 0 %s" % (len(raw), relay_ota.manifest_mac("f" * 64, raw)), raw,
                       want=lambda x: " err " in x or " want " in x)
            assert st.endswith("err bad signature"), st
            bad = raw.replace(b'"min_micropython":"1.22.0"', b'"min_micropython":"1.20.0"')
            st = p.ask("m %d 0 %s" % (len(bad), relay_ota.manifest_mac(SECRET, raw)), bad,
                       want=lambda x: " err " in x or " want " in x)
            assert st.endswith("err bad signature"), st
        finally:
            p.close()
        assert not (state / "s0").exists() and not (state / "s1").exists() and not (state / "slot.json").exists()
    finally:
        sim.stop()


def test_corrupted_chunk_is_sent_again_then_the_update_completes(broker, tmp_path):
    rel = build(tmp_path, "0.9.4")
    state = tmp_path / "flash"
    sim = Sim(tmp_path, broker.url, state)
    try:
        sim.next("connected")
        p = relay_ota.Pusher(broker.url, "arcade", "cab1", SECRET, timeout=5)
        try:
            raw, m, files = relay_ota.load(rel)
            mac = relay_ota.manifest_mac(SECRET, raw)
            st = ""
            for off in range(0, len(raw), relay_ota.CHUNK):
                st = p.ask("m %d %d %s" % (len(raw), off, mac), raw[off:off + relay_ota.CHUNK])
            _, _, want, ver, name, off = st.split(" ")
            assert (want, ver, off) == ("want", "0.9.4", "0"), st
            data = bytearray(files[name])
            data[len(data) // 2] ^= 0x55          # one bit pattern flipped in transit
            for o in range(0, len(data), relay_ota.CHUNK):
                st = p.ask("c %d %s" % (o, name), bytes(data[o:o + relay_ota.CHUNK]))
            assert st.endswith("err sha256 mismatch for " + name), st
            st = p.ask("q")
            assert st.endswith("want 0.9.4 %s 0" % name), st     # that file starts again from 0
            res = p.push(rel, probation_s=60)
        finally:
            p.close()
        assert res["result"] == "ok", res
        assert json.loads((state / "slot.json").read_text())["ver"] == "0.9.4"
    finally:
        sim.stop()


def _rollback(broker, tmp_path, version, patch, probation_s):
    rel = build(tmp_path, version, patch, probation_s=probation_s)
    state = tmp_path / "flash"
    obs = Observer(broker.port)
    sim = Sim(tmp_path, broker.url, state)
    try:
        sim.next("connected")
        p = relay_ota.Pusher(broker.url, "arcade", "cab1", SECRET, timeout=5)
        try:
            res = p.push(rel, probation_s=probation_s)
        finally:
            p.close()
        assert res["result"] == "rolled back", res
        slot = json.loads((state / "slot.json").read_text())
        assert (slot["cur"], slot["failed"], slot["probe"]) == ("", version, 0)
        st = obs.next("arcade/cab1/status", lambda m: m.get("online") and "failed" in (m.get("ota") or ""),
                      timeout=30)
        assert st["fw"] != version and st["ota"].endswith("failed " + version)
        # the old firmware still takes credits
        obs.publish(credit(1, 1, "cs_after_rollback", epoch=epoch_of(state)))
        obs.next("arcade/cab1/ack", lambda m: m["seq"] == 1 and m["result"] == "applied", timeout=30)
    finally:
        sim.stop()
        obs.close()


def test_release_that_crashes_at_boot_rolls_back(broker, tmp_path):
    _rollback(broker, tmp_path, "0.9.2", ("app.py", lambda s: s + "\nraise RuntimeError('bad release')\n"), 5)


def test_release_that_cannot_reach_the_broker_rolls_back(broker, tmp_path):
    # the new firmware connects to a port where no broker listens: the probation timer resets it
    _rollback(broker, tmp_path, "0.9.3", ("app.py", lambda s: s.replace(
        'self.client = MQTTClient(cab.encode(), m["host"], m["port"]', 'self.client = MQTTClient(cab.encode(), m["host"], 9')), 5)
