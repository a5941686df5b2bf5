"""Leadership: which relay runs the relay-wide duties (reconciliation with Stripe, relay/reconcile.py;
alerts, relay/alerts.py; automatic refunds, relay/autorefund.py) when several relays share one
PostgreSQL database (docs/scale.md, "Leadership").

The leader is the holder of the lease on the role "leader": a row of `relay_leases` taken, renewed
and fenced like a cabinet's lease (relay/leases.py, RoleLeases: the database's clock, a fencing token
that grows at every change of holder, ARCADE_LEASE_SECONDS). Every relay tries to take it at start and
then every third of the lease while it stands by; the holder renews it every third of the lease.

Bound: a leader that dies (SIGKILL, power) or is cut off from the database renews no more; its lease
ends at most ARCADE_LEASE_SECONDS (10 s) after its last renewal, and a standby asks again at the
instant the lease it saw runs out (then every third of the lease), so the duties move within
ARCADE_LEASE_SECONDS of the loss plus a round trip to the database. A leader that stops cleanly hands
the lease back: a standby takes it within a third of the lease. The new leader starts the duties at
once: a reconciliation pass and a refund check right away, the first alert check ARCADE_ALERT_EVERY
later.

Fencing: before every run of a duty, its thread asks check() (relay/periodic.py's gate). check()
renews the lease in the database (unless this relay's leadership thread is talking to the database
for it right then: it never waits) and answers with valid(): true only while, by this process's
monotonic clock, no other relay can hold the lease. A relay paused past its lease (SIGSTOP, a VM
migration) or cut off from the database skips the run, and its leadership thread, on its next step,
learns the lease is lost and stops the duties. A run already under way when the lease runs out
finishes; each duty is safe when two relays run it at once (docs/scale.md says why for each).

SQLite keeps one dispatcher per database under a file lock: that process runs the duties for as long
as it runs (Fixed).
"""
import logging
import threading
import time

from relay import leases
from relay.ledger import StorageError, open_ledger
from relay.periodic import Job

log = logging.getLogger("arcade.leadership")
ROLE = "leader"
MIN_WAIT = 0.05


class Fixed:
    """The duties of the one process holding a SQLite database's dispatcher lock: started now, for good."""
    leader = True

    def __init__(self, app, starters):
        self.jobs = [job for job in (start(app) for start in starters) if job is not None]

    def describe(self):
        return "this relay (the database's dispatcher lock)"

    def stop(self):
        for job in self.jobs:
            job.stop()
        self.jobs = []


