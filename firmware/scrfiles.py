# What the screen reads from flash and from configs, loaded by firmware/display.py only for that and
# dropped after (no heap kept between uses): the provisioned QR bitmap, and the price and promotion
# lines of the signed config (docs/protocol.md, Config).
import json
import framebuf
import protocol

_MAX = 24                       # longest line a config may bring


def lines(m, key):
    """(price, promo) from a parsed config `m` when its screen signature `ssig` holds over cab, ver and
    both lines (printable ASCII, at most 24 characters each); None when it carries no lines or they
    don't hold. The config itself (timing signature, cabinet, version) is the cabinet's check, first."""
    try:
        p, q = m["price"], m["promo"]
        canon = protocol.canonical("screen", (m["cab"], m["ver"], p, q))
        if not protocol.equal(protocol.sign(key, canon), m["ssig"]):
            return None
        for t in (p, q):
            if len(t) > _MAX:
                return None
            for c in t:
                if not " " <= c <= "~":
                    return None
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return p, q


def take(s, payload):
    """Screen `s`: a config its cabinet just applied (payload), or None for the attract screen (the lines
    kept in cfg.json with the config in effect). Lines that hold replace the ones shown (an empty price keeps
    the price line; an empty promotion: none on now) and are kept with the config."""
    cab = s.app.cabinet
    c = cab.cfg
    got = None
    try:
        if payload is None:
            with open(cab.journal.root + "cfg.json") as f:
                m = json.load(f)
            if m.get("ver") == c["ver"] and isinstance(m.get("price"), str) and isinstance(m.get("promo"), str):
                got = m["price"], m["promo"]
        else:
            got = lines(json.loads(payload), cab.key)
    except (OSError, ValueError, AttributeError):
        pass
    if got is None:
        return
    c["price"], c["promo"] = got
    if payload is not None:
        cab.journal.save_cfg(c)       # kept with the config's version (and across test pulses)
    p = got[0][:40] or s.price
    q = got[1][:40]
    if (p, q) != (s.price, s.promo):
        s.price, s.promo = p, q
        s.shown = None                # drawn again at the next update


def qr(s, side):
    """Screen `s`'s provisioned QR as a framebuffer, or None (and the reason in `s.error`). A binary
    PBM, whose rows are framebuf's MONO_HLSB layout, at most `side` (the QR box's) pixels."""
    if s.app is not None:
        take(s, None)                 # the attract screen: with the lines of the config in effect
    name = s.qr
    if not name:
        return None
    try:
        with open(s.root + name, "rb") as f:
            ok = f.readline() == b"P4\n"
            dims = f.readline().split()
            n = int(dims[0])
            ok = ok and len(dims) == 2 and n == int(dims[1]) and 0 < n <= side
            data = bytearray(f.read(((n + 7) // 8) * n + 1)) if ok else b""
        if not ok or len(data) != ((n + 7) // 8) * n:
            raise ValueError
    except (OSError, ValueError, IndexError):
        s.error = "qr: %s is missing or not a square binary PBM of at most %d px" % (name, side)
        s.qr = None
        return None
    s.qn = n
    return framebuf.FrameBuffer(data, n, n, framebuf.MONO_HLSB)
