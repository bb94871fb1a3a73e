"""``bench.storm``: the rates it reports, and a ``--quick`` run end to end as a smoke test."""

from __future__ import annotations

import json
from pathlib import Path

from bench.storm import Snapshot, rates
from tests.bench.running import run_bench


def test_processing_is_counted_from_the_first_and_from_the_last_delivery() -> None:
    before = Snapshot(at=0.0)
    at_last = Snapshot(at=10.0, cases=300)
    stored = Snapshot(at=30.0, cases=1000)

    got = rates(
        100.0, 1000, start=0.0, last_answer=10.0, before=before, at_last=at_last, stored=stored
    )

    assert got == {
        "scheduled_per_s": 100.0,
        "arrival_per_s": 100.0,
        "processing_from_first_per_s": 33.3,
        "processing_after_last_per_s": 35.0,
    }
    unfinished = rates(
        100.0, 1000, start=0.0, last_answer=10.0, before=before, at_last=at_last, stored=None
    )
    assert unfinished["processing_from_first_per_s"] is None
    assert unfinished["processing_after_last_per_s"] is None


def test_quick_storm_reports_arrival_beside_processing(tmp_path: Path) -> None:
    figures = tmp_path / "storm.json"
    done = run_bench("-m", "bench.storm", "--quick", "--json", str(figures), timeout=300)
    result = json.loads(figures.read_text())
    assert result["broken"] == []
    r = result["rates"]
    assert r["scheduled_per_s"] == 100.0  # 500 deliveries in 5 s
    assert r["arrival_per_s"] > 0
    assert r["processing_from_first_per_s"] > 0 and r["processing_after_last_per_s"] > 0
    assert result["at_all_stored"]["outbox_pending"] >= 0
    assert "cases/s stored from the first delivery" in done.stdout
    assert "Slack messages still due" in done.stdout
