"""Over-the-air update end to end: `arcade simulate` (the real firmware on CPython) on a real mosquitto,
updated by relay/ota.py's Pusher with a source release built by `arcade ota build --source`: a clean
update while credits are queued (each paid pulse counted once on the simulated pin), a wrong
signature, a release that crashes at boot and one that can't reach the broker (both roll back)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from relay import ota as relay_ota
from tools.mpy import release
from test_simulate import SECRET, Observer, Sim, credit, epoch_of

ROOT = Path(__file__).resolve().parents[1]


def build(tmp_path, version, patch=None, probation_s=120, cli=False):
    """A source release of firmware/ (optionally with one file patched) -> its directory; with cli,
    built by `arcade ota build --source` in a subprocess, else by the same code in this process."""
    src = tmp_path / ("src-" + version)
    shutil.copytree(ROOT / "firmware", src)
    if patch:
        name, fn = patch
        (src / name).write_text(fn((src / name).read_text()))
    out = tmp_path / "ota"
    if not cli:
        return release.build(out, src=src, source=True, version=version, probation_s=probation_s,
                             log=lambda line: None)
    r = subprocess.run([sys.executable, "-m", "tools.cli", "ota", "build", "--source", "--out", str(out),
                        "--src", str(src), "--version", version, "--probation-s", str(probation_s)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out / version


def send_manifest(p, raw, mac):
    """The manifest in message-sized pieces (it is larger than one message); the last answer."""
    st = ""
    for off in range(0, len(raw), relay_ota.CHUNK):
        st = p.ask("m %d %d %s" % (len(raw), off, mac), raw[off:off + relay_ota.CHUNK],
                   want=lambda x, end=off + relay_ota.CHUNK >= len(raw): end or " man " in x)
    return st


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
            st = send_manifest(p, raw, relay_ota.manifest_mac("f" * 64, raw))
            assert st.endswith("err bad signature"), st
            bad = raw.replace(b'"min_micropython":"1.22.0"', b'"min_micropython":"1.20.0"')
            assert bad != raw
            st = send_manifest(p, bad, relay_ota.manifest_mac(SECRET, raw))
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
            st = send_manifest(p, raw, mac)
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


def test_canary_that_crashes_at_boot_rolls_back_and_stops_the_rollout(broker, tmp_path):
    """`arcade ota push --all --canary 1`: the canary (cab1) gets a release that crashes at boot; it
    rolls back by itself, and cab2 is never offered the release."""
    from relay.ledger import open_ledger
    version = "0.9.2"
    build(tmp_path, version, ("app.py", lambda s: s + "\nraise RuntimeError('bad release')\n"), probation_s=5, cli=True)
    db = tmp_path / "arcade.db"
    with open_ledger(str(db)) as ledger:
        secrets = {c: ledger.add_cabinet(c) for c in ("cab1", "cab2")}
    sims = {c: Sim(tmp_path, broker.url, tmp_path / ("flash-" + c), cab=c, secret=secrets[c]) for c in secrets}
    obs = Observer(broker.port)
    try:
        for sim in sims.values():
            sim.next("connected")
        env = dict(os.environ, ARCADE_DB=str(db), MQTT_URL=broker.url, ARCADE_TOPIC_PREFIX="arcade")
        r = subprocess.run([sys.executable, "-m", "tools.cli", "ota", "push", version, "--all", "--canary", "1",
                            "--releases", str(tmp_path / "ota"), "--timeout", "5"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
        assert r.returncode == 1, r.stdout + r.stderr
        results = [json.loads(ln) for ln in r.stdout.splitlines() if ln.startswith("{")]
        assert [(x["cabinet"], x["result"]) for x in results] == [("cab1", "rolled back")], r.stdout
        assert "the rollout stops here; 1 cabinet(s) not updated" in r.stderr
        flash1, flash2 = tmp_path / "flash-cab1", tmp_path / "flash-cab2"
        slot = json.loads((flash1 / "slot.json").read_text())
        assert (slot["cur"], slot["failed"], slot["probe"]) == ("", version, 0)
        assert not (flash2 / "slot.json").exists() and not (flash2 / "ota.json").exists()
        # the canary runs its old firmware again and still takes credits; `ota status` shows the failure
        ep = json.loads((flash1 / "state.json").read_text())["epoch"]
        obs.publish(credit(1, 1, "cs_after_rollback", secret=secrets["cab1"], epoch=ep))
        obs.next("arcade/cab1/ack", lambda m: m["seq"] == 1 and m["result"] == "applied", timeout=30)
    finally:
        for sim in sims.values():
            sim.stop()
        obs.close()
    assert [ln["seq"] for ln in paid_pulses(sims["cab1"])] == [1]
    assert not any(ln["event"] == "reset" for ln in paid_pulses(sims["cab2"]) + sims["cab2"].seen)


def test_release_that_cannot_reach_the_broker_rolls_back(broker, tmp_path):
    # the new firmware connects to a port where no broker listens: the probation timer resets it
    _rollback(broker, tmp_path, "0.9.3", ("app.py", lambda s: s.replace(
        'self.client = MQTTClient(cab.encode(), m["host"], m["port"]', 'self.client = MQTTClient(cab.encode(), m["host"], 9')), 5)
