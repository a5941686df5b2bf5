"""Over-the-air releases: `arcade ota build` makes one from what `make mpy` builds; the relay loads it
(every file checked) and authenticates it per cabinet; the firmware's own staging code takes it in
chunks and boots it on probation, and refuses another cabinet's copy."""
import hashlib
import json
import sys
from pathlib import Path

import pytest

from relay import ota as relay_ota
from tools import cli
from tools.mpy import release

ROOT = Path(__file__).resolve().parents[1]
for _sub in ("tools/hostsim", "firmware"):
    if str(ROOT / _sub) not in sys.path:
        sys.path.append(str(ROOT / _sub))

import ota as fw_ota  # noqa: E402  (firmware/ota.py, as the board runs it)
import otaboot  # noqa: E402

SECRET_A = "a1" * 32
SECRET_B = "b2" * 32


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("ota")
    assert cli.main(["ota", "build", "--out", str(out)]) == 0
    (d,) = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return d


def test_release_holds_the_firmware_and_umqtt_with_true_hashes(built):
    m = json.loads((built / "manifest.json").read_bytes())
    assert m["version"] == release.firmware_version() == built.name
    names = {f["name"] for f in m["files"]}
    expected = {p.stem + ".mpy" for p in (ROOT / "firmware").glob("*.py")} - {"boot.mpy", "main.mpy", "otaboot.mpy"}
    assert names == expected | {"umqtt/simple.py"}
    for f in m["files"]:
        data = (built / "files" / f["name"]).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (f["size"], f["sha256"]), f["name"]
    assert (built / "files" / "umqtt" / "simple.py").read_bytes() == (ROOT / "build/umqtt/umqtt/simple.py").read_bytes()
    assert m["chips"] == sorted({json.loads(p.read_text())["chip"] for p in (ROOT / "boards").glob("*.json")})


def test_the_relay_refuses_a_tampered_release(built, tmp_path):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(built, bad)
    target = bad / "files" / "app.mpy"
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    with pytest.raises(relay_ota.ReleaseError, match="app.mpy does not match"):
        relay_ota.load(bad)
    m = json.loads((built / "manifest.json").read_bytes())
    m["files"][0]["name"] = "../../etc/passwd"
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(relay_ota.ReleaseError, match="leaves the release"):
        relay_ota.load(bad)
    (bad / "manifest.json").write_text("{" + " " * 5000 + "}")
    with pytest.raises(relay_ota.ReleaseError, match="more than the firmware takes"):
        relay_ota.load(bad)


def test_a_cabinet_stages_its_own_copy_and_boots_it_on_probation(built, tmp_path):
    raw, m, files = relay_ota.load(built)
    flash = str(tmp_path / "flash") + "/"
    Path(flash).mkdir()
    (Path(flash) / "state.json").write_text('{"v": 1, "ledger": "", "last": 0, "recent": [], "cur": null, '
                                           '"total": 0, "ack": null}')
    up = fw_ota.Updater(flash, SECRET_A.encode(), "esp32", (1, 22, 2), free=lambda root: 1 << 22)
    with pytest.raises(fw_ota.OtaError, match="bad signature"):
        up.begin(raw, relay_ota.manifest_mac(SECRET_B, raw))        # cabinet B's copy
    assert up.begin(raw, relay_ota.manifest_mac(SECRET_A, raw)) == m["version"]
    chunk = 1024
    writes = 0
    for name, data in sorted(files.items()):
        at = 0
        while at < len(data):
            at = up.write(name, at, data[at:at + chunk])
            writes += 1
    assert up.writes == writes == sum(-(-len(d) // chunk) for d in files.values())
    assert up.install() == m["version"]
    path = []
    s = otaboot.select(flash, path)
    assert (s["cur"], s["ver"], s["prev"]) == ("s0", m["version"], "") and path == [flash + "s0"]
    for name, data in files.items():
        assert (Path(flash) / "s0" / name).read_bytes() == data
    old = fw_ota.Updater(flash, SECRET_A.encode(), "esp32", (1, 21, 0), free=lambda root: 1 << 22)
    otaboot.confirm(flash)
    with pytest.raises(fw_ota.OtaError, match="needs MicroPython 1.22.0"):
        old.begin(raw, relay_ota.manifest_mac(SECRET_A, raw))


def test_the_relay_refuses_a_release_for_another_chip_or_an_older_micropython(built):
    raw, m, files = relay_ota.load(built)
    assert relay_ota.compatible(m, "esp32 1.22.0 idle 0.1.0") is None
    assert relay_ota.compatible(m, "esp32s3 1.27.0 idle 0.1.0") is None
    assert "built for" in relay_ota.compatible(m, "esp8266 1.27.0 idle 0.1.0")
    assert "needs MicroPython >= 1.22.0" in relay_ota.compatible(m, "esp32 1.21.9 idle 0.1.0")
    assert "needs MicroPython" in relay_ota.compatible(m, "esp32 garbage idle 0.1.0")
    assert "reported no chip" in relay_ota.compatible(m, "")


def test_ota_status_shows_each_cabinets_version_and_ota_state(tmp_path, capsys, monkeypatch):
    from relay.ledger import open_ledger
    db = str(tmp_path / "arcade.db")
    with open_ledger(db) as ledger:
        ledger.add_cabinet("cab1")
        ledger.add_cabinet("cab2")
        ledger.record_status("cab1", True, {"fw": "0.2.0", "ota": "esp32 1.27.0 failed 0.9.2"})
        ledger.record_status("cab2", True, {"fw": "0.3.0"})
    assert cli.main(["ota", "status", "--db", db]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split() == ["cab1", "yes", "0.2.0", "esp32", "1.27.0", "failed", "0.9.2"]
    assert out[2].split() == ["cab2", "yes", "0.3.0", "-"]
