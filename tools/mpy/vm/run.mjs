// Run MicroPython-side scripts on the real MicroPython VM (the WebAssembly port from npm).
//
//   node tools/mpy/vm/run.mjs                      run every tests/fw/test_*.py (tools/mpy/vm/runner.py)
//   node tools/mpy/vm/run.mjs -k journal           only test modules/functions whose name contains "journal"
//   node tools/mpy/vm/run.mjs --mpy build/mpy      firmware from compiled .mpy files (what gets flashed)
//   node tools/mpy/vm/run.mjs --tests DIR          run DIR/test_*.py instead of tests/fw (mounted as tests/fw)
//   node tools/mpy/vm/run.mjs --script tools/mpy/vm/footprint.py   run another MicroPython-side script
//   node tools/mpy/vm/run.mjs --heap 2m            a larger Python heap than the default 56k
//
// The Python heap starts at 56 KB by default: what an ESP32 starts with on MicroPython 1.22-1.27
// (ports/esp32/mpconfigport.h, MICROPY_GC_INITIAL_HEAP_SIZE). Like a board's, it grows by further
// areas when full (MICROPY_GC_SPLIT_HEAP_AUTO). Unlike a board, the PyScript variant never collects
// inside a call (see STEPS below), so it grows where a board would collect, and cannot run out the
// way a board does: tools/mpy/vm/footprint.py measures the peak instead, collecting step by step.
//
// The repository is mirrored into the VM's in-memory filesystem under /repo (only the parts that run
// on a device: firmware/, the MicroPython fakes from tools/hostsim/, the pinned umqtt.simple, tests/fw/,
// tests/vectors.json, boards/*.json, tools/mpy/vm/*.py), so a test that finds files relative to __file__
// works the same as on the host. Port quirks: files live on Emscripten's FS, whose OSErrors carry
// Emscripten errno numbers (ENOENT is 44, while errno.ENOENT is 2 as on an ESP32), so code should catch
// OSError rather than compare errno for files; there are no sockets, ssl or tls (tools/mpy/vm/port/
// usocket.py only lets umqtt.simple import); gc.collect() is deferred (see STEPS below). Modules that the PyScript build freezes but an ESP32 build does not have (hmac,
// logging, pathlib, ...) are shadowed by guards that raise ImportError, so "passes here" means
// "imports only what an ESP32 has". Exit status: the script's (0 = all passed), 2 on a harness error.
import fs from "node:fs";
import path from "node:path";
import url from "node:url";

const HERE = path.dirname(url.fileURLToPath(import.meta.url));
const ROOT = path.resolve(HERE, "..", "..", "..");
const PKG = "@micropython/micropython-webassembly-pyscript";
const VM_ROOT = "/repo";

// tools/hostsim files written in the MicroPython subset (the rest there is CPython-only).
const HOSTSIM_MPY = ["machine.py", "network.py", "fakeclock.py", "mqttwire.py", "fwmsgs.py", "panels.py"];

// Frozen into the PyScript build but absent from the stock ESP32 firmware (ports/esp32 manifest:
// asyncio, bundle-networking, dht, ds18x20, neopixel, onewire, umqtt.*, upysh).
const NOT_ON_ESP32 = [
  "abc", "base64", "copy", "datetime", "fnmatch", "functools", "gzip", "hmac", "html", "inspect",
  "itertools", "js", "jsffi", "locale", "logging", "operator", "pathlib", "stat", "string", "tarfile",
  "types", "typing", "dataclasses", "unittest", "uu", "zlib", "pyscript",
];

function usage(msg) {
  if (msg) console.error("run.mjs: " + msg);
  console.error("usage: node tools/mpy/vm/run.mjs [--script FILE] [--tests DIR] [--mpy DIR] [--heap BYTES[k|m]] " +
                "[--no-guard] [-k SUBSTRING] [-- ARGS for the script]");
  process.exit(2);
}

