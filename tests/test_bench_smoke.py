"""The benchmark code works (a tiny run): bulk_fill keeps the ledger usable; a small bench run of
both designs produces every figure. No timing is asserted."""
import json
from pathlib import Path

import pytest

from relay.ledger import open_ledger
from tools.commands import bench as bench_cmd
from tools.lab import bench

ROOT = Path(__file__).resolve().parents[1]


def test_bulk_fill_grows_the_ledger_and_sequences_continue(tmp_path):
    db = tmp_path / "arcade.db"
    with open_ledger(str(db)) as ledger:
        ledger.add_cabinet("cab1", price_cents=100)
    assert bench.bulk_fill(db, 1200, chunk=500, progress=False) == 1200
    assert bench.bulk_fill(db, 1500, chunk=500, progress=False) == 300
    assert bench.bulk_fill(db, 1000, progress=False) == 0, "already bigger: nothing added"
    with open_ledger(str(db)) as ledger:
        assert ledger.count_pending() == 0
        assert [p["state"] for p in ledger.list_payments(limit=3)] == ["applied"] * 3
        assert ledger.get_cabinet("fill-0")["next_seq"] == 1501
        # the relay's own path still works on the filled ledger, and the filler's seqs continue
        assert ledger.record_checkout("evt_a", "checkout.session.completed", "cs_a", "credit", "cab1", 100,
                                      "usd", 1, 1) == "queued"
        assert ledger.get_payment("cs_a")["seq"] == 1
        assert ledger.record_checkout("evt_b", "checkout.session.completed", "cs_b", "credit", "fill-0", 100,
                                      "usd", 1, 1) == "queued"
        assert ledger.get_payment("cs_b")["seq"] == 1501


def test_percentile_nearest_rank():
    values = list(range(1, 101))
    assert (bench.pct(values, 50), bench.pct(values, 95), bench.pct(values, 99)) == (50, 95, 99)
    assert bench.pct([], 50) is None


@pytest.mark.skipif(not (ROOT / "build/umqtt/umqtt/simple.py").exists(), reason="make umqtt first")
def test_tiny_bench_run_reports_every_figure(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = bench_cmd.main(["--payments", "4", "--cabinets", "2", "--webhooks", "20", "--senders", "2", "--queued", "2",
                     "--ledger-sizes", "200", "--growth-webhooks", "5", "--pulse-ms", "20", "--gap-ms", "20",
                     "--dir", str(tmp_path / "work"), "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    for name in ("relay", "naive"):
        r = result[name]
        assert r["edge_ms"]["n"] == 4 and r["edge_ms"]["p50"] is not None
        assert r["throughput_ok"] == 20 and r["webhooks_per_s"] > 0
        assert r["rss_mib"] > 0
    assert result["relay"]["reconnect_delivered"] == 2, "the relay delivers what was queued while offline"
    assert result["relay"]["broker_restart_lost"] == 0
    assert result["growth"][0]["ledger_payments"] >= 200
    assert "webhook -> first coin edge p50" in capsys.readouterr().out
