# The checks config.py and boardcheck.py share: one ConfigError naming the key and what is expected.
# Secrets and passwords never appear in a message (show=False).
import json


class ConfigError(Exception):
    pass


def bad(src, key, expected, value=None, show=True):
    got = ""
    if show:
        got = ", got %s" % (json.dumps(value) if value is not None else "nothing")
    return ConfigError("%s: '%s' must be %s%s" % (src, key, expected, got))


def string(d, src, key, lo, hi, show=True):
    v = d.get(key)
    if not isinstance(v, str) or not lo <= len(v) <= hi:
        raise bad(src, key, "a string of %d to %d characters" % (lo, hi), v, show)
    return v


def integer(d, src, key, lo, hi):
    v = d.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise bad(src, key, "an integer from %d to %d" % (lo, hi), v)
    return v
