"""The PagerDuty client against the fake Events API, over real HTTP."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from tests.fakes.pagerduty import FakePagerDuty
from tests.ports import closed_port_url
from workflows.paging import (
    PagerDuty,
    PagingError,
    PagingRejected,
    PagingUnavailable,
    decipher_response,
    parse_retry_after,
)

KEY = "e93facc04764012d7bfb002500d5d1a6"


class Sleeps(list[float]):
    """Stands in for asyncio.sleep: records each delay instead of waiting."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
async def pd() -> AsyncIterator[FakePagerDuty]:
    async with FakePagerDuty(routing_key=KEY) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield client


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def client(url: str, http: httpx.AsyncClient, sleeps: Sleeps, **overrides: Any) -> PagerDuty:
    options: dict[str, Any] = {"routing_key": KEY, "base_url": url, "sleep": sleeps} | overrides
    return PagerDuty(http, **options)


async def test_trigger_sends_the_documented_event(
    pd: FakePagerDuty, http: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    pager = client(pd.url + "/", http, sleeps)
    links = [{"href": "https://slack.example.com/archives/C1/p1", "text": "Slack thread"}]
    key = await pager.trigger(
        "case-42",
        "ann@example.com must re-authenticate",
        source="reauthbot",
        severity="critical",
        custom_details={"account": "g1", "state": "invalid"},
        links=links,
    )
    assert key == "case-42"
    assert pd.events[0].body == {
        "routing_key": KEY,
        "event_action": "trigger",
        "dedup_key": "case-42",
        "payload": {
            "summary": "ann@example.com must re-authenticate",
            "source": "reauthbot",
            "severity": "critical",
            "custom_details": {"account": "g1", "state": "invalid"},
        },
        "links": links,
    }
    incident = pd.incident("case-42")
    assert incident is not None
    assert (incident.status, incident.severity, incident.links) == ("triggered", "critical", links)
    assert sleeps == []


async def test_acknowledge_and_resolve(
    pd: FakePagerDuty, http: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    pager = client(pd.url, http, sleeps)
    await pager.trigger("case-1", "bob needs re-auth", source="reauthbot")
    await pager.acknowledge("case-1")
    incident = pd.incident("case-1")
    assert incident is not None and incident.status == "acknowledged"
    await pager.resolve("case-1")
    assert incident.status == "resolved"
    assert pd.events[-1].body == {
        "routing_key": KEY,
        "event_action": "resolve",
        "dedup_key": "case-1",
    }
    assert pd.open_incidents() == []


async def test_dedup_key_makes_repeats_harmless(
    pd: FakePagerDuty, http: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    pager = client(pd.url, http, sleeps)
    await pager.trigger("case-7", "first", source="reauthbot")
    await pager.trigger("case-7", "second", source="reauthbot")
    assert len(pd.open_incidents()) == 1
    await pager.resolve("case-7")
    await pager.resolve("case-7")  # dropped by PagerDuty, not an error
    await pager.acknowledge("never-triggered")
    assert pd.incidents[0].triggers == 2 and pd.incidents[0].status == "resolved"

    await pager.trigger("case-7", "back again", source="reauthbot")
    reopened = pd.incident("case-7")
    assert reopened is not None and reopened.number == 2 and reopened.summary == "back again"


async def test_long_summary_is_cut_to_pagerdutys_limit(
    pd: FakePagerDuty, http: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    await client(pd.url, http, sleeps).trigger("case-9", "x" * 5000, source="reauthbot")
    incident = pd.incident("case-9")
    assert incident is not None
    assert len(incident.summary) == 1024 and incident.summary.endswith("x…")
    exact = "y" * 1024
    await client(pd.url, http, sleeps).trigger("case-10", exact, source="reauthbot")
    assert pd.events[-1].body["payload"]["summary"] == exact


async def test_429_is_retried_after_the_wait_pagerduty_asks_for(
    pd: FakePagerDuty, http: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    pd.fail(429, times=2, retry_after=7)
    key = await client(pd.url, http, sleeps).trigger("case-3", "carol", source="reauthbot")
    assert key == "case-3"
    assert sleeps == [7.0, 7.0]
    assert [e.status for e in pd.events] == [429, 429, 202]
    assert len(pd.open_incidents()) == 1


async def test_retry_after_as_an_http_date(
    pd: FakePagerDuty, http: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    soon = datetime.now(UTC) + timedelta(seconds=20)
    pd.fail(429, times=1, retry_after=format_datetime(soon, usegmt=True))
    await client(pd.url, http, sleeps).acknowledge("case-3")
    assert len(sleeps) == 1 and 15 < sleeps[0] <= 20


async def test_5xx_is_retried_with_growing_backoff(
    pd: FakePagerDuty, http: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    pd.fail(500, times=1)
    pd.fail(503, times=1)
    pd.fail(502, times=1)
    pager = client(pd.url, http, sleeps, backoff_base=0.5)
    await pager.trigger("case-4", "dave", source="reauthbot")
    assert [e.status for e in pd.events] == [500, 503, 502, 202]
    # 0.5, 1, 2 seconds, each with up to 10% jitter.
    for delay, base in zip(sleeps, (0.5, 1.0, 2.0), strict=True):
        assert base <= delay <= base * 1.1
    assert len(pd.open_incidents()) == 1


async def test_gives_up_with_paging_unavailable(
    pd: FakePagerDuty, http: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    pd.fail(503, times=None)
    pager = client(pd.url, http, sleeps, retries=2)
    with pytest.raises(PagingUnavailable) as caught:
        await pager.trigger("case-5", "erin", source="reauthbot")
    assert caught.value.status == 503
    assert str(caught.value) == (
        "PagerDuty failed to take the trigger case-5 event after 3 attempts "
        "(HTTP 503: Service unavailable)."
    )
    assert len(pd.events) == 3 and len(sleeps) == 2
    assert pd.incidents == []


async def test_a_retry_after_longer_than_max_backoff_gives_up_at_once(
    pd: FakePagerDuty, http: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    pd.fail(429, times=None, retry_after=600)
    pager = client(pd.url, http, sleeps, max_backoff=60)
    with pytest.raises(PagingUnavailable) as caught:
        await pager.resolve("case-6")
    assert (caught.value.status, caught.value.retry_after) == (429, 600.0)
    assert "rate-limited" in str(caught.value)
    assert sleeps == [] and len(pd.events) == 1


async def test_400_is_rejected_without_retry(
    pd: FakePagerDuty, http: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    pager = client(pd.url, http, sleeps, routing_key="0" * 32)
    with pytest.raises(PagingRejected) as caught:
        await pager.trigger("case-8", "frank", source="reauthbot")
    assert caught.value.status == 400
    assert caught.value.errors == ("Invalid routing key",)
    assert str(caught.value) == (
        "PagerDuty rejected the trigger case-8 event "
        "(HTTP 400: Event object is invalid; Invalid routing key)."
    )
    assert len(pd.events) == 1 and sleeps == []


async def test_a_timeout_is_retried(
    pd: FakePagerDuty, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    pd.delay(0.5, times=1)
    async with httpx.AsyncClient(timeout=0.05) as short:
        with caplog.at_level(logging.WARNING, logger="reauthbot.paging"):
            await client(pd.url, short, sleeps).trigger("case-11", "gina", source="reauthbot")
    assert len(sleeps) == 1
    (record,) = caplog.records
    fields = {name: getattr(record, name) for name in ("action", "dedup_key", "reason")}
    assert fields == {"action": "trigger", "dedup_key": "case-11", "reason": "ReadTimeout"}


async def test_an_unreachable_pagerduty_is_unavailable(
    http: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    pager = client(closed_port_url(), http, sleeps, retries=1)
    with pytest.raises(PagingUnavailable) as caught:
        await pager.acknowledge("case-12")
    assert caught.value.status is None
    assert str(caught.value).startswith(
        "Could not reach PagerDuty for the acknowledge case-12 event after 2 attempts"
    )
    assert len(sleeps) == 1


async def test_the_routing_key_never_shows(
    pd: FakePagerDuty, http: httpx.AsyncClient, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    caught: list[PagingError] = []
    pager = client(pd.url, http, sleeps, retries=1)
    echo = {"status": "invalid event", "message": f"Unknown key {KEY}", "errors": [KEY]}
    pd.fail(400, times=1, body=echo)
    pd.fail(429, times=2, body={"status": "throttle event", "message": f"slow down, {KEY}"})
    pd.fail(500, times=2, body=f"crash near {KEY}")
    with caplog.at_level(logging.DEBUG):
        for _ in range(3):
            with pytest.raises(PagingError) as info:
                await pager.trigger("case-13", "hal", source="reauthbot")
            caught.append(info.value)
        unreachable = client(closed_port_url(), http, sleeps, retries=1)
        with pytest.raises(PagingError) as info:
            await unreachable.resolve("case-13")
        caught.append(info.value)
    assert [type(e) for e in caught] == [
        PagingRejected,
        PagingUnavailable,
        PagingUnavailable,
        PagingUnavailable,
    ]
    assert "[redacted]" in str(caught[0]) and "[redacted]" in str(caught[1])
    for exc in caught:
        assert KEY not in str(exc) and KEY not in repr(exc)
        assert all(KEY not in e for e in getattr(exc, "errors", ()))
    assert caplog.records and all(KEY not in r.getMessage() for r in caplog.records)
    assert all(KEY not in str(vars(r)) for r in caplog.records)
    assert KEY not in repr(pager)


async def test_arguments_pagerduty_would_refuse_are_caught_before_sending(
    pd: FakePagerDuty, http: httpx.AsyncClient, sleeps: Sleeps
) -> None:
    pager = client(pd.url, http, sleeps)
    with pytest.raises(ValueError, match="severity"):
        await pager.trigger("case-14", "ivy", source="reauthbot", severity="high")
    with pytest.raises(ValueError, match="dedup_key"):
        await pager.trigger("k" * 256, "ivy", source="reauthbot")
    with pytest.raises(ValueError, match="dedup_key"):
        await pager.resolve("")
    with pytest.raises(ValueError, match="summary and source"):
        await pager.trigger("case-14", "ivy", source=" ")
    with pytest.raises(ValueError, match="routing key"):
        PagerDuty(http, routing_key="")
    assert pd.events == []


@pytest.mark.parametrize(
    ("status", "kind"),
    [(413, PagingRejected), (404, PagingRejected), (301, PagingError), (599, PagingUnavailable)],
)
def test_decipher_response_maps_every_status(status: int, kind: type[PagingError]) -> None:
    with pytest.raises(kind) as caught:
        decipher_response(status, {}, b"", what="trigger case-1")
    assert type(caught.value) is kind and caught.value.status == status


def test_decipher_response_accepts_any_2xx_body() -> None:
    assert decipher_response(202, {}, b"", what="resolve x") == {}
    assert decipher_response(202, {}, b"[]", what="resolve x") == {}
    body = b'{"status":"success","message":"Event processed","dedup_key":"x"}'
    assert decipher_response(202, {}, body, what="resolve x")["dedup_key"] == "x"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("3", 3.0),
        ("-1", 0.0),
        ("nan", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:10 GMT", 10.0),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert parse_retry_after(value, now=now) == seconds
