"""The daily digest end to end: the scheduled job → the outbox → one message in the channel."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from slack_sdk.models.blocks import Block
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select

from bot.notifier import LogSink, SinkError
from bot.runtime import RUNTIME, Runtime
from bot.settings import load_settings
from bot.slack.notices import MAX_LINES, notice_blocks
from bot.slack.sink import SlackSink
from storage.models import OutboxKind, OutboxMessage, OutboxStatus
from tests.appclient import start_app
from tests.bot.slack.support import CHANNEL, NOW, Sessions, expire, wait_posts
from tests.bot.slack.test_blocks import HOSTILE, mentions
from tests.conftest import FrozenClock
from tests.fakes.slack import FakeSlack
from tests.waiting import eventually


def validate_message(blocks: list[dict[str, Any]]) -> None:
    """Valid for slack-sdk's models, within a message's limits, and unable to ping anyone."""
    assert 0 < len(blocks) <= 50
    parsed = Block.parse_all(blocks)
    assert None not in parsed
    assert [b.to_dict() for b in parsed]  # to_dict() runs the validators
    for block in blocks:
        if block["type"] == "section":
            assert len(block["text"]["text"]) <= 3000
    assert mentions(blocks) == []


def runtime_of(app: TestClient) -> Runtime:
    return app.server.app[RUNTIME]


async def run_digest_job(app: TestClient) -> None:
    """Run the scheduled job as the scheduler would at its time (same wrapper, same clock)."""
    scheduler = runtime_of(app).scheduler
    assert scheduler is not None
    job = scheduler.get_job("digest")
    assert job is not None
    await job.func()


async def notice_rows(sessions: Sessions) -> list[OutboxMessage]:
    async with sessions() as session:
        stmt = select(OutboxMessage).where(col(OutboxMessage.kind) == OutboxKind.NOTICE)
        return list((await session.exec(stmt)).all())


async def test_the_digest_reaches_the_alert_channel_once_a_day(
    start: Any, slack: FakeSlack, sessions: Sessions
) -> None:
    clock = FrozenClock(NOW)  # 09:30 UTC
    app = await start(clock=clock, digest_at="09:00")
    await expire(app, grant_id="g-1", email=HOSTILE)
    await wait_posts(slack, 1)  # opened (and so dated) before the clock moves on
    clock.advance(minutes=10)
    await expire(app, grant_id="g-2", email="bob@example.com")
    await wait_posts(slack, 2)

    scheduler = runtime_of(app).scheduler
    assert scheduler is not None
    job = scheduler.get_job("digest")
    assert job is not None
    assert job.trigger.get_next_fire_time(None, clock()) == datetime(2026, 11, 3, 9, tzinfo=UTC)

    clock.advance(hours=2)
    await run_digest_job(app)
    await wait_posts(slack, 3)
    # The job runs again the same day (a second replica, a restart): nothing more is queued.
    await run_digest_job(app)

    async def delivered() -> bool:
        return [m.status for m in await notice_rows(sessions)] == [OutboxStatus.SENT]

    await eventually(delivered)
    digests = [
        m
        for (channel, _), m in slack.messages.items()
        if channel == CHANNEL and m["blocks"] and m["blocks"][0]["type"] == "header"
        if m["blocks"][0]["text"]["text"].startswith("reauthbot daily digest")
    ]
    assert len(digests) == 1
    (digest,) = digests
    assert len(slack.calls_to("chat.postMessage")) == 3  # two alerts and the digest
    blocks = digest["blocks"]
    validate_message(blocks)
    assert blocks[0]["text"]["text"] == "reauthbot daily digest, 2026-11-02"
    assert digest["text"] == "reauthbot daily digest: 2 open cases, 0 resolved in the last 24 h"
    body = blocks[1]["text"]["text"]
    assert body.splitlines() == [
        "• Open: 2 cases (2 need re-authentication).",
        "• Oldest open: case #1, ana+&lt;!channel&gt;&amp;&lt;@U0BOSS&gt;|&lt;https://evil"
        ".example|click&gt;@example.com (account g-1), open for 2 h 10 min.",
        "• Resolved in the last 24 h: 0, of which 0 recovered without an operator.",
        "• Outreach in the last 24 h: no outreach yet.",
        "• Still billed by Nylas: 2 open cases.",  # expired v3 grants are billed until deleted
    ]
    metrics = await (await app.get("/metrics")).text()
    assert 'reauthbot_job_runs_total{job="digest",outcome="ok"} 2.0' in metrics
    assert (
        'reauthbot_notifier_messages_total{kind="notice",outcome="sent",sink="slack"} 1.0'
        in metrics
    )


async def test_without_a_digest_time_no_digest_job_is_scheduled(start: Any) -> None:
    app = await start()
    scheduler = runtime_of(app).scheduler
    assert scheduler is not None
    jobs = {job.id for job in scheduler.get_jobs()}
    assert {"retention", "snoozes"} <= jobs  # the service's scheduler, with its other jobs
    assert "digest" not in jobs


async def test_in_local_mode_the_digest_goes_to_the_log(
    engine: AsyncEngine, sessions: Sessions, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    settings = load_settings(_env_file=None, digest_at="09:00")
    app = await start_app(
        settings, engine=engine, scheduled_jobs=False, migrate=False, clock=FrozenClock(NOW)
    )
    try:
        await run_digest_job(app)

        async def delivered() -> bool:
            rows = await notice_rows(sessions)
            return [(m.channel, m.status) for m in rows] == [("log", OutboxStatus.SENT)]

        await eventually(delivered)
    finally:
        await app.close()
    (record,) = [r for r in caplog.records if r.name == "reauthbot.alerts"]
    assert record.getMessage() == (
        "reauthbot daily digest, 2026-11-02: Open: no cases. Every tracked mailbox is syncing. "
        "Resolved in the last 24 h: 0, of which 0 recovered without an operator. "
        "Outreach in the last 24 h: no outreach yet."
    )


def notice(kind: str = OutboxKind.NOTICE, **payload: Any) -> OutboxMessage:
    return OutboxMessage(
        id=1,
        channel=CHANNEL,
        kind=kind,
        payload=payload,
        attempts=1,
        created_at=NOW,
        available_at=NOW,
    )


async def test_the_slack_sink_posts_a_notice_and_still_refuses_other_kinds_without_a_case(
    slack: FakeSlack,
) -> None:
    client = AsyncWebClient(token=slack.bot_token, base_url=slack.url)
    sink = SlackSink(client, post_interval=0)
    message = notice(title="Title <!here>", text="Short <!channel>", lines=["one", "<@U0X> two"])
    assert await sink.deliver(message, None, None) is None
    (call,) = slack.calls_to("chat.postMessage")
    assert call.params["channel"] == CHANNEL
    assert call.params["text"] == "Short &lt;!channel&gt;"
    validate_message(call.params["blocks"])
    assert call.params["blocks"][0]["text"] == {"type": "plain_text", "text": "Title <!here>"}
    assert call.params["blocks"][1]["text"]["text"] == "• one\n• &lt;@U0X&gt; two"
    for kind in (OutboxKind.POST, OutboxKind.UPDATE, OutboxKind.THREAD, OutboxKind.DM):
        with pytest.raises(SinkError) as raised:
            await sink.deliver(notice(kind), None, None)
        assert (raised.value.code, raised.value.permanent) == ("case_missing", True)
    assert len(slack.calls_to("chat.postMessage")) == 1


def test_a_long_notice_stays_within_a_messages_limits() -> None:
    lines = [f"{n} {HOSTILE * 20}" for n in range(MAX_LINES + 20)]
    blocks = notice_blocks({"title": "t" * 400, "lines": lines})
    validate_message(blocks)
    shown = "\n".join(b["text"]["text"] for b in blocks[1:])
    assert shown.count("• ") == MAX_LINES
    assert json.dumps(blocks).count("&lt;!channel&gt;") >= MAX_LINES


async def test_the_log_sink_writes_a_notice(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    await LogSink().deliver(notice(title="Digest", lines=["a", "b"]), None, None)
    assert [r.getMessage() for r in caplog.records] == ["Digest: a b"]
