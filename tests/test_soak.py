"""A short soak (real relay, mosquitto, simulated cabinets, every fault kind) and the books checker."""
import re
from pathlib import Path

import pytest

from relay.ledger import open_ledger
from tools.lab.soak import KINDS, Soak, pin_events

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not (ROOT / "build/umqtt/umqtt/simple.py").exists(),
                                reason="pinned umqtt.simple not fetched (make umqtt)")


def test_short_soak_every_fault_kind_books_balance(tmp_path):
    soak = Soak(tmp_path / "soak", payments=60, cabinets=4, seed=20251126, rate=4.0, fault_gap=(1.0, 2.0),
                log=lambda msg: None, quiet=4.0)
    r = soak.run(settle_timeout=90)
    fired = {k for k, name in KINDS.items() if r["faults"].get(name)}
    assert fired == set(soak.kinds) and {1, 2, 3, 4} <= fired, r["fault_log"]
    assert r["faults_failed"] == 0 and not [f for f in r["fault_log"] if f["failed"]], r["fault_log"]
    assert r["settled"] and r["not_final"] == 0 and r["unaccepted"] == 0 and r["not_in_ledger"] == 0, r["states"]
    assert (r["lost"], r["doubled"], r["out_of_order"]) == (0, 0, 0), r["per_cabinet"]
    assert r["accepted"] == r["payments"] >= 60
    assert r["pulses_on_pin"] == r["expected_pulses"] > 0 and r["good_marked_bad"] == 0
    assert r["balanced"]


def test_short_nats_cluster_soak_half_open_links_move_to_another_node(tmp_path):
    """The NATS cluster's half-open fault: each end reaches every node through its own proxy; the one
    it is on goes silent, and it must notice and redial another node. Books balance."""
    soak = Soak(tmp_path / "soak", payments=24, cabinets=3, seed=20261130, rate=4.0, fault_gap=(0.5, 1.0),
                log=lambda msg: None, quiet=4.0, broker="nats-cluster", kinds=[5], nats_ack_wait="2s")
    r = soak.run(settle_timeout=60)
    halfopens = [f for f in r["fault_log"] if f["kind"] == 5]
    assert halfopens and r["faults_failed"] == 0, r["fault_log"]
    for f in halfopens:     # "<who> link to NATS node nX blackholed; redialled (nY) after ..."
        node, redial = re.search(r"node (n\d) blackholed; redialled \(([n\d,]+)\)", f["what"]).groups()
        assert node not in redial.split(","), f
    assert r["settled"] and r["not_final"] == 0 and r["unaccepted"] == 0, r["states"]
    assert (r["lost"], r["doubled"], r["out_of_order"]) == (0, 0, 0), r["per_cabinet"]
    assert r["pulses_on_pin"] == r["expected_pulses"] > 0 and r["balanced"]


def _books(tmp_path, pins, states=None, owed=None):
    """The checker alone: two cabinets, the soak paid cab 0 for one 3-pulse session (cs_1) and cab 1 for
    one 1-pulse session (cs_2); the relay recorded both (states as given); the pins show `pins`."""
    soak = Soak(tmp_path / "books", payments=1, cabinets=2, seed=1, rate=1.0, fault_gap=(1.0, 1.0))
    a, b = soak.cabs
    soak.coins = {a: 1, b: 1}
    states = states or {}
    with open_ledger(soak.db) as ledger:
        for cab in (a, b):
            ledger.add_cabinet(cab, price_cents=100, bundles=[(3, 250)])
        for n, (sid, cab, amount, credits) in enumerate([("cs_1", a, 250, 3), ("cs_2", b, 100, 1)]):
            assert ledger.record_checkout("evt_%d" % n, "checkout.session.completed", sid, "credit", cab, amount,
                                          "usd", credits, credits) == "queued"
            soak.sent[sid] = (cab, amount)
            soak.owed[sid] = (cab, credits)
            seq = ledger.get_payment(sid)["seq"]
            ledger.mark_sent(sid, seq)
            ledger.record_ack(sid, seq, states.get(sid, "applied"), "", credits, seq)
    for cab, lines in zip((a, b), pins):
        soak.history[cab] = [{"event": "boot"}]
        for item in lines:
            if item == "boot":
                soak.history[cab].append({"event": "boot"})
                continue
            kind, session, n = item
            soak.history[cab].append({"event": "pulse_on", "session": session, "n": n})
            if kind == "pulse":
                soak.history[cab].append({"event": "pulse", "session": session, "n": n})
    return soak.books()


