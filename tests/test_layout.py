"""Rooms and arrows (README, Map): every import in relay/, firmware/ and tools/ is read with ast, including
imports inside functions, and each one must point down: commands -> lab, hostsim, mpy, relay; lab ->
hostsim, mpy, relay (and never another command); hostsim -> the firmware it runs; relay -> nothing in tools; firmware -> only itself
and MicroPython's own modules, with no import cycle among its modules."""
import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE_MODULES = {p.stem for p in (ROOT / "firmware").glob("*.py")}
HOSTSIM_MODULES = {p.stem for p in (ROOT / "tools" / "hostsim").glob("*.py")}
# What MicroPython 1.22-1.27 on an ESP32 has built in (or frozen), and the pinned umqtt.simple.
MICROPYTHON = {"binascii", "ubinascii", "gc", "hashlib", "uhashlib", "json", "ujson", "machine", "micropython",
               "network", "ntptime", "os", "uos", "select", "uselect", "socket", "usocket", "ssl", "ussl", "struct",
               "ustruct", "sys", "time", "utime", "errno", "uerrno", "esp", "esp32", "io", "framebuf", "umqtt",
               "umqtt.simple", "requests", "collections", "deflate", "array"}

# room -> the rooms it may import (its own room always)
ALLOWED = {
    "relay": set(),
    "tools.cli": {"tools.commands"},
    "tools.commands": {"tools.lab", "tools.hostsim", "tools.mpy", "tools.deploy", "relay"},
    "tools.deploy": {"relay"},
    "tools.lab": {"tools.hostsim", "tools.mpy", "relay"},
    "tools.hostsim": {"firmware"},
    "tools.mpy": set(),
    "tools.mpy.vm": {"firmware", "tools.hostsim"},
}


def room_of_file(path):
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts
    if parts[0] == "relay":
        return "relay"
    if parts[0] == "firmware":
        return "firmware"
    if parts[:3] == ("tools", "mpy", "vm"):
        return "tools.mpy.vm"
    if parts[:2] == ("tools", "cli"):
        return "tools.cli"
    if len(parts) > 2 and parts[0] == "tools":
        return "tools." + parts[1]
    return "tools"          # tools/__init__.py


def room_of_import(name, importer_room):
    """The room a module name belongs to, or None for the standard library and third-party packages."""
    top = name.split(".")[0]
    if top == "relay":
        return "relay"
    if top == "firmware":
        return "firmware"
    if top == "tools":
        parts = name.split(".")
        if len(parts) == 1:
            return "tools"
        if parts[1] == "mpy" and len(parts) > 2 and parts[2] == "vm":
            return "tools.mpy.vm"
        return "tools." + parts[1]
    # Bare names: on the device (and in the host simulation) firmware modules are top-level.
    if importer_room in ("firmware", "tools.hostsim", "tools.mpy.vm"):
        if top in FIRMWARE_MODULES:
            return "firmware"
        if top in HOSTSIM_MODULES and importer_room != "firmware":
            return "tools.hostsim"
    return None


def imports(text, filename="<file>"):
    """(line, module name) for every import in the source, at any depth; `from tools import x` counts
    as tools.x."""
    tree = ast.parse(text, filename)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module in ("tools", "tools.commands", "tools.lab", "tools.mpy", "tools.deploy", "relay"):
                for a in node.names:
                    yield node.lineno, node.module + "." + a.name
            else:
                yield node.lineno, node.module


def sources():
    for folder in ("relay", "firmware", "tools"):
        yield from sorted((ROOT / folder).rglob("*.py"))


def violations_in(display, src, text):
    """The wrong arrows in one file's source, `src` being its room."""
    bad = []
    for line, name in imports(text, display):
        dst = room_of_import(name, src)
        if src == "firmware":
            if dst is None and name.split(".")[0] not in MICROPYTHON:
                bad.append("%s:%d: firmware imports %s, which is neither a firmware module nor MicroPython's"
                           % (display, line, name))
            elif dst not in (None, "firmware"):
                bad.append("%s:%d: firmware imports %s (%s)" % (display, line, name, dst))
            continue
        if src == "tools.commands" and name.startswith("tools.commands."):
            bad.append("%s:%d: a command imports another command (%s): move what both need down"
                       % (display, line, name))
            continue
        if dst is None or dst == src:
            continue
        if dst not in ALLOWED.get(src, set()):
            bad.append("%s:%d: %s imports %s (%s): arrows go down only" % (display, line, src, name, dst))
    return bad


def violations(files):
    bad = []
    for path in files:
        bad += violations_in(str(path.relative_to(ROOT)), room_of_file(path), path.read_text())
    return bad


def test_every_import_points_down():
    files = list(sources())
    assert len(files) > 40, "the scan found too few files: %d" % len(files)
    assert violations(files) == []