function parseArgs(argv) {
  const o = { script: "tools/mpy/vm/runner.py", tests: "tests/fw", mpy: null, heap: 56 * 1024, guard: true, args: [] };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const val = () => (i + 1 < argv.length ? argv[++i] : usage(a + " needs a value"));
    if (a === "--script") o.script = val();
    else if (a === "--mpy") o.mpy = val();
    else if (a === "--tests") { o.tests = val(); o.testsGiven = true; }
    else if (a === "--heap") {
      const m = /^(\d+)([km]?)$/i.exec(val());
      if (!m) usage("--heap wants a number of bytes, e.g. 256k or 2m");
      o.heap = parseInt(m[1], 10) * { "": 1, k: 1024, m: 1048576 }[m[2].toLowerCase()];
    } else if (a === "--no-guard") o.guard = false;
    else if (a === "-k") o.args.push("-k", val());
    else if (a === "--") { o.args.push(...argv.slice(i + 1)); break; }
    else if (a === "-h" || a === "--help") usage();
    else usage("unknown argument " + JSON.stringify(a));
  }
  return o;
}

async function loadVM(heap) {
  let mod;
  try {
    mod = await import(PKG + "/micropython.mjs");
  } catch (e) {
    console.error(`run.mjs: cannot load ${PKG} (${e.code || e.message}). Run \`npm ci\` in ${ROOT} ` +
                  "(or `make setup`) to install it into node_modules/.");
    process.exit(2);
  }
  return mod.loadMicroPython({
    heapsize: heap,
    linebuffer: true,
    stdout: (line) => process.stdout.write(line + "\n"),
    stderr: (line) => process.stderr.write(line + "\n"),
  });
}

// Copy host files into the VM filesystem. `filter(name)` picks files in a directory (not recursive
// unless `recursive`).
function copyInto(FS, hostDir, vmDir, filter, recursive = false) {
  if (!fs.existsSync(hostDir)) return 0;
  FS.mkdirTree(vmDir);
  let n = 0;
  for (const ent of fs.readdirSync(hostDir, { withFileTypes: true })) {
    const h = path.join(hostDir, ent.name);
    if (ent.isDirectory()) {
      if (recursive && ent.name !== "__pycache__") n += copyInto(FS, h, vmDir + "/" + ent.name, filter, true);
    } else if (filter(ent.name)) {
      FS.writeFile(vmDir + "/" + ent.name, fs.readFileSync(h));
      n++;
    }
  }
  return n;
}

function copyFile(FS, hostFile, vmFile) {
  if (!fs.existsSync(hostFile)) return 0;
  FS.mkdirTree(path.posix.dirname(vmFile));
  FS.writeFile(vmFile, fs.readFileSync(hostFile));
  return 1;
}

function populate(FS, opts) {
  const py = (n) => n.endsWith(".py");
  const r = (p) => path.join(ROOT, p);
  if (opts.mpy) {
    // Compiled firmware plus the files that stay .py on the device.
    const dir = path.resolve(opts.mpy);
    if (!fs.existsSync(dir)) usage(`--mpy ${opts.mpy}: no such directory (run \`make mpy\` first)`);
    copyInto(FS, dir, VM_ROOT + "/firmware", (n) => n.endsWith(".mpy"));
    copyInto(FS, r("firmware"), VM_ROOT + "/firmware", (n) => n === "boot.py" || n === "main.py");
  } else {
    copyInto(FS, r("firmware"), VM_ROOT + "/firmware", py);
  }
  for (const f of HOSTSIM_MPY) copyFile(FS, r("tools/hostsim/" + f), `${VM_ROOT}/tools/hostsim/${f}`);
  copyInto(FS, r("build/umqtt/umqtt"), VM_ROOT + "/build/umqtt/umqtt", py);
  const tests = path.resolve(ROOT, opts.tests);
  if (opts.testsGiven && !fs.existsSync(tests)) usage(`--tests ${opts.tests}: no such directory`);
  copyInto(FS, tests, VM_ROOT + "/tests/fw", (n) => py(n) && n !== "conftest.py", true);
  copyFile(FS, r("tests/vectors.json"), VM_ROOT + "/tests/vectors.json");
  copyInto(FS, r("boards"), VM_ROOT + "/boards", (n) => n.endsWith(".json"));
  copyInto(FS, HERE, VM_ROOT + "/tools/mpy/vm", py, true);
  if (opts.guard) {
    FS.mkdirTree("/esp32guard");
    for (const name of NOT_ON_ESP32) {
      FS.writeFile(`/esp32guard/${name}.py`,
        `raise ImportError("no module named '${name}' on ESP32 MicroPython ` +
        `(the WebAssembly build has it, the stock ESP32 firmware does not)")\n`);
    }
  }
}