class Leadership(Job):
    """Takes and keeps the leader lease in a thread of its own, and runs the duties while it holds it.

    `starters`: callables app -> started periodic.Job or None (the duty is off), called at every
    takeover with app.extensions["arcade"]["gate"] set to check(), the fence each duty asks."""

    thread_name = "arcade-leadership"
    first_now = False       # start() takes the first step itself

    def __init__(self, app, starters, name, seconds=leases.DEFAULT_SECONDS, clock=time.monotonic):
        self.app = app
        self.starters = list(starters)
        self.lease = leases.RoleLeases(name, seconds, clock)
        super().__init__(self.lease.renew_every)
        self.clock = clock
        self.jobs = []
        self.running = False        # the duties are started (self.jobs: those not off)
        self.taken = 0              # times this relay took the lease and started the duties (tests)
        self.skipped = 0            # runs of a duty the fence refused
        self._lock = threading.Lock()   # the lease: this relay's leadership thread and the duties' gates

    @property
    def leader(self):
        return self.lease.valid(ROLE)

    @property
    def token(self):
        return self.lease.token(ROLE) if self.leader else None

    def _ledger_do(self, what):
        """what(ledger) on a ledger of its own; None when the database can't be reached."""
        cfg = self.app.config
        try:
            with open_ledger(cfg["ARCADE_DB"], cfg.get("ARCADE_DB_BUSY_TIMEOUT", 5000)) as ledger:
                return what(ledger)
        except StorageError as e:
            log.warning("leader lease: database: %s", e)
            return None

    # -- the fence ----------------------------------------------------------------------------

    def check(self, duty="a duty"):
        """True while this relay holds a valid leader lease; asked before every run of a duty."""
        if self._lock.acquire(blocking=False):
            try:
                if self.lease.valid(ROLE):
                    self._ledger_do(lambda ledger: self.lease.renew(ledger, force=True))
            finally:
                self._lock.release()
        if self.lease.valid(ROLE):
            return True
        self.skipped += 1
        log.warning("%s: not run: this relay does not hold the leader lease (any more)", duty)
        return False

    # -- the thread ---------------------------------------------------------------------------

    def step(self):
        """Renew, take or notice the loss of the lease; start or stop the duties to match."""
        with self._lock:
            if self.lease.held():
                self._ledger_do(self.lease.renew)       # when due; a loss is logged by the lease
            if not self.lease.valid(ROLE):
                self.lease.forget(ROLE)                 # ask the database: the holder may have handed it back
                self._ledger_do(lambda ledger: self.lease.acquire(ledger, ROLE))
            leading = self.lease.valid(ROLE)
        if leading and not self.running:
            self._start_duties()
        elif not leading and self.running:
            self._stop_duties()
        return leading

    def _start_duties(self):
        self.running = True
        self.taken += 1
        self.app.extensions["arcade"]["gate"] = self.check
        for start in self.starters:
            try:
                job = start(self.app)
            except Exception:
                log.exception("leader: a duty failed to start")
                continue
            if job is not None:
                self.jobs.append(job)
        log.warning("leader: this relay now holds the leader lease (token %s) and runs %s", self.token,
                    ", ".join(job.thread_name for job in self.jobs) or "no duty (all off)")

    def _stop_duties(self, timeout=0.0, why="lease lost"):
        names = ", ".join(job.thread_name for job in self.jobs)
        for job in self.jobs:
            job.stop(timeout)       # a run under way finishes (each duty is safe twice at once)
        self.jobs = []
        self.running = False
        (log.warning if why == "lease lost" else log.info)("leader: %s: this relay stops %s", why, names)

    def _wait(self):
        due = self.lease.next_due()
        every = self.lease.renew_every
        return every if due is None else min(every, max(MIN_WAIT, due - self.clock()))

    def run_once(self):
        self.step()

    def start(self):
        self.step()         # a first answer now, for the start line
        return super().start()

    def stop(self, timeout=10.0):
        """A clean stop: the duties stop, and the lease is handed back (a standby takes it at once)."""
        super().stop(timeout)
        if self.running:
            self._stop_duties(timeout, why="stopping")
        with self._lock:
            self._ledger_do(self.lease.release_all)

    def describe(self):
        if self.leader:
            return "this relay (lease token %s, as %s)" % (self.token, self.lease.name)
        return "another relay; %s stands by (takes over within %.0f s of the leader's loss)" % (
            self.lease.name, self.lease.seconds)


def start_for_app(app, dispatcher, starters):
    """Run `starters` (the relay-wide duties) in the right process: with PostgreSQL, whichever relay holds
    the leader lease now and later; with SQLite, the one process running the dispatcher. Returns the
    Leadership/Fixed (also app.extensions["arcade"]["leadership"], for /healthz), or None."""
    if dispatcher is None:
        return None
    if dispatcher.leases is None:
        lead = Fixed(app, starters) if dispatcher.leader else None
    else:
        cfg = app.config
        lead = Leadership(app, starters, cfg.get("ARCADE_RELAY_NAME") or leases.default_name(),
                          float(cfg.get("ARCADE_LEASE_SECONDS") or leases.DEFAULT_SECONDS)).start()
    app.extensions["arcade"]["leadership"] = lead
    return lead
