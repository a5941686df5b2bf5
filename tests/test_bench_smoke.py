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


def test_median_and_spread_over_repetitions():
    reps = [{"a": 3.0, "b": None}, {"a": 1.0}, {"a": 2.0, "b": 5}]
    assert bench.summarize(reps) == {"a": {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3},
                                     "b": {"median": 5, "min": 5, "max": 5, "n": 1}}
    assert bench.median([4, 1, 3, 2]) == 2.5


def test_the_docs_table_is_what_the_committed_json_renders():
    """docs/benchmarks.md's figures are generated (`arcade bench --write-docs`), never typed: its
    marked region must equal what the generator renders from docs/bench/latest.json."""
    result = json.loads((ROOT / "docs/bench/latest.json").read_text())
    region = bench.docs_region((ROOT / "docs/benchmarks.md").read_text())
    assert region is not None, "docs/benchmarks.md lost its bench:begin / bench:end markers"
    assert region == bench.render(result), ("docs/benchmarks.md's table differs from docs/bench/latest.json: "
                                           "regenerate it with `arcade bench --render-docs`, never by hand")
    assert result["options"]["repeat"] >= 3 and result["options"]["warmup"] > 0
    for name in ("relay", "naive", "relay-postgresql", "relay-postgresql-3"):
        assert result["designs"][name]["summary"]["webhooks_per_s"]["n"] >= 3


def test_write_docs_replaces_only_the_region_and_a_hand_edit_is_caught(tmp_path):
    result = json.loads((ROOT / "docs/bench/latest.json").read_text())
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Title\n\nprose before\n\n%s\nold table\n%s\n\nprose after\n" % (bench.BEGIN, bench.END))
    bench.write_docs(result, doc)
    text = doc.read_text()
    assert text.startswith("# Title\n\nprose before\n\n") and text.endswith("\n\nprose after\n")
    assert "old table" not in text and bench.docs_region(text) == bench.render(result)
    # one figure typed by hand: no longer what the JSON renders
    fig = result["designs"]["relay"]["summary"]["webhooks_per_s"]
    edited = text.replace(bench.cell(result["designs"]["relay"], "webhooks_per_s", "/s"),
                          "{:,} ({:,}–{:,})".format(int(fig["median"]) + 100, int(fig["min"]), int(fig["max"])), 1)
    assert edited != text and bench.docs_region(edited) != bench.render(result)
    (tmp_path / "nothing.md").write_text("no markers\n")
    with pytest.raises(RuntimeError, match="region"):
        bench.write_docs(result, tmp_path / "nothing.md")


@pytest.mark.skipif(not (ROOT / "build/umqtt/umqtt/simple.py").exists(), reason="make umqtt first")
def test_tiny_bench_run_reports_every_figure(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = bench_cmd.main(["--payments", "4", "--cabinets", "2", "--webhooks", "20", "--senders", "2", "--queued", "2",
                         "--repeat", "2", "--warmup", "10", "--profile", "20",
                         "--designs", "relay,naive,relay-postgresql-3,relay-nats-cluster",
                         "--ledger-sizes", "200", "--growth-webhooks", "5", "--pulse-ms", "20", "--gap-ms", "20",
                         "--dir", str(tmp_path / "work"), "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert result["machine"]["cores"] >= 1 and len(result["machine"]["loadavg_start"]) == 3
    assert result["time"] and result["options"]["repeat"] == 2
    assert result["commit"] is None or len(result["commit"]) == 40
    for name in ("relay", "naive", "relay-postgresql-3", "relay-nats-cluster"):
        d = result["designs"][name]
        assert len(d["reps"]) == 2
        s = d["summary"]
        assert s["edge_p50_ms"]["n"] == 2 and s["edge_p50_ms"]["min"] <= s["edge_p50_ms"]["median"] \
            <= s["edge_p50_ms"]["max"]
        assert s["webhooks_per_s"]["min"] > 0
    for name in ("relay", "naive"):
        assert result["designs"][name]["rss_mib"] > 0
    relay = result["designs"]["relay"]["summary"]
    assert relay["reconnect_delivered"]["min"] == 2, "the relay delivers what was queued while offline"
    assert relay["broker_restart_lost"]["max"] == 0
    assert result["growth"][0]["ledger_payments"] >= 200
    assert any("stripe_webhook" in line for line in result["profile"]["lines"])
    printed = capsys.readouterr().out
    assert "webhook → first coin edge p50" in printed and "3 relays behind nginx" in printed and "NATS cluster" in printed
