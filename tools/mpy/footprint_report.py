"""Measure the firmware's heap footprint on MicroPython and write it into docs/hardware.md.

Builds the .mpy files (tools/mpy/build.py), runs tools/mpy/vm/footprint.py on the MicroPython 1.27 VM
(node tools/mpy/vm/run.mjs --mpy build/mpy, in its default 56 KB starting heap: an ESP32's), checks the
budget and rewrites the "Footprint" section of docs/hardware.md between its markers (the rest of the
file is left alone). It reports the steady state and the peak (live + one credit's garbage).
"""
import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tools.mpy import build as mpy_build  # noqa: E402

# heap the firmware may hold at steady state: 32 KB (issue 4), + 256 B for the signed credit expiry
# (issue 13: exp, the clock check, the status clock field); peak + interpreter <= HEAP still holds
BUDGET = 32 * 1024 + 256
HEAP = 56 * 1024            # an ESP32's starting Python heap, 1.22-1.27 (ports/esp32/mpconfigport.h)
MAX_GROWTH = 256            # bytes between credit 40 and 100: "no growth", give or take a GC block
# with a screen (board.json `display`): the kind and the QR side `arcade provision` makes for a pay URL of
# about 35 characters (version 3, 29 modules): 1 px a module and a 4-module quiet zone on the OLED (37 px),
# 5 px a module and a 2-module quiet zone on the TFT (165 px)
DISPLAYS = (("ssd1306", 37, "SSD1306 128x64 OLED (I2C)"), ("st7789-240x240", 165, "ST7789 240x240 TFT (SPI)"))
_BLOCKS = {
    "ssd1306": {"driver": "ssd1306", "bus": "i2c", "width": 128, "height": 64, "pins": {"sda": 21, "scl": 22}},
    "st7789-240x240": {"driver": "st7789", "bus": "spi", "width": 240, "height": 240,
                       "pins": {"sck": 18, "mosi": 23, "cs": 32, "dc": 33, "rst": 4, "bl": 13}},
}
DOC = ROOT / "docs" / "hardware.md"
BEGIN = "<!-- footprint:begin (written by `make footprint`; edits inside are overwritten) -->"
END = "<!-- footprint:end -->"


class FootprintError(Exception):
    pass


def node_cmd():
    node = shutil.which("node")
    if node is None:
        raise FootprintError("node is not installed: install Node.js 18+ (apt-get install nodejs npm), "
                             "then `make setup`")
    return [node, str(ROOT / "tools" / "mpy" / "vm" / "run.mjs")]


def measure(mpy_dir, timeout=120, display=None):
    """Run the footprint script on MicroPython; returns its FOOTPRINT dict and its report lines.
    display: (kind, QR side, label) from DISPLAYS for a board with a screen."""
    cmd = node_cmd() + ["--script", "tools/mpy/vm/footprint.py"]
    if mpy_dir is not None:
        cmd += ["--mpy", str(mpy_dir)]
    if display is not None:
        cmd += ["--", "--display", display[0], "--block", json.dumps(_BLOCKS[display[0]]), "--qr",
                str(display[1])]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        raise FootprintError("the footprint run did not finish within %d s" % timeout)
    lines = proc.stdout.splitlines()
    found = [ln for ln in lines if ln.startswith("FOOTPRINT ")]
    if proc.returncode != 0 or not found:
        raise FootprintError("the footprint run failed (exit %d):\n%s%s"
                             % (proc.returncode, proc.stdout, proc.stderr))
    return json.loads(found[-1][len("FOOTPRINT "):]), [ln for ln in lines if ln not in found]


def check(r, screens=()):
    """Problems with a footprint result, as sentences (empty: within budget). screens: the runs with a
    display, which must stay under the heap an ESP32 starts the firmware with."""
    bad = []
    for d, rd in screens:
        # with a screen, what stays live must fit the heap a board starts with; the peak (an upper
        # bound: no collection while a credit is handled) is reported, not enforced (see the doc)
        if rd["bare"] + rd["firmware"] > HEAP:
            bad.append("with the %s the firmware keeps %d B live, which with the interpreter's %d B does "
                       "not fit the %d B heap an ESP32 starts with" % (d[2], rd["firmware"], rd["bare"], HEAP))
    if r["firmware"] > BUDGET:
        bad.append("the firmware holds %d B of heap at steady state, over the %d B budget"
                   % (r["firmware"], BUDGET))
    if r["bare"] + r["peak"] > HEAP:
        # the VM grows its heap instead of raising MemoryError: this is where a board would first
        # have to grow its own into the IDF heap that WiFi and TLS need
        bad.append("at its peak the firmware holds %d B, which with the interpreter's %d B does not fit "
                   "the %d B heap an ESP32 starts with" % (r["peak"], r["bare"], HEAP))
    if r["growth"] > MAX_GROWTH:
        bad.append("the heap grew %d B between credit %d and %d: something keeps every credit"
                   % (r["growth"], r["steady_from"], r["credits"]))
    return bad


