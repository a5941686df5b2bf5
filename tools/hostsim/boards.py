"""The firmware's own configuration checks, run on this host: firmware/config.py loaded as the board
loads it, and the board profiles in boards/ validated by it (`arcade provision`, `flash`, `cabinet`)."""
import importlib.util
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BOARDS = ROOT / "boards"
FIRMWARE = ROOT / "firmware"
CA_NAME = "ca.pem"          # where --ca lands on the device (config.json "ca", relative to /)


class ProvisionError(Exception):
    """Bad input for a board (provisioning, flashing): the message says what and what to do; nothing was
    written."""


def fw_config():
    """firmware/config.py as the board imports it: the module `config`, with firmware/ on the path
    for the modules it loads itself (boardcheck). The board's validation, one code path."""
    path = str(FIRMWARE / "config.py")
    module = sys.modules.get("config")
    if module is not None:
        if os.path.abspath(getattr(module, "__file__", "") or "") != path:
            raise RuntimeError("another module named 'config' (%s) is loaded; cannot load %s" % (module, path))
        return module
    if str(FIRMWARE) not in sys.path:
        sys.path.append(str(FIRMWARE))      # last: firmware module names never shadow anything else
    spec = importlib.util.spec_from_file_location("config", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["config"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["config"]
        raise
    return module


def board_names(boards=BOARDS):
    return sorted(p.stem for p in Path(boards).glob("*.json"))


def load_profile(name, boards=BOARDS):
    """boards/<name>.json checked by the firmware's check_board; raises ProvisionError."""
    path = Path(boards) / (name + ".json")
    if not name or "/" in name or not path.is_file():
        raise ProvisionError("unknown board %r: choose one of %s (profiles in %s)"
                             % (name, ", ".join(board_names(boards)) or "none", boards))
    fw = fw_config()
    try:
        profile = fw.check_board(json.loads(path.read_text()), "boards/%s.json" % name)
    except ValueError as e:
        raise ProvisionError("boards/%s.json is not valid JSON: %s" % (name, e))
    except fw.ConfigError as e:
        raise ProvisionError(str(e))
    if profile["name"] != name:
        raise ProvisionError("boards/%s.json names itself %r: its 'name' must equal the file name"
                             % (name, profile["name"]))
    return profile