def test_firmware_modules_import_no_cycle():
    graph = {}
    for path in (ROOT / "firmware").glob("*.py"):
        graph[path.stem] = {name.split(".")[0] for _, name in imports(path.read_text())} & FIRMWARE_MODULES
    seen, stack, cycles = set(), [], []

    def visit(node):
        if node in stack:
            cycles.append(stack[stack.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        stack.append(node)
        for nxt in sorted(graph[node]):
            visit(nxt)
        stack.pop()

    for node in sorted(graph):
        visit(node)
    assert cycles == [], "import cycles among firmware modules: %s" % [" -> ".join(c) for c in cycles]


def test_the_cli_dispatches_only_to_commands():
    sys.path.insert(0, str(ROOT))
    from tools import cli
    wrong = {name: mod for name, (mod, _) in cli.COMMANDS.items() if not mod.startswith("tools.commands.")}
    assert wrong == {}
    for name, (mod, _) in cli.COMMANDS.items():
        assert (ROOT / (mod.replace(".", "/") + ".py")).is_file(), name


# The checker itself must catch each wrong arrow (one row per way to be wrong).
@pytest.mark.parametrize("rel, text", [
    ("relay/x.py", "from tools.commands import qr\n"),
    ("relay/x.py", "def f():\n    from tools.lab import stack\n"),
    ("tools/lab/x.py", "from tools.commands import demo\n"),
    ("tools/commands/x.py", "from tools.commands import provision\n"),
    ("tools/commands/x.py", "from tools import cli\n"),
    ("tools/hostsim/x.py", "from relay import ledger\n"),
    ("tools/mpy/x.py", "from tools.lab import broker\n"),
    ("tools/deploy/x.py", "from tools.lab import broker\n"),
    ("relay/x.py", "from tools.deploy import kit\n"),
    ("firmware/x.py", "import relay.protocol\n"),
    ("firmware/x.py", "import logging\n"),
    ("firmware/x.py", "import machine_tools\n"),
])
def test_checker_catches_a_wrong_arrow(rel, text):
    assert len(violations_in(rel, room_of_file(ROOT / rel), text)) == 1


@pytest.mark.parametrize("rel, text", [
    ("tools/commands/x.py", "from tools.lab import stack\nfrom relay import ledger\nfrom tools.mpy import build\n"),
    ("tools/lab/x.py", "from relay.ledger import open_ledger\nfrom tools.hostsim import boards\n"),
    ("tools/hostsim/x.py", "import machine\nimport app\nfrom config import mask\n"),
    ("firmware/x.py", "import machine\nfrom micropython import const\nimport protocol\nfrom umqtt.simple import MQTTClient\n"),
])
def test_checker_lets_a_right_arrow_through(rel, text):
    assert violations_in(rel, room_of_file(ROOT / rel), text) == []


# The relay stays thin (issue 13): the paying path imports nothing of the operator's side.
THIN_PATH = ("relay.webhook", "relay.dispatcher", "relay.ledger")
OPERATOR_SIDE = ("relay.console", "relay.alerts", "relay.metrics", "relay.ota")


def relay_closure(start):
    """Every relay module `start` imports, directly or through other relay modules (any depth)."""
    seen, todo = set(), list(start)
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        path = ROOT / (mod.replace(".", "/") + ".py")
        if not path.is_file():
            path = ROOT / mod.replace(".", "/") / "__init__.py"
        if not path.is_file():
            continue                        # `from relay import x` where x is a name, not a module
        for _, name in imports(path.read_text(), str(path)):
            if name.split(".")[0] == "relay":
                todo.append(name)
    return seen


def test_the_paying_path_imports_nothing_of_the_operators_side():
    reached = relay_closure(THIN_PATH)
    assert "relay.protocol" in reached and "relay.checkout" in reached, "the scan must follow relay imports"
    wrong = sorted(m for m in reached if m.startswith(OPERATOR_SIDE))
    assert wrong == [], "webhook/dispatcher/ledger reach %s: the relay's paying path must stay thin" % wrong


def test_the_thin_path_check_would_catch_an_import(tmp_path, monkeypatch):
    fake_root = tmp_path / "root"
    (fake_root / "relay").mkdir(parents=True)
    (fake_root / "relay" / "webhook.py").write_text("from relay import checkout\n")
    (fake_root / "relay" / "checkout.py").write_text("def f():\n    from relay.console import views\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake_root)
    assert "relay.console" in relay_closure(["relay.webhook"])


def test_no_except_clause_nests_the_storage_error_tuple():
    """relay.ledger.StorageError is a tuple of the engines' errors: `except (X, StorageError)` nests it,
    which Python refuses with a TypeError at the moment the clause is tested (the error it meant to
    catch is lost). Add it as `(X,) + StorageError` instead."""
    bad = []
    for path in sources():
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ExceptHandler) and isinstance(node.type, ast.Tuple):
                names = [getattr(e, "id", getattr(e, "attr", None)) for e in node.type.elts]
                if "StorageError" in names:
                    bad.append("%s:%d" % (path.relative_to(ROOT), node.lineno))
    assert bad == []
