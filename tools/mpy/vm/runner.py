# MicroPython-side test runner: the same tests/fw/test_*.py files that pytest runs on CPython.
#
# Imports each test module, calls every module-level function named test_* with no arguments,
# prints one line per test and a closing "micropython: N passed, M failed" line; exits 1 on any
# failure (an import error counts as a failure of that module). Written for MicroPython: no
# inspect, no unittest, nothing an ESP32 build lacks.
import gc
import io
import os
import sys

_TEST_DIR = "tests/fw"


def _modules(test_dir):
    try:
        listing = os.listdir(test_dir)
    except OSError:
        return []   # missing directory: main() says no tests were found
    names = []
    for name in listing:
        if name.startswith("test_") and name.endswith(".py"):
            names.append(name[:-3])
    names.sort()
    return names


def _traceback(exc):
    buf = io.StringIO()
    sys.print_exception(exc, buf)
    return buf.getvalue()


def _report_failure(label, exc):
    tb = _traceback(exc).rstrip("\n").split("\n")
    # Last line is "ExcType: message"; an AssertionError with no message says only that.
    print("FAIL %s: %s" % (label, tb[-1]))
    for line in tb[:-1]:
        print("    " + line)


def _tests(mod):
    found = []
    for name in dir(mod):
        if name.startswith("test_"):
            fn = getattr(mod, name)
            if callable(fn):
                found.append(name)
    found.sort()  # module dicts are unordered on MicroPython; sorted keeps runs comparable
    return found


def run(test_dir=_TEST_DIR, pattern=None):
    passed = failed = 0
    for modname in _modules(test_dir):
        try:
            mod = __import__(modname)
        except Exception as e:
            if pattern is None or pattern in modname:
                _report_failure("%s (import)" % modname, e)
                failed += 1
            continue
        for name in _tests(mod):
            label = "%s.%s" % (modname, name)
            if pattern is not None and pattern not in label:
                continue
            cwd = os.getcwd()
            try:
                getattr(mod, name)()
            except Exception as e:
                _report_failure(label, e)
                failed += 1
            else:
                print("PASS " + label)
                passed += 1
            finally:
                os.chdir(cwd)
                gc.collect()
    return passed, failed


def main(argv):
    pattern = None
    if len(argv) >= 2 and argv[0] == "-k":
        pattern = argv[1]
    print("MicroPython %s (%s), .mpy v%d.%d" % (
        ".".join(str(v) for v in sys.implementation.version[:3]),
        sys.platform, sys.implementation._mpy & 0xFF, sys.implementation._mpy >> 8 & 3))
    passed, failed = run(_TEST_DIR, pattern)
    # which firmware files the tests ran (.py from source, .mpy when run with --mpy)
    loaded = []
    for name in sys.modules:
        f = getattr(sys.modules[name], "__file__", "")
        if f and "/firmware/" in f:
            loaded.append(f.rsplit("/", 1)[-1])
    loaded.sort()
    print("firmware loaded: " + " ".join(loaded))
    print("micropython: %d passed, %d failed" % (passed, failed))
    if passed + failed == 0:
        print("micropython: no tests found in %s" % _TEST_DIR)
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
