"""The firmware on a real MicroPython: tests/fw under the MicroPython 1.27 VM (the WebAssembly port
from npm, run by node), from source and from the .mpy files that get flashed; mpy-cross accepts every
firmware file; the heap footprint stays within budget. Node and the npm package are part of
`make setup`: when they are missing these tests fail and say what to run, they do not skip."""
import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tools.mpy import build as mpy_build
from tools.mpy import footprint_report as mpy_footprint

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "tools" / "mpy" / "vm" / "run.mjs"
FW_TESTS = ROOT / "tests" / "fw"
TIMEOUT = 120
LINE = re.compile(r"^(PASS|FAIL) (\S+?)(?: \(import\))?(?::|$)")
SUMMARY = re.compile(r"^micropython: (\d+) passed, (\d+) failed$", re.M)


def node():
    exe = shutil.which("node")
    if exe is None:
        pytest.fail("node is not installed; the MicroPython tests need Node.js 18+ "
                    "(apt-get install nodejs npm), then `make setup`")
    pkg = ROOT / "node_modules" / "@micropython" / "micropython-webassembly-pyscript"
    if not (pkg / "micropython.mjs").exists():
        pytest.fail("the MicroPython WebAssembly package is not installed: run `make setup` "
                    "(or `npm ci` in %s)" % ROOT)
    return exe


def run_mpy(*args):
    proc = subprocess.run([node(), str(RUN)] + [str(a) for a in args], capture_output=True,
                          text=True, timeout=TIMEOUT, cwd=ROOT)
    return proc.returncode, proc.stdout, proc.stderr


def results(out):
    """({name: "PASS"|"FAIL"}, (passed, failed) from the summary line)."""
    seen = {}
    for line in out.splitlines():
        m = LINE.match(line)
        if m:
            seen[m.group(2)] = m.group(1)
    m = SUMMARY.search(out)
    assert m, "no summary line in the MicroPython output:\n" + out
    return seen, (int(m.group(1)), int(m.group(2)))


