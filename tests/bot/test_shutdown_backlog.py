"""Stopping the service under a Slack backlog: it stops between two posts, quickly, and the
posts it did not send go out after a restart, each once."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.settings import load_settings
from bot.slack import app as slack_app
from bot.slack.sink import SlackSink
from storage.models import OutboxMessage, OutboxStatus
from tests.appclient import start_app
from tests.bot.slack.support import CHANNEL, SIGNING_SECRET
from tests.builders import open_case_with_alert
from tests.fakes.slack import FakeSlack
from tests.waiting import eventually

Sessions = async_sessionmaker[AsyncSession]
TOKEN = "xoxb-backlog-token"
BACKLOG = 30
# Slack's pace: one post a second per channel, so 30 posts take half a minute to send.
PACE = 1.1


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(bot_token=TOKEN) as fake:
        yield fake


async def serve(engine: AsyncEngine, slack: FakeSlack, *, pace: float) -> TestClient:
    settings = load_settings(
        _env_file=None,
        slack_bot_token=TOKEN,
        slack_signing_secret=SIGNING_SECRET,
        slack_alert_channel=CHANNEL,
        slack_api_url=slack.url,
    )
    client = slack_app.build_client(settings)
    return await start_app(
        settings,
        engine=engine,
        slack_client=client,
        sink=SlackSink(client, post_interval=pace),
        migrate=False,
        scheduled_jobs=False,
    )


async def outbox_rows(sessions: Sessions) -> list[OutboxMessage]:
    async with sessions() as session:
        return list(
            (await session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id)))).all()
        )


def posted_cases(slack: FakeSlack) -> Counter[object]:
    """How many times each case's alert was posted (by the metadata the post carries)."""
    return Counter(
        call.params["metadata"]["event_payload"]["case_id"]
        for call in slack.calls_to("chat.postMessage")
    )


async def test_stopping_under_a_backlog_is_quick_and_loses_or_repeats_nothing(
    engine: AsyncEngine, sessions: Sessions, slack: FakeSlack
) -> None:
    now = datetime.now(UTC)
    for n in range(BACKLOG):
        await open_case_with_alert(
            sessions, now, channel=CHANNEL, account_id=f"a-{n}", email=f"u{n}@example{n}.com"
        )
    app = await serve(engine, slack, pace=PACE)

    async def sending() -> bool:
        return len(slack.calls_to("chat.postMessage")) >= 2

    await eventually(sending, within=10)
    started = time.monotonic()
    await app.close()
    took = time.monotonic() - started

    assert took < 4 * PACE, f"stopping took {took:.1f} s"
    rows = await outbox_rows(sessions)
    sent = [r for r in rows if r.status == OutboxStatus.SENT]
    unsent = [r for r in rows if r.status == OutboxStatus.PENDING]
    assert len(sent) + len(unsent) == BACKLOG and unsent
    # Handed back, not left leased: the next start sends them now, not in a minute.
    assert all(r.lease_owner is None and r.lease_until is None for r in unsent)
    assert all(r.attempts == 0 for r in unsent)

    restarted = await serve(engine, slack, pace=0.01)
    try:

        async def all_sent() -> bool:
            rows = await outbox_rows(sessions)
            return all(r.status == OutboxStatus.SENT for r in rows)

        await eventually(all_sent, within=10)
    finally:
        await restarted.close()
    assert posted_cases(slack) == Counter({r.case_id: 1 for r in rows})
    # A post whose attempt was handed back is posted, never looked for as an earlier copy.
    assert slack.calls_to("conversations.history") == []
