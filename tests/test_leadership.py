"""The leader lease (relay/leadership.py) on both backends: one relay runs the relay-wide duties, a
standby takes them over once the leader's lease ran out (with a new fencing token) or was handed back,
and a leader whose lease ran out (by its own monotonic clock, as after a SIGSTOP, or cut off from the
database) runs no duty: the fence every run asks says no. Alerts stay once per incident when two
relays check at the same moment (the brief overlap a takeover allows)."""
import types

import pytest

from relay import alerts
from relay.leadership import ROLE, Leadership
from relay.leases import MARGIN
from relay.ledger import open_ledger
from relay.periodic import Job


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class Duty(Job):
    """A duty that counts its runs; its thread is never started: the test calls _once() as the thread would."""
    thread_name = "arcade-test-duty"

    def __init__(self, gate):
        super().__init__(60)
        self.gate = gate
        self.runs = 0
        self.stopped = False

    def run_once(self):
        self.runs += 1

    def stop(self, timeout=10.0):
        self.stopped = True


def _app(db):
    return types.SimpleNamespace(config={"ARCADE_DB": db}, extensions={"arcade": {}})


def _relay(db, name, clock):
    """A relay's leadership with one duty; returns (leadership, the duties it started so far)."""
    app = _app(db)
    started = []

    def start(app):
        started.append(Duty(app.extensions["arcade"]["gate"]))
        return started[-1]

    return Leadership(app, [start], name, 10, clock), started


def _expire(db):
    """What the passing of the lease's time does in the database (without waiting for it)."""
    with open_ledger(db) as led, led._write() as cur:
        cur.execute("UPDATE relay_leases SET expires_at = 0 WHERE role = ?", (ROLE,))


def _row(db):
    with open_ledger(db) as led:
        return led._rows("SELECT holder, token FROM relay_leases WHERE role = ?", (ROLE,))[0]


def test_one_leader_runs_the_duties_and_a_standby_takes_over_after_expiry_with_a_new_token(ledger_db):
    ca, cb = Clock(), Clock()
    (a, a_duties), (b, b_duties) = _relay(ledger_db, "a", ca), _relay(ledger_db, "b", cb)
    assert a.step() and a.leader and a.token == 1 and len(a_duties) == 1
    assert not b.step() and not b.leader and b_duties == []
    assert "stands by" in b.describe() and "this relay" in a.describe()
    a_duties[0]._once()
    assert a_duties[0].runs == 1
    # a dies: its lease runs out in the database; b takes it with the next token and starts the duties
    _expire(ledger_db)
    cb.t += 11
    assert b.step() and b.token == 2 and _row(ledger_db)["holder"] == b.lease.holder
    b_duties[0]._once()
    assert b_duties[0].runs == 1
    # a comes back (its clock too): the fence refuses the run, and its next step stops the duties
    ca.t += 11
    a_duties[0]._once()
    assert a_duties[0].runs == 1 and a.skipped == 1
    assert not a.step() and a_duties[0].stopped and a.jobs == []
    assert b.check("test") and b.leader


def test_a_paused_leader_fences_itself_by_its_own_clock_even_without_the_database(ledger_db):
    clock = Clock()
    a, duties = _relay(ledger_db, "a", clock)
    assert a.step()
    a._ledger_do = lambda what: None        # cut off from the database: no renewal, no news
    clock.t += 10 - MARGIN - 0.01
    duties[0]._once()
    assert duties[0].runs == 1              # still inside its lease: another relay cannot hold it yet
    clock.t += 0.02                         # past the lease minus the margin: no run, whatever the database says
    duties[0]._once()
    assert duties[0].runs == 1 and a.skipped == 1 and not a.leader
    assert not a.step() and duties[0].stopped


def test_the_fence_renews_the_lease_so_a_run_starts_with_all_of_it(ledger_db):
    clock = Clock()
    a, duties = _relay(ledger_db, "a", clock)
    assert a.step()
    clock.t += 8.5                          # 0.5 s of the lease left: the fence renews it first
    assert a.check("test")
    clock.t += 8.5
    assert a.leader and a.token == 1


def test_with_every_duty_off_the_leader_starts_them_once_not_at_every_step(ledger_db):
    calls = []
    a = Leadership(_app(ledger_db), [lambda app: calls.append(1)], "a", 10, Clock())
    assert a.step() and a.step() and a.step()
    assert calls == [1] and a.taken == 1 and a.jobs == []


def test_a_clean_stop_hands_the_lease_back_and_a_standby_takes_it_at_its_next_step(ledger_db):
    (a, a_duties), (b, _) = _relay(ledger_db, "a", Clock()), _relay(ledger_db, "b", Clock())
    assert a.step() and not b.step()
    a.stop()
    assert a_duties[0].stopped and not a.leader
    assert b.step() and b.token == 2        # no waiting for the lease's end: it was handed back


def test_two_relays_checking_alerts_at_once_send_each_alert_and_its_resolution_once(ledger_db):
    sent = []

    class Channel:
        def __bool__(self):
            return True

        def send(self, subject, text):
            sent.append(subject)
            return 1

    with open_ledger(ledger_db) as led:
        led.record_dispute("dp_1", "needs_response", session_id="cs_1", reason="fraudulent")
        checkers = []
        for _ in range(2):
            alerter = alerts.Alerter({"ARCADE_ALERT_EVERY": "60"}, {}, clock=lambda: 2_000_000_000.0)
            alerter.channels = Channel()
            checkers.append(alerter)
        # the second check finds the incident open: the insert that made it (under the lock) decides who sends
        assert list(checkers[0].conditions(led, 2_000_000_000.0)) == ["dispute:dp_1"]
        said = checkers[0].check(led) + checkers[1].check(led)
        assert [s[0] for s in said] == ["opened"] and len(sent) == 1
        led.record_dispute("dp_1", "won", session_id="cs_1", reason="fraudulent")
        # both read the open incidents before either closes it: the one whose update closed it says so
        seen = led.open_incidents()
        said = checkers[1].check(led) + checkers[0].check(_Stale(led, seen))
        assert [s[0] for s in said] == ["resolved"] and len(sent) == 2 and "RESOLVED" in sent[1]


class _Stale:
    """The ledger as a relay that read the open incidents a moment earlier sees it."""

    def __init__(self, led, incidents):
        self.led, self.incidents = led, incidents

    def open_incidents(self):
        return self.incidents

    def __getattr__(self, name):
        return getattr(self.led, name)