def defined_tests(test_dir):
    """module.function for every module-level test_* function, read with CPython's parser."""
    names = set()
    for path in sorted(Path(test_dir).glob("test_*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node_ in tree.body:
            if isinstance(node_, ast.FunctionDef) and node_.name.startswith("test_"):
                names.add("%s.%s" % (path.stem, node_.name))
    return names


def assert_suite_passed(rc, out, err):
    seen, (passed, failed) = results(out)
    expected = defined_tests(FW_TESTS)
    assert expected, "tests/fw has no test functions"
    failures = "\n".join(line for line in out.splitlines() if line.startswith(("FAIL", "    ")))
    assert rc == 0 and failed == 0, "failed on MicroPython:\n%s\n%s" % (failures, err)
    assert set(seen) == expected, ("MicroPython ran a different set of tests than tests/fw "
                                   "defines: missing %s, extra %s"
                                   % (sorted(expected - set(seen)), sorted(set(seen) - expected)))
    assert passed == len(expected) and all(v == "PASS" for v in seen.values())


def loaded_firmware(out):
    m = re.search(r"^firmware loaded: (.*)$", out, re.M)
    assert m, out
    return m.group(1).split()


def test_firmware_suite_passes_on_micropython():
    rc, out, err = run_mpy()
    assert "MicroPython 1.27" in out, out[:200]
    # started in an ESP32's 56 KB Python heap (run.mjs's default)
    assert "run.mjs: Python heap 57344 B at start" in out, out[:200]
    assert_suite_passed(rc, out, err)
    files = loaded_firmware(out)
    assert "protocol.py" in files and "cabinet.py" in files, files


def test_firmware_suite_passes_from_the_mpy_files_that_get_flashed(tmp_path):
    rows = mpy_build.build(out=tmp_path, log=lambda line: None)
    rc, out, err = run_mpy("--mpy", tmp_path)
    assert_suite_passed(rc, out, err)
    files = loaded_firmware(out)
    assert files and all(f.endswith(".mpy") for f in files), files
    assert set(files) <= {name[:-3] + ".mpy" for name, _, _ in rows}


def test_runner_reports_each_failure_and_exits_nonzero(tmp_path):
    (tmp_path / "test_mixed.py").write_text(
        "def test_ok():\n    assert 1 + 1 == 2\n\n"
        "def test_wrong():\n    assert 1 + 1 == 3, 'arithmetic'\n\n"
        "def test_raises():\n    {}['missing']\n\n"
        "def helper_not_a_test():\n    raise RuntimeError\n")
    (tmp_path / "test_needs_hmac.py").write_text("import hmac\n\ndef test_never_runs():\n    pass\n")
    rc, out, err = run_mpy("--tests", tmp_path)
    assert rc == 1, out + err
    seen, counts = results(out)
    assert counts == (1, 3)
    assert seen == {"test_mixed.test_ok": "PASS", "test_mixed.test_wrong": "FAIL",
                    "test_mixed.test_raises": "FAIL", "test_needs_hmac": "FAIL"}
    assert "FAIL test_mixed.test_wrong: AssertionError: arithmetic" in out
    assert "FAIL test_mixed.test_raises: KeyError: missing" in out
    # the PyScript build freezes hmac; an ESP32 does not have it, so neither does the test run
    assert "FAIL test_needs_hmac (import): ImportError: no module named 'hmac' on ESP32" in out


def test_runner_selects_with_k_and_fails_when_nothing_ran(tmp_path):
    (tmp_path / "test_a.py").write_text("def test_one():\n    pass\n\ndef test_two():\n    pass\n")
    rc, out, _ = run_mpy("--tests", tmp_path, "-k", "two")
    assert rc == 0 and results(out) == ({"test_a.test_two": "PASS"}, (1, 0))
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, out, _ = run_mpy("--tests", empty)
    assert rc == 1 and "no tests found" in out


def test_every_firmware_file_compiles_with_mpy_cross(tmp_path):
    lines = []
    rows = mpy_build.build(out=tmp_path, log=lines.append)
    sources = sorted(p.name for p in (ROOT / "firmware").glob("*.py"))
    compiled = [r[0] for r in rows]
    assert compiled == [n for n in sources if n not in mpy_build.KEEP_SOURCE] and compiled
    assert len(lines) == len(rows)
    for name, py_size, mpy_size in rows:
        data = (tmp_path / (name[:-3] + ".mpy")).read_bytes()
        assert len(data) == mpy_size > 0
        # bytecode-only v6 with 31-bit small ints: what an ESP32 running MicroPython 1.27 loads
        assert mpy_build.header(data) == (6, 0, 31), name
    # boot.py and main.py stay source on the device, but must still be valid MicroPython
    for name in mpy_build.KEEP_SOURCE:
        if (ROOT / "firmware" / name).exists():
            mpy_build.compile_one(ROOT / "firmware" / name, tmp_path / "keep")


@pytest.mark.parametrize("source, message", [
    ("def f(x):\n    match x:\n        case 1:\n            return 2\n", "SyntaxError"),
    ("def f():\n    def g():\n        nonlocal y\n", "no binding for nonlocal"),
])
def test_build_rejects_what_micropython_cannot_compile(tmp_path, source, message):
    ast.parse(source)  # CPython 3.11 accepts it; MicroPython does not
    src = tmp_path / "src"
    src.mkdir()
    (src / "good.py").write_text("X = 1\n")
    (src / "bad.py").write_text(source)
    out = tmp_path / "out"
    with pytest.raises(mpy_build.BuildError) as e:
        mpy_build.build(src, out, log=lambda line: None)
    assert "bad.py: mpy-cross rejected it" in str(e.value) and message in str(e.value)
    assert sorted(p.name for p in out.iterdir()) == ["good.mpy"], "nothing half-built for bad.py"


# What a stock ESP32 build of MicroPython 1.27 can import: its built-in modules, what its manifest
# freezes (asyncio, bundle-networking, dht, ds18x20, neopixel, onewire, umqtt, upysh) and the
# u-prefixed aliases the import system still resolves for extensible built-ins.
ESP32_MODULES = {
    "_thread", "array", "asyncio", "binascii", "bluetooth", "btree", "builtins", "cmath",
    "collections", "cryptolib", "deflate", "dht", "ds18x20", "errno", "esp", "esp32", "espnow",
    "framebuf", "gc", "hashlib", "heapq", "io", "json", "machine", "math", "micropython", "mip",
    "neopixel", "network", "ntptime", "onewire", "os", "platform", "random", "re", "requests",
    "select", "socket", "ssl", "struct", "sys", "time", "tls", "uctypes", "umqtt", "upysh", "vfs",
    "webrepl",
}
U_ALIASES = {"u" + m for m in ("array", "binascii", "collections", "errno", "hashlib", "heapq",
                               "io", "json", "os", "platform", "random", "re", "select", "socket",
                               "struct", "sys", "time")}


def _imports(tree):
    """(module, line, guarded) for every import; guarded when a try catches its ImportError."""
    found = []

    def visit(node_, guarded):
        if isinstance(node_, ast.Try):
            catches = any(h.type is None or "ImportError" in ast.dump(h.type) for h in node_.handlers)
            for child in node_.body:
                visit(child, guarded or catches)
            for child in node_.handlers + node_.orelse + node_.finalbody:
                visit(child, guarded)
            return
        if isinstance(node_, ast.Import):
            found.extend((a.name.split(".")[0], node_.lineno, guarded) for a in node_.names)
        elif isinstance(node_, ast.ImportFrom) and node_.module and not node_.level:
            found.append((node_.module.split(".")[0], node_.lineno, guarded))
        for child in ast.iter_child_nodes(node_):
            visit(child, guarded)

    visit(tree, False)
    return found


def test_firmware_imports_only_what_an_esp32_has():
    own = {p.stem for p in (ROOT / "firmware").glob("*.py")}
    bad = []
    for path in sorted((ROOT / "firmware").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for mod, line, guarded in _imports(tree):
            if not guarded and mod not in ESP32_MODULES | U_ALIASES | own:
                bad.append("%s:%d imports %s" % (path.name, line, mod))
        for n in ast.walk(tree):
            if (isinstance(n, ast.Attribute) and n.attr == "path" and isinstance(n.value, ast.Name)
                    and n.value.id == "os"):
                bad.append("%s:%d uses os.path (MicroPython's os has none)" % (path.name, n.lineno))
    assert not bad, "not on an ESP32's MicroPython:\n" + "\n".join(bad)
    assert own, "no firmware found"


def test_footprint_within_budget_and_flat(tmp_path):
    node()
    rows = mpy_build.build(out=tmp_path, log=lambda line: None)
    r, report = mpy_footprint.measure(tmp_path, timeout=TIMEOUT)
    # it really drove the firmware: every credit applied, pulsed, PUBACKed and acked
    assert (r["credits"], r["pulses"], r["acks"]) == (100, 200, 100), r
    assert r["journal_saves"] >= 3 * r["credits"], r
    assert all(m.endswith(".mpy") for m in r["modules"] if not m.startswith("umqtt")), r["modules"]
    assert r["baseline"] < r["imported"] < r["ready"] <= r["steady"], r
    assert mpy_footprint.check(r) == [], "\n".join(report)
    # the peak (live + one credit's garbage) is above the steady state, and must fit an ESP32's
    # starting heap: the VM would grow instead of raising MemoryError, so check() says it
    assert r["firmware"] < r["peak"] and r["bare"] + r["peak"] <= mpy_footprint.HEAP, r
    assert mpy_footprint.check(dict(r, peak=mpy_footprint.HEAP)) != [], "a peak over 56 KB fails"
    doc = tmp_path / "hardware.md"
    doc.write_text("# Hardware\n\n## Wiring\n\nPC817 notes.\n")
    text = mpy_footprint.section(r, rows, "1.29.0")
    mpy_footprint.write_doc(doc, text)
    mpy_footprint.write_doc(doc, text)   # rewriting replaces the section, keeps the rest
    body = doc.read_text()
    assert body.count("## Footprint") == 1 and "## Wiring\n\nPC817 notes." in body
    assert "| **firmware after 100 credits (steady state)** | **%d** |" % r["firmware"] in body
    assert "| **firmware at its peak** (live + the garbage of handling one credit) | **%d** |" % r["peak"] in body


def test_footprint_with_a_screen_draws_every_pulse_and_stays_under_the_start_heap(tmp_path):
    node()
    mpy_build.build(out=tmp_path, log=lambda line: None)
    r, _ = mpy_footprint.measure(tmp_path, timeout=TIMEOUT)
    screens = []
    for d in mpy_footprint.DISPLAYS:
        rd, report = mpy_footprint.measure(tmp_path, timeout=TIMEOUT, display=d)
        assert (rd["credits"], rd["pulses"], rd["acks"]) == (100, 200, 100), rd
        assert rd["display"] == d[0] and rd["frames"] > 0, "the screen really drew"
        assert "display.mpy" in rd["modules"] and "display" not in [m.split(".")[0] for m in r["modules"]]
        assert rd["firmware"] > r["firmware"], "a screen costs heap; the measurement sees it"
        screens.append((d, rd))
    assert mpy_footprint.check(r, screens) == []
    assert mpy_footprint.check(r, [(d, dict(rd, firmware=mpy_footprint.HEAP)) for d, rd in screens])
    text = mpy_footprint.section(r, [("x.py", 1, 1)], "1.29.0", screens)
    assert "### With a screen" in text and "| SSD1306 128x64 OLED (I2C), QR 37 px | %d B" % screens[0][1]["firmware"] in text
