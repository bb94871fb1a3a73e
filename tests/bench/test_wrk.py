"""``bench._wrk``: wrk's closing report is read right, and the pool holds new signed deliveries."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench._wrk import parse, write_pool
from bench.webhook_ingest import SECRET, Deliveries
from workflows.nylas.webhooks import sign

# Printed by wrk 4.1.0 (Debian) with --latency and bench/wrk_replay.lua, against the bare server.
CLEAN = """\
Running 2s test @ http://127.0.0.1:8081/nylas/webhook
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    10.22ms    3.38ms  24.92ms   73.82%
    Req/Sec     3.13k   672.77     4.80k    75.00%
  Latency Distribution
     50%    9.81ms
     75%   12.55ms
     90%   14.30ms
     99%   19.58ms
  6306 requests in 2.03s, 683.56KB read
Requests/sec:   3108.58
Transfer/sec:    336.97KB
replay: sent 6338 pool 30000 requests 6306 non_2xx 0 connect 0 read 0 write 0 timeout 0
"""

# The same against a path that answers 404, with the server stopped halfway through.
FAILING = """\
Running 3s test @ http://127.0.0.1:8081/nope
  1 threads and 8 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.21ms    2.34ms  22.93ms   90.51%
    Req/Sec     3.44k     1.93k    6.35k    63.64%
  Latency Distribution
     50%    1.46ms
     75%    1.98ms
     90%    4.33ms
     99%   14.13ms
  3793 requests in 3.04s, 644.51KB read
  Socket errors: connect 0, read 8, write 26743, timeout 0
  Non-2xx or 3xx responses: 3793
Requests/sec:   1249.18
Transfer/sec:    212.26KB
replay: sent 30545 pool 30000 requests 3793 non_2xx 3793 connect 0 read 8 write 26743 timeout 0
"""


def test_a_clean_report_gives_the_rate_the_latencies_and_what_was_left_unanswered() -> None:
    report = parse(CLEAN)

    assert (report.requests, report.duration_s, report.requests_per_s) == (6306, 2.03, 3108.58)
    assert report.percentiles_ms == {"50": 9.81, "75": 12.55, "90": 14.3, "99": 19.58}
    assert (report.mean_ms, report.max_ms) == (10.22, 24.92)
    assert (report.non_2xx, report.socket_errors, report.ok) == (0, {}, 6306)
    assert (report.sent, report.pool, report.unanswered, report.pool_ran_out) == (
        6338,
        30000,
        32,
        False,
    )


def test_failures_and_a_pool_that_ran_out_are_read() -> None:
    report = parse(FAILING)

    assert report.non_2xx == 3793 and report.ok == 0
    assert report.socket_errors == {"read": 8, "write": 26743}
    assert report.percentiles_ms["99"] == 14.13
    assert report.pool_ran_out


def test_times_are_read_in_their_unit() -> None:
    # wrk writes a time under 1 ms in microseconds, and one of a second or more in seconds.
    report = parse(CLEAN.replace("9.81ms", "981.00us").replace("24.92ms", "1.50s"))
    assert report.percentiles_ms["50"] == pytest.approx(0.981)
    assert report.max_ms == 1500.0


def test_anything_but_a_report_of_wrk_with_the_replay_script_is_refused() -> None:
    without_script = CLEAN.rsplit("replay:", 1)[0]
    with pytest.raises(ValueError, match="not a report of wrk"):
        parse(without_script)


def test_the_pool_holds_one_signed_new_delivery_a_line(tmp_path: Path) -> None:
    pool = tmp_path / "pool.txt"
    write_pool(pool, 3, Deliveries(SECRET).next)

    lines = pool.read_bytes().splitlines()
    assert len(lines) == 3
    bodies = set()
    for line in lines:
        signature, body = line.split(b" ", 1)
        assert signature.decode() == sign(SECRET, body)
        bodies.add(body)
    assert len(bodies) == 3