def section(r, rows, src, screens=()):
    kb = lambda n: "%.1f KB" % (n / 1024.0)  # noqa: E731
    out = [BEGIN, "## Footprint", "",
           "Measured by `make footprint` on MicroPython %s (the WebAssembly port from npm, a 32-bit VM "
           "like the ESP32's: same object and GC block sizes), firmware loaded from the .mpy files "
           "that get flashed. Heap is `gc.mem_alloc()` after `gc.collect()`. The run imports what "
           "`main.py` imports (the firmware modules and the pinned umqtt.simple), builds the App from "
           "a checked config and board profile, then feeds it %d signed QoS 1 credits of %d pulses "
           "through umqtt.simple's `check_msg()` over an in-memory broker socket: callback, journal "
           "writes, pulses on the fake pin with a fake clock, PUBACK, and the signed ack published "
           "by the App's own loop code." % (r["version"], r["credits"], r["pulses"] // r["credits"]),
           "",
           "| heap in use | bytes | |",
           "|---|---:|---|",
           "| interpreter and the measuring script | %d | not on a device |" % r["bare"],
           "| + host fakes of `machine`/`network` | %d | built in (not on the heap) on a device |"
           % r["fakes"],
           "| + firmware and umqtt.simple imported | %d | %s |" % (r["imported"] - r["baseline"],
                                                                kb(r["imported"] - r["baseline"])),
           "| + App built (config, board, coin line, journal, MQTT client) | %d | |"
           % (r["ready"] - r["imported"]),
           "| firmware after 1 credit | %d | %s |" % (r["after_1"] - r["baseline"],
                                                   kb(r["after_1"] - r["baseline"])),
           "| firmware after %d credits | %d | %s |" % (r["steady_from"],
                                                      r["after_%d" % r["steady_from"]] - r["baseline"],
                                                      kb(r["after_%d" % r["steady_from"]] - r["baseline"])),
           "| **firmware after %d credits (steady state)** | **%d** | **%s** of the %s budget |"
           % (r["credits"], r["firmware"], kb(r["firmware"]), kb(BUDGET)),
           "| growth from credit %d to %d | %d | |" % (r["steady_from"], r["credits"], r["growth"]),
           "| **firmware at its peak** (live + the garbage of handling one credit) | **%d** | **%s** |"
           % (r["peak"], kb(r["peak"])),
           "",
           "The peak is `gc.mem_alloc()` right before each collection, and the run collects after "
           "every credit: what is live plus everything handling one credit allocated (parsing, "
           "HMAC, the journal write, the ack), as if nothing were collected meanwhile, so it is an "
           "upper bound. The VM starts with an ESP32's 56 KB Python heap "
           "(`MICROPY_GC_INITIAL_HEAP_SIZE` on 1.22-1.27; 64 KB on C3/S3). On a board that heap grows "
           "by further areas taken from the IDF heap when a collection does not free enough "
           "(`MICROPY_GC_SPLIT_HEAP_AUTO`), and WiFi and mbedTLS take their buffers from the IDF heap, "
           "not from this one. This VM (the PyScript variant) grows its heap the same way but only "
           "collects between calls from JavaScript, which is why the run collects step by step, and "
           "why it cannot raise a board's MemoryError by itself: instead `make footprint` (and the "
           "test suite) fails when the peak plus the interpreter (%s here) does not fit the 56 KB a "
           "board starts with." % kb(r["bare"]),
           "",
           "The state grows until the journal's `recent` list holds its 32 sessions, then stays flat. "
           "An ESP32 without PSRAM has roughly 110 KB free after boot, so about %s remain for "
           "WiFi/TLS buffers and fragmentation." % kb(110 * 1024 - r["firmware"]),
           ""]
    if screens:
        out += ["### With a screen", "",
                "The same run with a `display` in the board profile (firmware/display.py and its driver are "
                "imported only then), a fake panel on the bus (counted with the fakes, like `machine`), "
                "the QR bitmap in flash, attract drawn on connect and a screen drawn after every pulse. "
                "The colour panel is drawn in bands of 4 rows, so neither a colour nor a 1-bit frame is "
                "held.", "",
                "| board | firmware at steady state | vs no screen | at its peak | growth from credit %d to %d |"
                % (r["steady_from"], r["credits"]),
                "|---|---:|---:|---:|---:|",
                "| no screen | %d B (%s) | | %d B | %d B |" % (r["firmware"], kb(r["firmware"]), r["peak"],
                                                          r["growth"])]
        for d, rd in screens:
            out.append("| %s, QR %d px | %d B (%s) | +%d B | %d B | %d B |"
                       % (d[2], d[1], rd["firmware"], kb(rd["firmware"]), rd["firmware"] - r["firmware"],
                          rd["peak"], rd["growth"]))
        out += ["", "With a screen the firmware is over the %s steady-state budget (the screen is an "
                "option: a board without one pays only the hooks). What stays live fits the %s an ESP32 "
                "starts with (`make footprint` fails if not), but the peak upper bound does not: on a board "
                "a screen relies on the collector running during a credit and on the heap growing into "
                "the IDF heap (`MICROPY_GC_SPLIT_HEAP_AUTO`), which leaves less room for WiFi/TLS buffers. "
                "Growth figures with a screen move by a few hundred bytes between runs (the VM's "
                "conservative collector); they are not a leak: a 220-credit run levels off."
                % (kb(BUDGET), kb(HEAP)), ""]
    out += [
           "### .mpy sizes",
           "",
           "Compiled by mpy-cross %s, bytecode only (no `-march`), so one set of files serves every "
           "board. MicroPython loads a bytecode-only .mpy when the major version matches (6: "
           "MicroPython 1.19 and later); the test suite runs from these files on 1.27. `boot.py` "
           "and `main.py` stay source on the device. Sizes in bytes." % src,
           "",
           "| module | source | .mpy |",
           "|---|---:|---:|"]
    for name, py, mpy in rows:
        out.append("| %s | %d | %d |" % (name, py, mpy))
    out.append("| **total** | %d | **%d** |" % (sum(r_[1] for r_ in rows), sum(r_[2] for r_ in rows)))
    out += ["", END]
    return "\n".join(out) + "\n"


def write_doc(doc, text):
    doc = Path(doc)
    if doc.exists():
        old = doc.read_text()
        if BEGIN in old and END in old:
            head, rest = old.split(BEGIN, 1)
            tail = rest.split(END, 1)[1].lstrip("\n")
            new = head + text + ("\n" + tail if tail else "")
        else:
            new = old.rstrip("\n") + "\n\n" + text
    else:
        new = "# Hardware\n\n" + text
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(new)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="mpy_footprint", description=__doc__.split("\n\n")[0])
    ap.add_argument("--doc", default=str(DOC), help="file whose Footprint section is rewritten "
                    "(default docs/hardware.md)")
    ap.add_argument("--no-doc", action="store_true", help="only print the numbers")
    ap.add_argument("--out", default=str(mpy_build.OUT), help=".mpy directory (default build/mpy)")
    args = ap.parse_args(argv)
    try:
        src = mpy_build.compiler_version()
        rows = mpy_build.build(mpy_build.SRC, Path(args.out))
        r, report = measure(Path(args.out))
        screens = [(d, measure(Path(args.out), display=d)[0]) for d in DISPLAYS]
    except (mpy_build.BuildError, FootprintError) as e:
        print("footprint: %s" % e, file=sys.stderr)
        return 1
    print("\n".join(report))
    print("  .mpy total: %d B in %d files" % (sum(x[2] for x in rows), len(rows)))
    for d, rd in screens:
        print("  with the %s: %d B at steady state (+%d B)" % (d[2], rd["firmware"], rd["firmware"] - r["firmware"]))
    bad = check(r, screens)
    if not args.no_doc:
        m = re.search(r"v(\d+\.\d+\.\d+)", src)
        write_doc(args.doc, section(r, rows, m.group(1) if m else src, screens))
        print("footprint: wrote the Footprint section of %s" % args.doc)
    if bad:
        print("footprint: " + "; ".join(bad), file=sys.stderr)
        return 1
    print("footprint: %d B at steady state, within the %d B budget; %d B at the peak"
          % (r["firmware"], BUDGET, r["peak"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
