"""bench.fuzz_routes runs as the README says and finds nothing in a short run."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bench.running import run_bench


def test_a_short_fuzz_run_finds_no_5xx_and_no_foreign_log_line(tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    done = run_bench("-m", "bench.fuzz_routes", "--requests", "150", "--json", str(out))
    assert "verdict: PASS" in done.stdout
    report = json.loads(out.read_text())
    assert report["requests_per_route"] == 150
    assert sum(report["responses_5xx"].values()) == 0
    assert report["foreign_log_lines"] == 0
    # Every kind of request was sent, signed and not.
    routes = report["statuses"]
    for route in ("POST /slack/events", "POST /nylas/webhook", "GET /nylas/webhook", "raw HTTP"):
        assert sum(routes[route].values()) == 150
    assert sum(routes["POST /slack/events (signed)"].values()) > 30
    assert sum(routes["POST /nylas/webhook (signed)"].values()) > 30