const opts = parseArgs(process.argv.slice(2));
const scriptHost = path.resolve(ROOT, opts.script);
if (!fs.existsSync(scriptHost)) usage(`--script ${opts.script}: no such file`);
const scriptRel = path.relative(ROOT, scriptHost).split(path.sep).join("/");
if (scriptRel.startsWith("..")) usage("--script must be inside the repository");

const mp = await loadVM(opts.heap);
console.log(`run.mjs: Python heap ${opts.heap} B at start`);
populate(mp.FS, opts);
mp.FS.mkdirTree("/tmp");

// Search order: guards first (they must shadow the frozen modules), then what a device has on its
// filesystem, then the fakes, then the PyScript build's frozen modules (asyncio etc.).
const sysPath = [
  ...(opts.guard ? ["/esp32guard"] : []),
  `${VM_ROOT}/${path.posix.dirname(scriptRel)}`,
  `${VM_ROOT}/tests/fw`,
  `${VM_ROOT}/firmware`,
  `${VM_ROOT}/build/umqtt`,
  `${VM_ROOT}/tools/hostsim`,
  `${VM_ROOT}/tools/mpy/vm/port`,
  ".frozen",
];
mp.globals.set("_argv", [scriptRel, ...opts.args]);
mp.globals.set("_syspath", sysPath);
mp.globals.set("_script", `${VM_ROOT}/${scriptRel}`);

// The PyScript build of the WebAssembly port defers gc.collect(): called from Python it only marks a
// collection as pending, and the collection runs when control is back in JavaScript (the wasm stack
// cannot be scanned for roots). A script that needs real collections (the footprint) sets a module
// global STEPS to a generator; it is resumed once per top-level call from here, so a gc.collect()
// just before a `yield` has really happened when the generator resumes.
let rc;
try {
  mp.runPython(`
import sys, os
sys.path[:] = list(_syspath)
sys.argv[:] = list(_argv)
os.chdir(${JSON.stringify(VM_ROOT)})
_g = {"__name__": "__main__", "__file__": _script}

def _exit_code(e):
    c = e.args[0] if e.args else 0
    if c is None:
        return 0
    if isinstance(c, int):
        return c
    print(c)
    return 1

def _step():
    global _rc
    try:
        next(_g["STEPS"])
        return True
    except StopIteration:
        return False
    except SystemExit as e:
        _rc = _exit_code(e)
        return False

with open(_script) as _f:
    _src = _f.read()
try:
    exec(compile(_src, _script, "exec"), _g)
    _rc = 0
except SystemExit as _e:
    _rc = _exit_code(_e)
del _src
_has_steps = _rc == 0 and "STEPS" in _g
`);
  if (mp.globals.get("_has_steps")) {
    do {
      mp.runPython("_more = _step()");   // one top-level call per step
    } while (mp.globals.get("_more"));
  }
  rc = mp.globals.get("_rc");
} catch (e) {
  // An uncaught Python exception: the traceback is in the message.
  console.error(String(e.message || e));
  rc = 1;
}
process.exitCode = typeof rc === "number" ? rc : 2;
