"""Replayed Slack requests: a click, a slash command and an event, correctly signed but with an
``X-Slack-Request-Timestamp`` more than 5 minutes old (or ahead), are refused (401) and change
nothing; the same request with a fresh timestamp works.

Already covered elsewhere: clicks 301 s old (test_e2e), commands from 2023 (test_commands),
events 10 minutes old (test_home). This adds the future, every surface at the same margins,
and the proof that nothing at all changed (database, Slack, Nylas).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.slack import ids
from tests.bot.slack.support import (
    CHANNEL,
    Sessions,
    case_events,
    click_body,
    expire,
    signed,
    wait_posts,
)
from tests.bot.slack.test_home import home_opened
from tests.databases import TABLES
from tests.fakes.slack import FakeSlack
from tests.waiting import eventually

WINDOW = 5 * 60
MARGIN = 10  # clear of the edge, so a slow run cannot cross it


@dataclass
class Request:
    body: str
    content_type: str
    done: Callable[[], Awaitable[bool]]  # the effect of the request, once it was served


Build = Callable[[FakeSlack, Sessions], Request]


def a_click(slack: FakeSlack, sessions: Sessions) -> Request:
    async def done() -> bool:
        return ("slack:U0ALICE", "acknowledged") in await case_events(sessions)

    body = click_body(slack, ids.ACK, "1", "U0ALICE")
    return Request(body, "application/x-www-form-urlencoded", done)


def a_command(slack: FakeSlack, sessions: Sessions) -> Request:
    async def done() -> bool:
        acked = ("slack:U0ANA", "acknowledged") in await case_events(sessions)
        return acked and bool(slack.responses_to("cmd"))

    fields = {
        "token": "legacy",
        "team_id": "T0TEST",
        "api_app_id": "A0APP",
        "channel_id": CHANNEL,
        "user_id": "U0ANA",
        "command": ids.COMMAND,
        "text": "ack 1",
        "response_url": slack.response_url("cmd"),
        "trigger_id": "1.2.x",
    }
    return Request(urlencode(fields), "application/x-www-form-urlencoded", done)


def an_event(slack: FakeSlack, sessions: Sessions) -> Request:
    async def done() -> bool:
        return "U0BOB" in slack.home_tabs

    return Request(home_opened("U0BOB"), "application/json", done)


SURFACES = pytest.mark.parametrize(
    "build", [a_click, a_command, an_event], ids=["click", "command", "event"]
)


async def snapshot(engine: AsyncEngine) -> dict[str, list[tuple[Any, ...]]]:
    async with engine.connect() as conn:
        return {
            table: sorted(tuple(r) for r in (await conn.execute(text(f"SELECT * FROM {table}"))))
            for table in TABLES
        }


async def open_case(start: Any, slack: FakeSlack) -> TestClient:
    app: TestClient = await start()
    await expire(app)
    await wait_posts(slack, 1)
    return app


async def send(app: TestClient, request: Request, timestamp: int) -> int:
    headers = {**signed(request.body, timestamp=timestamp), "Content-Type": request.content_type}
    response = await app.post(ids.EVENTS_PATH, data=request.body, headers=headers)
    return response.status


@SURFACES
@pytest.mark.parametrize(
    "skew",
    [-(WINDOW + MARGIN), -24 * 3600, WINDOW + MARGIN, 24 * 3600],
    ids=["just over 5 min old", "a day old", "just over 5 min ahead", "a day ahead"],
)
async def test_a_replayed_request_is_refused_and_changes_nothing(
    start: Any, slack: FakeSlack, sessions: Sessions, engine: AsyncEngine, build: Build, skew: int
) -> None:
    app = await open_case(start, slack)

    async def settled() -> bool:  # the alert's coordinates are stored; nothing left to send
        async with engine.connect() as conn:
            left = await conn.execute(text("SELECT count(*) FROM outbox WHERE status != 'sent'"))
            return left.scalar_one() == 0

    await eventually(settled)
    request = build(slack, sessions)
    before, calls = await snapshot(engine), len(slack.calls)

    assert await send(app, request, int(time.time()) + skew) == 401

    # Nothing runs after a 401, but give anything that wrongly did a moment to show.
    await app.get("/healthz")
    assert await snapshot(engine) == before
    assert slack.calls[calls:] == []
    assert slack.responses == []
    assert not await request.done()

    # The very same request, signed now, is served.
    assert await send(app, request, int(time.time())) == 200
    await eventually(request.done)


@SURFACES
async def test_a_request_within_the_window_is_served(
    start: Any, slack: FakeSlack, sessions: Sessions, build: Build
) -> None:
    # Slack allows 5 minutes of clock difference either way; 4 minutes late still works.
    app = await open_case(start, slack)
    request = build(slack, sessions)
    assert await send(app, request, int(time.time()) - (WINDOW - 60)) == 200
    await eventually(request.done)


async def test_an_exact_replay_within_the_window_acts_once(
    start: Any, slack: FakeSlack, sessions: Sessions, engine: AsyncEngine
) -> None:
    # Slack's scheme has no nonce: a captured click replayed at once passes the signature
    # check. Its signature was seen, though: the copy is answered 200 and nothing runs.
    app = await open_case(start, slack)
    request = a_click(slack, sessions)
    now = int(time.time())
    assert await send(app, request, now) == 200
    await eventually(request.done)

    async def settled() -> bool:  # the alert's update and thread line are sent
        async with engine.connect() as conn:
            left = await conn.execute(text("SELECT count(*) FROM outbox WHERE status != 'sent'"))
            return left.scalar_one() == 0

    await eventually(settled)
    before, calls = await snapshot(engine), len(slack.calls)
    assert await send(app, request, now) == 200
    await app.get("/healthz")  # anything the copy wrongly started has a moment to show
    assert await snapshot(engine) == before
    assert slack.calls[calls:] == []
    assert slack.responses == []
    acks = [e for e in await case_events(sessions) if e[1] == "acknowledged"]
    assert len(acks) == 1
