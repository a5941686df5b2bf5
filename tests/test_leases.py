"""Per-cabinet leases (relay/leases.py) on both backends: one holder at a time, takeover only after
expiry with a new fencing token, and a holder whose lease ran out (by its own monotonic clock, as after
a SIGSTOP) no longer counts it as valid even before it learns from the database."""
import pytest

from relay.leases import MARGIN, Leases
from relay.ledger import open_ledger


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _expire(led, cab):
    """What the passing of the lease's time does in the database (without waiting for it)."""
    with led._write() as cur:
        cur.execute("UPDATE cabinet_leases SET expires_at = 0 WHERE cabinet_id = ?", (cab,))


def _row(led, cab):
    return led._rows("SELECT holder, token FROM cabinet_leases WHERE cabinet_id = ?", (cab,))[0]


@pytest.fixture
def led(ledger_db):
    with open_ledger(ledger_db) as led:
        led.add_cabinet("cab1")
        led.add_cabinet("cab2")
        yield led


def test_one_holder_at_a_time_and_takeover_only_after_expiry_with_a_new_token(led):
    ca, cb = Clock(), Clock()
    a, b = Leases("a", 10, ca), Leases("b", 10, cb)
    assert a.acquire(led, "cab1") and a.valid("cab1") and a.token("cab1") == 1
    assert not b.acquire(led, "cab1") and not b.valid("cab1")
    assert b.foreign("cab1") and b.foreign_now() == {"cab1"}
    assert b.acquire(led, "cab2") and not a.acquire(led, "cab2")
    _expire(led, "cab1")
    cb.t += 11                          # b's memory of a's lease ran out: it asks the database again
    assert b.acquire(led, "cab1") and b.token("cab1") == 2
    assert _row(led, "cab1")["holder"] == b.holder
    # a renews: its lease is gone, it says so and no longer holds it
    assert a.renew(led, force=True) == ["cab1"]
    assert not a.valid("cab1") and a.held() == [] and a.lost == 1
    assert b.renew(led, force=True) == [] and b.held() == ["cab1", "cab2"]


def test_a_paused_holder_fences_itself_by_its_own_clock(led):
    clock = Clock()
    a = Leases("a", 10, clock)
    assert a.acquire(led, "cab1")
    clock.t += 10 - MARGIN - 0.01
    assert a.valid("cab1")
    clock.t += 0.02                     # past the lease minus the margin: no publish, whatever the database says
    assert not a.valid("cab1")
    # the renewal that follows the pause finds the lease run out in the database too: lost
    _expire(led, "cab1")
    assert a.renew(led) == ["cab1"] and a.held() == []


def test_a_holder_whose_lease_still_runs_in_the_database_may_renew_it(led):
    """Ran out locally (the margin) but not in the database: nobody else can have it, renewing is safe."""
    clock = Clock()
    a, b = Leases("a", 10, clock), Leases("b", 10, Clock())
    assert a.acquire(led, "cab1")
    clock.t += 9.5
    assert not a.valid("cab1")
    assert a.renew(led) == [] and a.valid("cab1")
    assert not b.acquire(led, "cab1")


def test_a_renewal_keeps_the_lease_and_pushes_the_local_deadline(led):
    clock = Clock()
    a = Leases("a", 10, clock)
    assert a.acquire(led, "cab1")
    clock.t += 5
    assert a.renew(led) == []           # due (every third of the lease)
    clock.t += 8                        # 13 s after taking it, 8 after the renewal
    assert a.valid("cab1")
    assert a.next_due() == pytest.approx(clock.t - 8 + 10 / 3.0)


def test_a_clean_stop_hands_leases_back_at_once(led):
    a, b = Leases("a", 10, Clock()), Leases("b", 10, Clock())
    assert a.acquire(led, "cab1")
    a.release_all(led)
    assert a.held() == []
    assert b.acquire(led, "cab1") and b.token("cab1") == 2


def test_a_restarted_relay_of_the_same_name_is_another_holder(led):
    first, again = Leases("r1", 10, Clock()), Leases("r1", 10, Clock())
    assert first.holder != again.holder
    assert first.acquire(led, "cab1")
    assert not again.acquire(led, "cab1")   # the old process's lease runs until it expires


def test_a_lease_shorter_than_three_margins_is_refused():
    with pytest.raises(ValueError):
        Leases("a", 2)
