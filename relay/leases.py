"""Per-cabinet leases: several relay processes on one PostgreSQL database, each cabinet's credits
dispatched by exactly one of them at a time (docs/scale.md).

A lease is a row of `cabinet_leases`: (cabinet, holder, token, expires_at). It is taken, renewed and
checked in write transactions under the ledger's write lock, against the DATABASE's clock (hosts'
clocks may differ; the database has one). The token grows by one at every change of holder: it is
the fencing token of that holding.

Bound: a lease lasts ARCADE_LEASE_SECONDS (10 s) and its holder renews it every third of that, so a
relay that dies (SIGKILL, power, partition from the database) loses its cabinets at most 10 s after
its last renewal, and another relay takes each over at the first try after that (it remembers when
the lease it saw expires and tries again then).

Fencing, on the holder's side: a holding is valid, locally, until the monotonic instant taken BEFORE
the transaction that granted or renewed it plus the lease minus a margin. The database's expiry is
at least that late in real time (its clock read the time after ours), so while `valid()` says yes
no other relay can hold the lease. A relay that was paused (SIGSTOP, a long GC, a VM migration) or
cut off from the database finds on waking that its holdings are no longer valid and publishes
nothing for them: the dispatcher asks `valid()` right before every publish and drops the flight of
a lease it lost. Monotonic time runs on while a process is stopped, so a pause past the lease can't
look short. What is left is a publish already handed to the socket when the pause began: the same
signed bytes (same seq, same session) the new holder sends, which the cabinet's journal applies at
most once (docs/protocol.md).
"""
import logging
import secrets
import socket
import time

log = logging.getLogger("arcade.leases")

MIGRATION_NAME = "issue12_cabinet_leases"  # the table comes with this MIGRATIONS entry in relay/ledger.py

DEFAULT_SECONDS = 10.0
MARGIN = 1.0        # seconds of the lease a holder never uses (rate drift, the publish itself)


def default_name():
    """A relay's name when ARCADE_RELAY_NAME is not set: the host's name (one relay per host)."""
    return socket.gethostname() or "relay"


