"""MicroPython 1.22's import rule for u-prefixed names, on CPython (`arcade simulate --micropython 1.22`).

On 1.22 `import ufoo` returns the built-in `foo` when `foo` is an extensible built-in, *before* the
filesystem is searched (py/objmodule.c, mp_module_get_builtin: "the u-prefix being used to force a
built-in import"); only sys.modules is looked at first (py/builtinimport.c). So umqtt.simple's
`import ussl` gets the C `ssl` module, whose wrap_socket(sock, key=, cert=, server_side=,
server_hostname=, cert_reqs=, cadata=, do_handshake=) rejects `cafile=` with TypeError, and a
firmware/ussl.py on the flash is never loaded. From 1.23 on `ssl` is no longer such a built-in and the
file is found. This finder plays 1.22: `u<name>` resolves to the module registered as the built-in
`<name>` (the host stand-ins: `ssl` is tools/hostsim/mpssl.py, whose wrap_socket has 1.22's signature).
"""
import importlib.abc
import importlib.util
import sys

VERSION = (1, 22, 2)


class _Builtin(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, builtins):
        self.builtins = builtins

    def find_spec(self, name, path=None, target=None):
        if path is None and name[:1] == "u" and name[1:] in self.builtins:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        return self.builtins[spec.name[1:]]

    def exec_module(self, module):
        pass


def install(builtins):
    """`builtins`: {name: module} of the extensible built-ins this "board" has (e.g. {"ssl": mpssl})."""
    finder = _Builtin(dict(builtins))
    sys.meta_path.insert(0, finder)
    return finder


def uninstall(finder):
    if finder in sys.meta_path:
        sys.meta_path.remove(finder)
