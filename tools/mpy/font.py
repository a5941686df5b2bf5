"""Render MicroPython's 8x8 framebuf font with the MicroPython VM into build/font8x8.bin (`make setup`).

The host's framebuf stand-in (tools/hostsim/framebuf.py) draws text with it, so a simulated screen is
pixel-identical to what the board draws. The font is MicroPython's (MIT licence); it is produced here from
the pinned VM at set-up, like the pinned umqtt.simple, and never committed.
"""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "build" / "font8x8.bin"


def render(timeout=120):
    from tools.mpy.footprint_report import node_cmd
    proc = subprocess.run(node_cmd() + ["--script", "tools/mpy/vm/fontdump.py"], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    glyphs = {}
    consts = None
    for line in proc.stdout.splitlines():
        parts = line.split()
        if parts[:1] == ["GLYPH"]:
            glyphs[int(parts[1])] = bytes.fromhex(parts[2])
        elif parts[:1] == ["CONSTS"]:
            consts = [int(p) for p in parts[1:]]
    if proc.returncode != 0 or sorted(glyphs) != list(range(32, 128)):
        raise RuntimeError("the MicroPython VM did not render the font (exit %d):\n%s%s"
                           % (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:]))
    if consts != [0, 1, 3, 4]:     # the numbers tools/hostsim/framebuf.py uses
        raise RuntimeError("MicroPython's framebuf format numbers %s differ from the stand-in's" % consts)
    return b"".join(glyphs[o] for o in range(32, 128))


def main():
    if OUT.is_file() and OUT.stat().st_size == 768:
        return 0
    try:
        data = render()
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print("font: %s" % e, file=sys.stderr)
        return 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(OUT)
    print("font: MicroPython's 8x8 framebuf font -> %s" % OUT.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
