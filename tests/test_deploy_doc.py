"""docs/deploy.md stays true (issue 15): every `arcade` command line on the page names a real command and
its options parse with that command's own argument parser; the systemd units it asks you to save pass
`systemd-analyze verify`; the files its table lists are the ones `arcade init` writes."""
import argparse
import importlib
import io
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from tools import cli
from tools.deploy import kit

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "deploy.md"
PROGRAMS = ("arcade", "/opt/arcade-pay/.venv/bin/arcade")


def blocks(kind):
    return re.findall(r"```%s\n(.*?)```" % kind, DOC.read_text(), re.S)


def command_lines():
    out = []
    for block in blocks("sh"):
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0] in PROGRAMS:
                out.append(words[1:])
    for block in blocks("ini"):        # what the units run
        for line in block.splitlines():
            if line.startswith("ExecStart=") and line.split("=", 1)[1].split()[0] in PROGRAMS:
                out.append(shlex.split(line.split("=", 1)[1])[1:])
    return out


class _Parsed(Exception):
    pass


def parses(argv, monkeypatch):
    """Run the command's main() until its argparse has parsed argv; True if it parsed."""
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed()

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    module = importlib.import_module(cli.COMMANDS[argv[0]][0])
    try:
        module.main(argv[1:], stdin=io.StringIO("")) if argv[0] == "init" else module.main(argv[1:])
    except _Parsed:
        return True
    except SystemExit:
        return False
    return False


def test_the_page_has_the_commands_of_the_issue():
    names = {argv[0] for argv in command_lines()}
    assert {"init", "doctor", "backup", "restore", "db", "reconcile", "cabinet", "provision", "payments"} <= names


@pytest.mark.parametrize("argv", command_lines(), ids=lambda a: " ".join(a)[:60])
def test_every_arcade_command_line_parses(argv, monkeypatch):
    assert argv[0] in cli.COMMANDS, "docs/deploy.md uses `arcade %s`, which does not exist" % argv[0]
    assert parses(argv, monkeypatch), "docs/deploy.md: `arcade %s` does not parse" % " ".join(argv)


def test_the_parse_check_can_fail(monkeypatch):
    assert not parses(["backup", "/tmp/x", "--no-such-option"], monkeypatch)


def test_the_backup_timer_and_service_pass_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if not tool:
        pytest.fail("systemd-analyze is not installed: run `make setup` (or apt-get install systemd)")
    units = {}
    for block in blocks("ini"):
        first = block.splitlines()[0]
        assert first.startswith("# /etc/systemd/system/"), first
        name = first.rsplit("/", 1)[1]
        # the page's program path, made real on this machine
        units[name] = block.replace("/opt/arcade-pay/.venv/bin/arcade", str(kit.default_arcade_bin()))
    assert sorted(units) == ["arcade-backup.service", "arcade-backup.timer"]
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    done = subprocess.run([tool, "verify", "--man=no"] + [str(tmp_path / n) for n in sorted(units)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_the_table_lists_what_init_writes(tmp_path):
    s = kit.Settings("https://pay.example.com", dir=tmp_path / "etc", data_dir=tmp_path / "data", user="arcade")
    sec = kit.Secrets("whsec_" + "a" * 32, "", "pw")
    (tmp_path / "data").mkdir()          # the broker's logins come from the ledger made there
    table = set(re.findall(r"^\| `([^`]+)` \|", DOC.read_text(), re.M))
    assert table == set(kit.generate(s, sec))
