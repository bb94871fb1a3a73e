"""``bench.faults``: its checks can fail, its sender retries as Nylas does, and ``--quick`` runs.

The long runs take minutes each and are run by hand (see ``bench/faults.py``); here one
scenario runs in its ``--quick`` form, end to end, as a smoke test.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web

from bench._faults import (
    Outcome,
    Sender,
    compare_threads,
    parent_posts,
    posted_twice,
    v3_delivery,
)
from tests.bench.running import run_bench
from tests.fakes._loopback import serve


def test_a_thread_line_lost_repeated_or_out_of_order_is_caught() -> None:
    written = {"case 1": ["Acknowledged.", "Snoozed.", "Resolved."], "case 2": ["a", "b"]}

    assert compare_threads(written, written).__dict__ == {
        "written": 5,
        "arrived": 5,
        "missing": [],
        "repeated": [],
        "out_of_order": [],
    }
    found = compare_threads(
        written, {"case 1": ["Snoozed.", "Acknowledged.", "Acknowledged."], "case 2": ["a"]}
    )
    assert found.missing == ["case 1: Resolved.", "case 2: b"]
    assert found.repeated == ["case 1: Acknowledged."]
    assert found.out_of_order == ["case 1"]


def test_a_parent_message_posted_twice_is_caught_by_its_metadata() -> None:
    def parent(ts: str, **payload: int) -> dict[str, object]:
        return {"ts": ts, "metadata": {"event_type": "x", "event_payload": payload}}

    messages = {
        ("C1", "1.1"): parent("1.1", case_id=1),
        ("C1", "1.2"): parent("1.2", case_id=2),
        ("C1", "1.3"): {"ts": "1.3", "thread_ts": "1.1", "text": "a line"},
        ("C2", "1.4"): parent("1.4", incident_id=1),
        ("C1", "1.5"): parent("1.5", case_id=1),
    }

    posts = parent_posts(messages)

    assert posts == {"case 1": ["1.1", "1.5"], "case 2": ["1.2"], "incident 1": ["1.4"]}
    assert posted_twice(posts) == ["case 1"]


def test_one_failed_check_makes_the_scenario_unsound() -> None:
    outcome = Outcome("sigkill", "SQLite")
    outcome.expect("parent messages posted twice", 0)
    assert outcome.sound
    outcome.expect("deliveries lost", 3)
    assert not outcome.sound
    assert outcome.as_dict()["checks"][1] == {
        "what": "deliveries lost",
        "got": 3,
        "want": 0,
        "ok": False,
    }


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[str, list[int]]]:
    """A webhook endpoint answering 503, 503, then 200 to each delivery (401 to a bad one)."""
    answered: list[int] = []

    async def receive(request: web.Request) -> web.Response:
        if request.headers.get("X-Nylas-Signature") == "bad":
            answered.append(401)
            return web.json_response({}, status=401)
        status = 503 if len(answered) % 3 < 2 else 200
        answered.append(status)
        return web.json_response({}, status=status, headers={"Retry-After": "30"})

    app = web.Application()
    app.router.add_post("/nylas/webhook", receive)
    runner, root = await serve(app)
    yield root + "/nylas/webhook", answered
    await runner.cleanup()


async def test_the_sender_retries_a_503_and_gives_up_on_a_refusal(
    flaky: tuple[str, list[int]],
) -> None:
    url, answered = flaky
    good = v3_delivery("s", "grant.expired", grant_id="g-1", email="a@b.c", at=datetime.now(UTC))
    bad = v3_delivery("s", "grant.expired", grant_id="g-2", email="d@b.c", at=datetime.now(UTC))
    bad.headers["X-Nylas-Signature"] = "bad"
    async with Sender(first_retry=0.01, max_retry=0.05) as sender:
        sender.target = url
        await sender.deliver_now([good])
        await sender.deliver_now([bad])

    assert (good.attempts, good.acked_at is not None, good.rejected) == (3, True, None)
    assert (bad.attempts, bad.acked_at, bad.rejected) == (1, None, "401")
    assert answered == [503, 503, 200, 401]
    assert sender.outcomes() == {"503": 2, "200": 1, "401": 1}
    assert good.key.startswith("v3:")


def test_quick_sigkill_run_is_sound(tmp_path: Path) -> None:
    figures = tmp_path / "faults.json"
    done = run_bench(
        "-m", "bench.faults", "--quick", "--scenario", "sigkill", "--json", str(figures)
    )
    (scenario,) = json.loads(figures.read_text())["scenarios"]
    assert scenario["scenario"] == "sigkill" and scenario["sound"]
    assert len(scenario["figures"]["kills"]) == 2
    assert scenario["figures"]["slack"]["posted_twice"] == []
    assert "run: sound" in done.stdout
