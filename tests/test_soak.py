"""A short soak (real relay, mosquitto, simulated cabinets, every fault kind) and the books checker."""
from pathlib import Path

import pytest

from relay.ledger import open_ledger
from tools.lab.soak import KINDS, Soak

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (ROOT / "build/umqtt/umqtt/simple.py").exists(),
                                reason="pinned umqtt.simple not fetched (make umqtt)")


def test_short_soak_every_fault_kind_books_balance(tmp_path):
    soak = Soak(tmp_path / "soak", payments=60, cabinets=4, seed=20251126, rate=4.0, fault_gap=(1.0, 2.0),
                log=lambda msg: None)
    r = soak.run(settle_timeout=90)
    fired = {k for k, name in KINDS.items() if r["faults"].get(name)}
    assert fired == set(soak.kinds) and {1, 2, 3, 4} <= fired, r["fault_log"]
    assert not [f for f in r["fault_log"] if f["what"].startswith("FAILED")], r["fault_log"]
    assert r["settled"] and r["not_final"] == 0 and r["unaccepted"] == 0 and r["not_in_ledger"] == 0, r["states"]
    assert (r["lost"], r["doubled"], r["out_of_order"]) == (0, 0, 0), r["per_cabinet"]
    assert r["accepted"] == r["payments"] >= 60
    assert r["pulses_distinct"] + r["cut_mid_pulse"] == r["expected_pulses"] > 0
    assert r["balanced"]


def _books(tmp_path, pulses_seen):
    """The checker alone: one cabinet, one paid payment of 3 pulses, pin lines as given."""
    soak = Soak(tmp_path / "books", payments=1, cabinets=1, seed=1, rate=1.0, fault_gap=(1.0, 1.0))
    cab = soak.cabs[0]
    soak.coins[cab] = 1
    with open_ledger(str(soak.db)) as ledger:
        ledger.add_cabinet(cab, price_cents=100, bundles=[(3, 250)])
        assert ledger.record_checkout("evt_1", "checkout.session.completed", "cs_1", "credit", cab, 250, "usd",
                                      3, 3) == "queued"
    soak.sent["cs_1"] = (cab, 250)
    soak.history[cab] = [{"event": "pulse", "session": s, "n": n, "seq": 1} for s, n in pulses_seen]
    return soak.books()


@pytest.mark.parametrize("seen, lost, doubled", [
    ([("cs_1", 1), ("cs_1", 2), ("cs_1", 3)], 0, 0),
    ([("cs_1", 1), ("cs_1", 3)], 1, 0),                              # a pulse missing
    ([("cs_1", 1), ("cs_1", 2), ("cs_1", 3), ("cs_1", 1)], 0, 1),    # the credit's first pulse again
    ([("cs_1", 1), ("cs_1", 2), ("cs_1", 3), ("cs_x", 1)], 0, 1),    # a pulse nobody paid for
])
def test_books_find_lost_and_doubled_pulses(tmp_path, seen, lost, doubled):
    r = _books(tmp_path, seen)
    assert (r["lost"], r["doubled"]) == (lost, doubled)
    assert r["not_final"] == 1, "the payment was never acked: not in a final state"
