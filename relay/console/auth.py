"""Operator sign-in: argon2 password hashes, a login throttle, and the session guard.

Hashes are argon2id through argon2-cffi (a maintained slow, salted hash). An unknown name costs the
same hash verification as a wrong password, so timing does not tell which names exist. Failed
sign-ins are counted per client address and per name in a bounded window: past the limit the
console answers 429 without checking the password at all.
"""
import collections
import threading
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_PASSWORD = 10
MAX_PASSWORD = 1024
_hasher = PasswordHasher()
_DUMMY = _hasher.hash("not a password of anyone's")


class PasswordRefused(ValueError):
    pass


def hash_password(password):
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise PasswordRefused("the password must have at least %d characters" % MIN_PASSWORD)
    if len(password) > MAX_PASSWORD:
        raise PasswordRefused("the password must have at most %d characters" % MAX_PASSWORD)
    return _hasher.hash(password)


def check_password(stored_hash, password):
    """True when `password` matches; an unknown operator (stored_hash None) costs the same work."""
    if not isinstance(password, str) or len(password) > MAX_PASSWORD:
        password = ""
    try:
        return _hasher.verify(stored_hash or _DUMMY, password) and stored_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash):
    return _hasher.check_needs_rehash(stored_hash)


class Throttle:
    """At most `limit` failures per `window` seconds per key; at most `max_keys` keys remembered
    (the oldest forgotten first), so a flood of addresses cannot grow memory without bound."""

    def __init__(self, limit=5, window=900.0, max_keys=10000, clock=time.monotonic):
        self.limit, self.window, self.max_keys, self.clock = limit, window, max_keys, clock
        self._fails = collections.OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key, now):
        stamps = self._fails.get(key)
        if stamps is None:
            return None
        while stamps and stamps[0] <= now - self.window:
            stamps.popleft()
        return stamps

    def retry_after(self, *keys):
        """Seconds to wait when any key is over the limit, else 0."""
        now = self.clock()
        with self._lock:
            wait = 0.0
            for key in keys:
                stamps = self._recent(key, now)
                if stamps is not None and len(stamps) >= self.limit:
                    wait = max(wait, stamps[0] + self.window - now)
            return wait

    def fail(self, *keys):
        now = self.clock()
        with self._lock:
            for key in keys:
                stamps = self._fails.pop(key, None) or collections.deque(maxlen=self.limit)
                stamps.append(now)
                self._fails[key] = stamps
            while len(self._fails) > self.max_keys:
                self._fails.popitem(last=False)

    def clear(self, key):
        with self._lock:
            self._fails.pop(key, None)
