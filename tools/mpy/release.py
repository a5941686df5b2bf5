"""An over-the-air release: what `make mpy` builds, the pinned umqtt.simple and a manifest.

build/ota/<version>/manifest.json holds the version (firmware/protocol.py's FW: the one the firmware
reports in its status), the minimum MicroPython, the chips the boards/ profiles name, and each
file's name, size and sha256; build/ota/<version>/files/ holds the files. The manifest is not signed
here: the relay authenticates it per cabinet (HMAC under that cabinet's secret, relay/ota.py), so a
release built once serves every cabinet and a cabinet accepts only what its own relay sent.
boot.py, main.py and otaboot.py are never in a release: they stay at the flash root (USB flashing).
"""
import ast
import hashlib
import json
import os
import shutil
from pathlib import Path

from tools.mpy import build as mpy_build
from tools.mpy import fetch_umqtt

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "build" / "ota"
BOOT_ONLY = ("otaboot.mpy",)           # selects the slot, so it can't live in one
MIN_MICROPYTHON = "1.22.0"


class ReleaseError(Exception):
    pass


def firmware_version(src=mpy_build.SRC):
    """FW from firmware/protocol.py, read without importing the firmware."""
    tree = ast.parse((Path(src) / "protocol.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "FW" for t in node.targets):
            return ast.literal_eval(node.value)
    raise ReleaseError("firmware/protocol.py has no FW = \"x.y.z\" version")


def chips(boards=ROOT / "boards"):
    return sorted({json.loads(p.read_text())["chip"] for p in Path(boards).glob("*.json")})


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def build(out=OUT, src=mpy_build.SRC, umqtt=fetch_umqtt.DEST, log=print, source=False, version=None,
          probation_s=120):
    """Build the release; returns its directory. Raises ReleaseError (or mpy_build.BuildError).
    source: the .py files instead of .mpy (the host simulator runs CPython, which can't load .mpy)."""
    version = version or firmware_version(src)
    simple = Path(umqtt) / "umqtt" / "simple.py"
    if not simple.is_file():
        raise ReleaseError("the pinned umqtt.simple is missing from %s: run `make umqtt`" % umqtt)
    mpy_dir = Path(out) / ".mpy"
    if source:
        files = {p.name: p.read_bytes() for p in sorted(Path(src).glob("*.py"))
                 if p.name not in ("boot.py", "main.py", "otaboot.py")}
    else:
        mpy_build.build(Path(src), mpy_dir, log=lambda line: None)
        files = {p.name: p.read_bytes() for p in sorted(mpy_dir.glob("*.mpy")) if p.name not in BOOT_ONLY}
    files["umqtt/simple.py"] = simple.read_bytes()
    manifest = {"v": 1, "version": version, "probation_s": probation_s, "min_micropython": MIN_MICROPYTHON, "chips": chips(),
                "files": [{"name": n, "size": len(d), "sha256": sha256(d)} for n, d in sorted(files.items())]}
    raw = json.dumps(manifest, separators=(",", ":"), sort_keys=True).encode()
    if len(raw) > 4096:
        raise ReleaseError("the manifest is %d bytes; the firmware takes at most 4096" % len(raw))
    final = Path(out) / version
    stage = Path(out) / (version + ".tmp")
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "files" / "umqtt").mkdir(parents=True)
    for name, data in files.items():
        (stage / "files" / name).write_bytes(data)
    (stage / "manifest.json").write_bytes(raw)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(stage, final)
    shutil.rmtree(mpy_dir, ignore_errors=True)
    log("release %s: %d files, %d bytes, MicroPython >= %s, chips %s -> %s"
        % (version, len(files), sum(len(d) for d in files.values()), MIN_MICROPYTHON, ", ".join(manifest["chips"]),
           final))
    return final
