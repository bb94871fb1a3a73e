"""Escalation end to end: unacknowledged alert → mention, DM, PagerDuty; ack and recovery follow."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlmodel import select

from bot.runtime import RUNTIME
from bot.services import SERVICES
from bot.slack import ids
from storage import cases
from storage.models import OutboxKind, OutboxMessage
from tests.bot.slack.support import CHANNEL, NOW, Sessions, click, click_body, expire, wait_posts
from tests.conftest import WEBHOOK_SECRET, FrozenClock
from tests.fakes.pagerduty import FakePagerDuty
from tests.fakes.slack import FakeSlack
from tests.waiting import eventually
from workflows.escalation import escalate_due
from workflows.nylas import samples
from workflows.nylas.webhooks import sign

ROUTING_KEY = "R0UTINGKEY0000000000000000000042"
POLICY = """
[escalation]
repeat = 1
[[escalation.levels]]
after = "15m"
mention = ["S0ONCALL", "U0SUE"]
[[escalation.levels]]
after = "1h"
dm = ["U0LEAD"]
pagerduty = true
"""


@pytest.fixture
async def pagerduty() -> AsyncIterator[FakePagerDuty]:
    async with FakePagerDuty(routing_key=ROUTING_KEY) as fake:
        yield fake


async def alert_stored(slack: FakeSlack, sessions: Sessions) -> None:
    """Wait until case 1's alert is posted and recorded (the notifier holds the row till then)."""
    await wait_posts(slack, 1)

    async def stored() -> bool:
        async with sessions() as session:
            case = await cases.get_case(session, case_id=1)
        return case is not None and case.slack_ts is not None

    await eventually(stored)


async def sweep(app: TestClient, sessions: Sessions, clock: FrozenClock) -> int:
    services = app.server.app[SERVICES]
    return await escalate_due(sessions, policy=services.settings.policy.escalation, now=clock())


async def test_an_ignored_alert_reaches_on_call_and_stands_down_when_handled(
    start: Any, slack: FakeSlack, pagerduty: FakePagerDuty, sessions: Sessions
) -> None:
    clock = FrozenClock(NOW)
    app = await start(
        POLICY, clock=clock, pagerduty_routing_key=ROUTING_KEY, pagerduty_api_url=pagerduty.url
    )
    await expire(app)
    await alert_stored(slack, sessions)
    parent = min(ts for channel, ts in slack.messages if channel == CHANNEL)

    clock.advance(minutes=15)
    assert await sweep(app, sessions, clock) == 1

    async def mentioned() -> bool:
        return len(slack.thread(CHANNEL, parent)) == 1

    await eventually(mentioned)
    (line,) = slack.thread(CHANNEL, parent)
    assert line["subtype"] == "thread_broadcast"
    assert line["text"].startswith("<!subteam^S0ONCALL> <@U0SUE> Escalated (level 1)")
    assert pagerduty.events == []

    clock.advance(minutes=45)
    assert await sweep(app, sessions, clock) == 1

    async def paged() -> bool:
        incident = pagerduty.incident("reauthbot-case-1")
        dms = [m for (channel, _), m in slack.messages.items() if channel == "U0LEAD"]
        return incident is not None and len(dms) == 1

    await eventually(paged)
    incident = pagerduty.incident("reauthbot-case-1")
    assert incident is not None and incident.status == "triggered"
    assert "ana@example.com" in incident.summary
    assert incident.custom_details["account"] == "g-1"
    (dm,) = [m for (channel, _), m in slack.messages.items() if channel == "U0LEAD"]
    assert dm["text"].startswith("Case #1 (ana@example.com) needs you")
    assert any(b.get("type") == "actions" for b in dm["blocks"])  # the buttons come along

    # Someone acknowledges: PagerDuty follows, and the repeat round never runs.
    assert await click(app, click_body(slack, ids.ACK, "1", "U0ANA")) == 200

    async def acknowledged() -> bool:
        return incident.status == "acknowledged"

    await eventually(acknowledged)
    clock.advance(hours=3)
    assert await sweep(app, sessions, clock) == 0

    # The user re-authenticates: the case resolves and so does the PagerDuty alert.
    raw = json.dumps(
        samples.v3_notification(
            "grant.updated",
            grant_id="g-1",
            email="ana@example.com",
            at=datetime.now(UTC),
            reauthenticated=True,
        )
    ).encode()
    answer = await app.post(
        "/nylas/webhook", data=raw, headers={"X-Nylas-Signature": sign(WEBHOOK_SECRET, raw)}
    )
    assert answer.status == 200

    async def resolved() -> bool:
        return incident.status == "resolved"

    await eventually(resolved)
    assert [e.action for e in pagerduty.events] == ["trigger", "acknowledge", "resolve"]
    assert {e.dedup_key for e in pagerduty.events} == {"reauthbot-case-1"}


async def test_pagerduty_outage_is_retried_until_the_page_lands(
    start: Any, slack: FakeSlack, pagerduty: FakePagerDuty, sessions: Sessions
) -> None:
    clock = FrozenClock(NOW)
    app = await start(
        POLICY, clock=clock, pagerduty_routing_key=ROUTING_KEY, pagerduty_api_url=pagerduty.url
    )
    await expire(app)
    await alert_stored(slack, sessions)
    pagerduty.fail(503, times=4)  # the client's first try and its three retries

    clock.advance(hours=1)
    assert await sweep(app, sessions, clock) == 1

    async def put_off() -> bool:
        # The client gave up and the notifier scheduled the page again (the clock is frozen).
        async with sessions() as session:
            stmt = select(OutboxMessage).where(OutboxMessage.kind == OutboxKind.PAGE)
            page = (await session.exec(stmt)).first()
        return page is not None and page.last_error is not None and page.lease_owner is None

    await eventually(put_off, within=30)
    assert len(pagerduty.events) == 4
    clock.advance(minutes=5)  # past the notifier's backoff: the page is sent again
    pager = app.server.app[RUNTIME].page
    assert pager is not None
    pager.wake()  # nothing was queued, time passed: no need to wait for its next look

    async def landed() -> bool:
        incident = pagerduty.incident("reauthbot-case-1")
        return incident is not None

    await eventually(landed, within=20)
    incident = pagerduty.incident("reauthbot-case-1")
    assert incident is not None and incident.triggers == 1
