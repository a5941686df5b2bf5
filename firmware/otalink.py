# Over-the-air updates over MQTT (docs/protocol.md, Over-the-air updates): the messages of the
# topic <prefix>/<cab>/ota, handed over by app.py. app.py imports this module only when such a
# message arrives, or at boot when the board is on probation or has just rolled back, and drops it
# again when nothing is going on: the steady-state heap never carries it (nor ota.py).
# A message is one header line, then raw bytes (each well below inbound.MAX_MSG):
#   q                       report: chip, MicroPython, state (a push starts with it)
#   m <total> <off> <mac>   bytes [off, off+len) of the manifest (collected in ota.man in flash)
#   c <off> <name>          bytes [off, off+len) of a file of the release (ota.Updater.write)
#   i                       install: only when no credit is being pulsed, held or unacked; resets
#   p <nonce>               health probe: the new firmware is up and reached the broker: confirm
# The answer is the signed status field `ota`: "<chip> <major.minor.micro> <state>", state one of
#   idle <ver> | man <off> | want <ver> <name> <off> | staged <ver> | probe <ver> |
#   ok <ver> <nonce> | failed <ver> | err <reason>
# On probation a one-shot timer resets the board unless the probe came within the manifest's
# probation_s (default 120 s): otaboot then counts the boot, and after 3 rolls back.
import os
import sys
import machine
from micropython import const

import otaboot

_PROBATION_S = const(120)
_MAN = "ota.man"
_BUSY_MS = const(5000)      # a credit being pulsed when probation ends: look again this much later

_timer = None
_app = None


def _chip():
    m = getattr(sys.implementation, "_machine", "")
    i = m.rfind(" with ESP32")
    return m[i + 6:].strip().lower() if i >= 0 else "host"


def _mpy():
    v = sys.implementation.version
    return (v[0], v[1], v[2])


def _head():
    return "%s %d.%d.%d " % ((_chip(),) + _mpy())


def _boot_state(root):
    s = otaboot.load(root)
    if s["probe"]:
        return "probe " + s["ver"], s
    if s["failed"]:
        return "failed " + s["failed"], s
    return None, s


def at_boot(app, root):
    """App.boot(): on probation, arm the reset; after a rollback, say which version failed.
    Returns True when the module must stay loaded (probation)."""
    global _timer, _app
    st, s = _boot_state(root)
    if st is None:
        return False
    app.ota = _head() + st
    if not s["probe"]:
        return False
    ms = s.get("limit", _PROBATION_S) * 1000
    _app = app
    try:
        _timer = machine.Timer(0)
        _timer.init(mode=machine.Timer.ONE_SHOT, period=ms, callback=_expired)
    except Exception as e:      # never let probation keep the app from starting
        print("ota: no probation timer (a broker that can't be reached won't roll back):", e)
    return True


def _expired(t):
    if _app is not None and _app.cabinet.state.get("cur") is not None:
        # never reset in the middle of a credit's pulses: after it
        t.init(mode=machine.Timer.ONE_SHOT, period=_BUSY_MS, callback=_expired)
        return
    print("ota: no health probe within the probation bound: resetting (otaboot rolls back)")
    machine.reset()


_u = None


def _updater(app, root):
    global _u
    if _u is None:
        import ota
        _u = ota.Updater(root, app.cabinet.key, _chip(), _mpy())
    return _u


def _idle(app):
    c = app.cabinet
    return c.state.get("cur") is None and c.pending_ack() is None and not c.held()


def handle(app, root, msg):
    """One message of the ota topic. Sets app.ota (the status field). Returns True while an
    update is going on (keep this module loaded), False when it can be dropped."""
    nl = msg.find(b"\n")
    if nl < 0 or nl > 200:
        app.ota = _head() + "err malformed"
        return _u is not None
    head = msg[:nl].decode().split(" ")
    data = memoryview(msg)[nl + 1:]
    k = head[0]
    import ota
    try:
        if k == "q":
            st, s = _boot_state(root)
            u = _updater(app, root)
            if u.m is not None:
                st = _want(u)
            elif st is None:
                st = "idle " + (s["ver"] or FW())
            app.ota = _head() + st
        elif k == "m":
            total, off, mac = int(head[1]), int(head[2]), head[3]
            if not 0 < total <= 4096:
                raise ota.OtaError("manifest size")
            at = _size(root + _MAN)
            if off == 0 and at > 0:
                os.remove(root + _MAN)
                at = 0
            if off == at:
                with open(root + _MAN, "ab") as f:
                    f.write(data)
                at += len(data)
            if at < total:
                app.ota = _head() + "man %d" % at
            else:
                with open(root + _MAN, "rb") as f:
                    raw = f.read()
                os.remove(root + _MAN)
                u = _updater(app, root)
                u.begin(raw, mac)
                app.ota = _head() + _want(u)
        elif k == "c":
            u = _updater(app, root)
            if u.m is None:
                raise ota.OtaError("no release being staged")
            u.write(head[2], int(head[1]), data)
            app.ota = _head() + _want(u)
        elif k == "i":
            st, s = _boot_state(root)
            u = _updater(app, root)
            if u.m is None and st is not None:
                # the "i" again after the reset it caused (never PUBACKed): say how that went
                app.ota = _head() + st
                return bool(s["probe"])
            if u.m is None:
                raise ota.OtaError("no release being staged")
            if not _idle(app):
                raise ota.OtaError("busy")
            lim = u.m.get("probation_s", _PROBATION_S)
            ver = u.install()
            s = otaboot.load(root)
            if isinstance(lim, int) and 5 <= lim <= 900:
                s["limit"] = lim
                otaboot.save(s, root)
            app.emit("ota", "install " + ver)
            app.coin.idle()
            machine.reset()
        elif k == "p":
            global _timer
            s = otaboot.load(root)
            otaboot.confirm(root)
            if _timer is not None:
                _timer.deinit()
                _timer = None
            app.ota = _head() + "ok %s %s" % (s["ver"] or FW(), head[1][:16])
            return False
        else:
            raise ota.OtaError("unknown message")
    except (ota.OtaError, ValueError, IndexError, KeyError) as e:
        app.ota = _head() + "err " + str(e)[:60]
    except (OSError, MemoryError) as e:
        # flash full or failing, heap short: said in the status, and the message is PUBACKed (a
        # reset here would have the broker bring it back for ever)
        app.ota = _head() + "err %s %s" % (type(e).__name__, str(e)[:40])
    return _u is not None and _u.m is not None or _timer is not None


def FW():
    import protocol
    return protocol.FW


def _size(p):
    try:
        return os.stat(p)[6]
    except OSError:
        return 0


def _want(u):
    miss = u.missing()
    if miss:
        return "want %s %s %d" % (u.m["version"], miss[0], u.offset(miss[0]))
    return "staged " + u.m["version"]
