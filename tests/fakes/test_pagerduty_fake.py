"""The fake PagerDuty Events API v2, driven by plain HTTP requests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.fakes.pagerduty import FakePagerDuty
from tests.waiting import eventually

KEY = "k" * 32


@pytest.fixture
async def pd() -> AsyncIterator[FakePagerDuty]:
    async with FakePagerDuty(routing_key=KEY) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield client


def trigger(dedup_key: str | None = "k1", **payload: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "routing_key": KEY,
        "event_action": "trigger",
        "payload": {"summary": "ann must re-authenticate", "source": "bot", "severity": "error"}
        | payload,
    }
    if dedup_key is not None:
        event["dedup_key"] = dedup_key
    return event


def follow_up(action: str, dedup_key: str = "k1") -> dict[str, Any]:
    return {"routing_key": KEY, "event_action": action, "dedup_key": dedup_key}


async def send(http: httpx.AsyncClient, pd: FakePagerDuty, body: Any) -> httpx.Response:
    return await http.post(f"{pd.url}/v2/enqueue", json=body)


async def test_incident_lifecycle_follows_dedup_key(
    pd: FakePagerDuty, http: httpx.AsyncClient
) -> None:
    answer = await send(http, pd, trigger())
    assert answer.status_code == 202
    assert answer.json() == {"status": "success", "message": "Event processed", "dedup_key": "k1"}
    assert (await send(http, pd, trigger(summary="again"))).status_code == 202
    first = pd.incident("k1")
    assert first is not None
    assert (first.number, first.status, first.summary, first.triggers) == (
        1,
        "triggered",
        "ann must re-authenticate",
        2,
    )

    await send(http, pd, follow_up("acknowledge"))
    await send(http, pd, trigger())
    assert first.status == "acknowledged"
    await send(http, pd, follow_up("resolve"))
    assert first.status == "resolved"
    assert pd.open_incidents() == []

    # Once resolved, follow-ups are dropped and a trigger opens a new incident.
    await send(http, pd, follow_up("acknowledge"))
    assert first.status == "resolved"
    await send(http, pd, trigger())
    second = pd.incident("k1")
    assert second is not None and second is not first
    assert (second.number, second.status) == (2, "triggered")
    assert pd.open_incidents() == [second]
    assert len(pd.events_for("k1")) == 7


async def test_follow_up_for_unknown_key_is_accepted_and_dropped(
    pd: FakePagerDuty, http: httpx.AsyncClient
) -> None:
    for action in ("acknowledge", "resolve"):
        answer = await send(http, pd, follow_up(action, "nobody"))
        assert answer.status_code == 202
        assert answer.json()["dedup_key"] == "nobody"
    assert pd.incidents == [] and pd.incident("nobody") is None


async def test_trigger_without_dedup_key_gets_a_new_one_each_time(
    pd: FakePagerDuty, http: httpx.AsyncClient
) -> None:
    keys = [(await send(http, pd, trigger(None))).json()["dedup_key"] for _ in range(2)]
    assert keys[0] != keys[1]
    assert [i.dedup_key for i in pd.open_incidents()] == keys


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (trigger() | {"routing_key": "wrong"}, "Invalid routing key"),
        ({k: v for k, v in trigger().items() if k != "routing_key"}, "Invalid routing key"),
        (trigger() | {"event_action": "snooze"}, "'event_action' must be one of"),
        (trigger(source=""), "'payload.source' is missing or blank"),
        (trigger(summary=None), "'payload.summary' is missing or blank"),
        (trigger(summary="x" * 1025), "'payload.summary' is longer than 1024"),
        (trigger(severity="high"), "'payload.severity' must be one of"),
        ({k: v for k, v in trigger().items() if k != "payload"}, "'payload' is missing"),
        (trigger("d" * 256), "'dedup_key' is longer than 255"),
        ({"routing_key": KEY, "event_action": "resolve"}, "'dedup_key' is required"),
        (trigger() | {"links": [{"text": "no href"}]}, "'links' must be a list"),
    ],
)
async def test_invalid_events_are_refused_like_pagerduty(
    pd: FakePagerDuty, http: httpx.AsyncClient, body: dict[str, Any], error: str
) -> None:
    answer = await send(http, pd, body)
    assert answer.status_code == 400
    data = answer.json()
    assert (data["status"], data["message"]) == ("invalid event", "Event object is invalid")
    assert any(e.startswith(error) for e in data["errors"]), data["errors"]
    assert pd.incidents == []
    assert [e.status for e in pd.events] == [400]


async def test_a_body_that_is_not_json_is_unrecognized(
    pd: FakePagerDuty, http: httpx.AsyncClient
) -> None:
    answer = await http.post(f"{pd.url}/v2/enqueue", content=b"{not json")
    assert answer.status_code == 400
    assert answer.json()["status"] == "Unrecognized object"
    assert pd.events[0].body == "{not json"


async def test_injected_failures_come_first_and_run_out(
    pd: FakePagerDuty, http: httpx.AsyncClient
) -> None:
    pd.fail(429, times=2, retry_after=7)
    pd.fail(500, times=1)
    answers = [await send(http, pd, trigger()) for _ in range(4)]
    assert [a.status_code for a in answers] == [429, 429, 500, 202]
    assert answers[0].headers["Retry-After"] == "7"
    assert "Retry-After" not in answers[2].headers
    assert answers[2].json()["status"] == "error"
    incident = pd.incident("k1")
    assert incident is not None and incident.triggers == 1
    assert [e.status for e in pd.events] == [429, 429, 500, 202]


async def test_injected_failure_with_a_custom_body(
    pd: FakePagerDuty, http: httpx.AsyncClient
) -> None:
    pd.fail(503, times=None, body="upstream down")
    for _ in range(3):
        answer = await send(http, pd, trigger())
        assert (answer.status_code, answer.text) == (503, "upstream down")
    assert pd.incidents == []


async def test_a_delayed_event_is_applied_even_if_the_client_gave_up(
    pd: FakePagerDuty, http: httpx.AsyncClient
) -> None:
    pd.delay(0.3)
    with pytest.raises(httpx.ReadTimeout):
        await http.post(f"{pd.url}/v2/enqueue", json=trigger(), timeout=0.05)
    assert (await send(http, pd, trigger())).status_code == 202
    incident = pd.incident("k1")
    assert incident is not None

    async def both_applied() -> bool:
        return incident.triggers == 2

    await eventually(both_applied, within=2.0)
    assert len(pd.incidents) == 1
