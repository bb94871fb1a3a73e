"""``bench.webhook_ingest``: each target counts at its best level of senders, a failure at any
level breaks the run, and a short run of the throughput phase works end to end, driven by this
process and by wrk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench._wrk import INSTALL_HINT, wrk_path
from bench.webhook_ingest import assess
from tests.bench.running import run_bench


def level(per_s: float, non_2xx: int = 0) -> dict[str, Any]:
    statuses = {"200": 100 - non_2xx, **({"503": non_2xx} if non_2xx else {})}
    return {"deliveries_per_s": per_s, "non_2xx": non_2xx, "statuses": statuses, "errors": {}}


def throughput(bare: dict[int, dict[str, Any]], service: dict[int, dict[str, Any]]) -> Any:
    def best(levels: dict[int, dict[str, Any]]) -> dict[str, Any]:
        top = max(levels, key=lambda c: levels[c]["deliveries_per_s"])
        return {**levels[top], "concurrency": top, "levels": levels}

    check = {
        "accepted": 10,
        "answers_read": 10,
        "told_stored": 10,
        "stored_counter": 10,
        "inbox_rows": 10,
        "stored_ok": True,
        "inbox_by_status": {"pending": 10},
    }
    return {
        "phases": {"throughput": {"bare": best(bare), "service": best(service), "check": check}}
    }


def test_throughput_compares_each_target_at_its_best_level() -> None:
    result = throughput(
        bare={32: level(9000), 64: level(10000)},
        service={32: level(4000), 64: level(5200)},
    )
    goals, broken = assess(result)
    assert goals == {"throughput_ratio": 0.52, "throughput_goal_met": False}
    assert broken == []
    met, _ = assess(throughput(bare={32: level(9000), 64: level(10000)}, service={64: level(6000)}))
    assert met == {"throughput_ratio": 0.6, "throughput_goal_met": True}


def test_a_failure_at_any_level_breaks_the_run() -> None:
    result = throughput(
        bare={32: level(9000)},
        service={32: level(4000, non_2xx=3), 64: level(5200)},  # the best level is clean
    )
    _, broken = assess(result)
    assert len(broken) == 1 and broken[0].startswith("throughput/service/32: non-2xx")


def test_a_pool_that_ran_out_breaks_the_run() -> None:
    ran_out = {**level(5000), "sent": 120, "pool": 100, "pool_ran_out": True}
    result = throughput(bare={32: ran_out}, service={32: level(4000)})
    _, broken = assess(result)
    assert len(broken) == 1 and "from a pool of 100 deliveries, some twice" in broken[0]


def test_a_short_throughput_run_is_sound(tmp_path: Path) -> None:
    figures = tmp_path / "ingest.json"
    done = run_bench(
        *("-m", "bench.webhook_ingest", "--phase", "throughput", "--generator", "python"),
        *("--concurrency", "2,4"),
        *("--duration", "0.5", "--warmup", "0.2", "--drain-timeout", "1"),
        *("--json", str(figures)),
    )
    result = json.loads(figures.read_text())
    assert list(result["phases"]) == ["throughput"]
    phase = result["phases"]["throughput"]
    for target in ("bare", "service"):
        levels = phase[target]["levels"]
        assert sorted(levels) == ["2", "4"]
        best = max(levels.values(), key=lambda f: f["deliveries_per_s"])
        assert phase[target]["deliveries_per_s"] == best["deliveries_per_s"] > 0
    assert phase["check"]["stored_ok"]
    assert set(result["goals"]) == {"throughput_ratio", "throughput_goal_met"}
    assert "by senders:" in done.stdout


@pytest.mark.skipif(wrk_path() is None, reason=f"{INSTALL_HINT} (.ci/run installs it)")
def test_a_short_throughput_run_with_wrk_is_sound(tmp_path: Path) -> None:
    figures = tmp_path / "ingest.json"
    done = run_bench(
        *("-m", "bench.webhook_ingest", "--phase", "throughput", "--generator", "wrk"),
        *("--concurrency", "4", "--duration", "1", "--warmup", "0", "--drain-timeout", "1"),
        *("--wrk-max-rate", "40000", "--json", str(figures)),
    )
    result = json.loads(figures.read_text())
    phase = result["phases"]["throughput"]
    assert phase["generator"] == "wrk"
    for target in ("bare", "service"):
        figures_4 = phase[target]["levels"]["4"]
        assert figures_4["deliveries_per_s"] > 0 and figures_4["p99_ms"] > 0
        assert figures_4["sent"] >= figures_4["deliveries"] and not figures_4["pool_ran_out"]
    check = phase["check"]
    assert check["stored_ok"]
    assert check["accepted"] == phase["service"]["levels"]["4"]["deliveries"]
    assert check["accepted"] <= check["stored_counter"] <= check["accepted"] + check["unanswered"]
    assert "load generator: wrk -t 1" in done.stdout and "run: sound" in done.stdout