def P(session, n):
    return ("pulse", session, n)


def CUT(session, n):
    """The line went active and the process died before it went idle."""
    return ("cut", session, n)


@pytest.mark.parametrize("pins, lost, doubled, cut", [
    ([[P("cs_1", 1), P("cs_1", 2), P("cs_1", 3)], [P("cs_2", 1)]], 0, 0, 0),
    ([[P("cs_1", 1), P("cs_1", 3)], [P("cs_2", 1)]], 1, 0, 0),                             # a pulse missing
    ([[P("cs_1", 1), P("cs_1", 2), P("cs_1", 3), P("cs_1", 1)], [P("cs_2", 1)]], 0, 1, 0),  # first pulse again
    ([[P("cs_1", 1), P("cs_1", 2), P("cs_1", 3), P("cs_x", 1)], [P("cs_2", 1)]], 0, 1, 0),  # nobody paid for it
    # cs_2 was paid at cab 1: its pulse at cab 0 is doubled, and cab 1 lost its pulse
    ([[P("cs_1", 1), P("cs_1", 2), P("cs_1", 3), P("cs_2", 1)], []], 1, 1, 0),
    # a power cut with the line active: that pulse counts once, and is not owed again
    ([[P("cs_1", 1), CUT("cs_1", 2), "boot", P("cs_1", 3)], [P("cs_2", 1)]], 0, 0, 1),
    # a power cut in the gap before pulse 2 (the line idle): if the cabinet then skips it, it is lost
    ([[P("cs_1", 1), "boot", P("cs_1", 3)], [P("cs_2", 1)]], 1, 0, 0),
    # labels that balance but totals that don't: the totals win
    ([[P("cs_1", 1), P("cs_1", 2), P("cs_1", 3), P(None, None)], [P("cs_2", 1)]], 0, 1, 0),
], ids=["balanced", "missing", "repeated", "unpaid session", "another cabinet's session", "cut mid-pulse",
        "cut in the gap", "unlabelled pulse"])
def test_books_find_lost_and_doubled_pulses_from_the_pin(tmp_path, pins, lost, doubled, cut):
    r = _books(tmp_path, pins)
    assert (r["lost"], r["doubled"], r["cut_mid_pulse"]) == (lost, doubled, cut), r["per_cabinet"]
    assert r["expected_pulses"] == 4 and r["not_final"] == 0 and r["good_marked_bad"] == 0


def test_a_good_payment_the_relay_marked_invalid_is_a_failure_even_if_nothing_pulsed(tmp_path):
    r = _books(tmp_path, [[P("cs_1", 1), P("cs_1", 2), P("cs_1", 3)], []], states={"cs_2": "rejected"})
    assert r["good_marked_bad"] == 1 and r["good_marked_bad_sessions"] == ["cs_2"]
    assert r["lost"] == 1, "expected comes from what the soak paid, not from the ledger"


def test_pin_events_close_a_run_at_the_next_boot():
    lines = [{"event": "boot"}, {"event": "pulse_on", "session": "s", "n": 1}, {"event": "pulse", "session": "s", "n": 1},
             {"event": "pulse_on", "session": "s", "n": 2}, {"event": "boot"}, {"event": "pulse_on", "session": "s", "n": 3},
             {"event": "pulse", "session": "s", "n": 3}, {"event": "pulse_on", "test": True},
             {"event": "pulse", "test": True}]
    assert pin_events(lines) == [{"kind": "pulse", "session": "s", "n": 1}, {"kind": "cut", "session": "s", "n": 2},
                                 {"kind": "pulse", "session": "s", "n": 3}]