class Leases:
    """The leases this relay process holds. Used from the dispatcher's worker thread only (or under a
    lock of its user's: relay/leadership.py). `table`/`key`: where the rows live; `what`: for logs."""
    table, key, what = "cabinet_leases", "cabinet_id", "cabinet"
    after_loss = "this relay publishes nothing more for it"

    def __init__(self, name, seconds=DEFAULT_SECONDS, clock=time.monotonic):
        if seconds < 3 * MARGIN:
            raise ValueError("ARCADE_LEASE_SECONDS must be at least %.0f" % (3 * MARGIN))
        self.name = name
        # a fresh holder every start: a restarted relay never mistakes its old holdings for its own
        self.holder = "%s/%s" % (name, secrets.token_hex(4))
        self.seconds = float(seconds)
        self.renew_every = self.seconds / 3.0
        self.clock = clock
        self._held = {}         # cabinet id -> (token, valid until (monotonic))
        self._foreign = {}      # cabinet id -> monotonic time its other holder's lease ends (next try)
        self._renewed_at = None
        self.taken = 0          # leases taken (fresh or from another holder), lost: counters for logs/tests
        self.lost = 0

    # -- questions (no database) ----------------------------------------------------------------

    def valid(self, cab):
        """True while this process may publish for `cab` (fencing: see the module's text)."""
        held = self._held.get(cab)
        return held is not None and self.clock() < held[1]

    def token(self, cab):
        held = self._held.get(cab)
        return held[0] if held else None

    def held(self):
        return sorted(self._held)

    def foreign(self, cab):
        """True while another holder's lease on `cab` is known to run (not worth asking the database)."""
        until = self._foreign.get(cab)
        return until is not None and self.clock() < until

    def foreign_now(self):
        """The cabinets another relay is known to hold now."""
        now = self.clock()
        for cab in [c for c, until in self._foreign.items() if until <= now]:
            del self._foreign[cab]      # run out: worth asking the database again
        return set(self._foreign)

    def forget(self, cab):
        """Ask the database at the next acquire() although another holder's lease seemed to run: it
        may have been handed back early (release_all)."""
        self._foreign.pop(cab, None)

    def next_due(self):
        """The monotonic instant the next lease work is due: a renewal or a retry of a foreign lease."""
        due = [self._renewed_at + self.renew_every] if self._renewed_at is not None and self._held else []
        due += [self._foreign[cab] for cab in self.foreign_now()]
        return min(due) if due else None

    # -- database work --------------------------------------------------------------------------

    @staticmethod
    def _db_now(ledger, cur):
        if ledger.backend == "postgresql":
            cur.execute("SELECT EXTRACT(EPOCH FROM clock_timestamp())")
            return float(cur.fetchone()[0])
        return time.time()

    def acquire(self, ledger, cab):
        """Hold `cab`'s lease (already held and valid, free, or expired). True if held now."""
        if self.valid(cab):
            return True
        if self.foreign(cab):
            return False
        start = self.clock()
        with ledger._write() as cur:
            now = self._db_now(ledger, cur)
            cur.execute("SELECT holder, token, expires_at FROM %s WHERE %s = ?" % (self.table, self.key), (cab,))
            row = cur.fetchone()
            if row is None:
                token = 1
                cur.execute("INSERT INTO %s (%s, holder, token, expires_at, taken_at) VALUES (?, ?, ?, ?, ?)"
                            % (self.table, self.key), (cab, self.holder, token, now + self.seconds, now))
            elif row[0] == self.holder and row[1] == self.token(cab) and row[2] > now:
                token = row[1]      # ours, expired only locally (margin): renew it
                cur.execute("UPDATE %s SET expires_at = ? WHERE %s = ? AND token = ?" % (self.table, self.key),
                            (now + self.seconds, cab, token))
            elif row[2] <= now:
                token = int(row[1]) + 1
                cur.execute("UPDATE %s SET holder = ?, token = ?, expires_at = ?, taken_at = ? WHERE %s = ? "
                            "AND token = ?" % (self.table, self.key), (self.holder, token, now + self.seconds, now,
                                                                      cab, row[1]))
            else:
                self._held.pop(cab, None)
                self._foreign[cab] = self.clock() + max(0.0, row[2] - now)
                return False
        self._held[cab] = (token, start + self.seconds - MARGIN)
        self._foreign.pop(cab, None)
        if self._renewed_at is None:
            self._renewed_at = start
        if row is None or row[0] != self.holder:
            self.taken += 1
            log.info("lease on %s %s taken (token %d%s)", self.what, cab, token,
                     ", from %s" % row[0] if row is not None else "")
        return True

    def renew(self, ledger, force=False):
        """Renew every lease held, when due (or `force`). Returns the cabinets whose lease is lost."""
        if not self._held:
            return []
        start = self.clock()
        if not force and self._renewed_at is not None and start < self._renewed_at + self.renew_every:
            return self._drop_invalid()
        lost = []
        try:
            with ledger._write() as cur:
                now = self._db_now(ledger, cur)
                for cab, (token, _) in sorted(self._held.items()):
                    cur.execute("UPDATE %s SET expires_at = ? WHERE %s = ? AND holder = ? AND token = ? AND "
                                "expires_at > ?" % (self.table, self.key), (now + self.seconds, cab, self.holder,
                                                                             token, now))
                    if cur.rowcount != 1:
                        lost.append(cab)
        except Exception:
            # the database is out of reach: the holdings run out on their own (valid() says so)
            return self._drop_invalid()
        self._renewed_at = start
        for cab, (token, _) in list(self._held.items()):
            if cab in lost:
                self._lose(cab, "expired or taken by another relay")
            else:
                self._held[cab] = (token, start + self.seconds - MARGIN)
        return lost

    def _drop_invalid(self):
        gone = [cab for cab in self._held if not self.valid(cab)]
        for cab in gone:
            self._lose(cab, "not renewed in time")
        return gone

    def _lose(self, cab, why):
        self._held.pop(cab, None)
        self.lost += 1
        log.warning("lease on %s %s lost (%s): %s", self.what, cab, why, self.after_loss)

    def release_all(self, ledger):
        """A clean stop: hand every lease back at once (another relay takes over without waiting)."""
        if not self._held:
            return
        try:
            with ledger._write() as cur:
                for cab, (token, _) in self._held.items():
                    cur.execute("UPDATE %s SET expires_at = 0 WHERE %s = ? AND holder = ? AND token = ?"
                                % (self.table, self.key), (cab, self.holder, token))
        except Exception:
            log.warning("could not hand back %d lease(s): they run out within %.0f s", len(self._held),
                        self.seconds)
        self._held.clear()


class RoleLeases(Leases):
    """Leases on relay-wide roles, rows of `relay_leases` (migration issue12_leader_lease): the one role
    is "leader", whose holder reconciles, alerts and refunds (relay/leadership.py). Same rules, bound
    and fencing as a cabinet's lease."""
    table, key, what = "relay_leases", "role", "role"
    after_loss = "this relay runs no relay-wide duty until it holds it again"
