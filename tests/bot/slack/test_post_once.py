"""A case's parent message is posted once: after a lost answer, a crash, or with two processes."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy import update
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.metrics import Metrics
from bot.notifier import Notifier
from bot.slack.sink import CASE_EVENT, SlackSink
from storage import cases
from storage.engine import create_engine, session_factory
from storage.models import Case, OutboxMessage, OutboxStatus
from tests.builders import open_case_with_alert
from tests.cli import service
from tests.conftest import WEBHOOK_SECRET, FrozenClock
from tests.fakes.slack import FakeSlack
from tests.waiting import eventually
from workflows.nylas import samples
from workflows.nylas.webhooks import sign

Sessions = async_sessionmaker[AsyncSession]
TOKEN = "xoxb-once-token"
CHANNEL = "C0ALERTS"


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(bot_token=TOKEN) as fake:
        yield fake


def notifier(sessions: Sessions, slack: FakeSlack, clock: FrozenClock) -> Notifier:
    # A one-second timeout stands in for the production ten, to keep the test short.
    client = AsyncWebClient(token=TOKEN, base_url=slack.url, timeout=1)
    return Notifier(sessions, SlackSink(client, post_interval=0), clock=clock, metrics=Metrics())


async def open_case(sessions: Sessions, now: datetime) -> int:
    return await open_case_with_alert(
        sessions, now, channel=CHANNEL, account_id="g-1", api_version="v3", state="invalid"
    )


async def stored(sessions: Sessions, case_id: int) -> tuple[Case, list[str]]:
    async with sessions() as session:
        case = await cases.get_case(session, case_id=case_id)
        statuses = [m.status for m in (await session.exec(select(OutboxMessage))).all()]
    assert case is not None
    return case, statuses


async def test_a_post_whose_answer_was_lost_is_found_not_repeated(
    sessions: Sessions, slack: FakeSlack
) -> None:
    clock = FrozenClock(datetime.now(UTC))
    case_id = await open_case(sessions, clock())
    slack.answer_late("chat.postMessage", 30)  # Slack takes the message; the answer never comes

    await notifier(sessions, slack, clock).drain_once()
    ((where, ts),) = slack.messages
    assert slack.messages[where, ts]["metadata"] == {
        "event_type": CASE_EVENT,
        "event_payload": {"case_id": case_id},
    }
    case, statuses = await stored(sessions, case_id)
    assert (case.slack_ts, statuses) == (None, [OutboxStatus.PENDING])

    clock.advance(seconds=5)
    await notifier(sessions, slack, clock).drain_once()

    assert len(slack.calls_to("chat.postMessage")) == 1
    (looked,) = slack.calls_to("conversations.history")
    assert looked.params["channel"] == CHANNEL and looked.params["include_all_metadata"]
    case, statuses = await stored(sessions, case_id)
    assert (case.slack_channel, case.slack_ts, statuses) == (CHANNEL, ts, [OutboxStatus.SENT])


async def test_a_post_refused_with_429_is_checked_then_posted_once(
    sessions: Sessions, slack: FakeSlack
) -> None:
    clock = FrozenClock(datetime.now(UTC))
    case_id = await open_case(sessions, clock())
    slack.fail("chat.postMessage", status=429, retry_after=3)

    await notifier(sessions, slack, clock).drain_once()
    clock.advance(seconds=3)
    await notifier(sessions, slack, clock).drain_once()

    assert len(slack.calls_to("conversations.history")) == 1
    ((_channel, ts),) = slack.messages
    case, statuses = await stored(sessions, case_id)
    assert (case.slack_ts, statuses) == (ts, [OutboxStatus.SENT])


async def test_first_attempts_do_not_read_the_channel(sessions: Sessions, slack: FakeSlack) -> None:
    clock = FrozenClock(datetime.now(UTC))
    await open_case(sessions, clock())

    await notifier(sessions, slack, clock).drain_once()

    assert len(slack.messages) == 1
    assert slack.calls_to("conversations.history") == []


async def test_without_history_access_a_missed_alert_is_worse_than_a_repeat(
    sessions: Sessions, slack: FakeSlack, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FrozenClock(datetime.now(UTC))
    case_id = await open_case(sessions, clock())
    slack.answer_late("chat.postMessage", 30)
    slack.fail("conversations.history", error="missing_scope")

    await notifier(sessions, slack, clock).drain_once()
    clock.advance(seconds=5)
    with caplog.at_level(logging.WARNING, logger="reauthbot.slack.sink"):
        await notifier(sessions, slack, clock).drain_once()

    assert len(slack.messages) == 2
    assert "cannot read the channel to check for an earlier post: missing_scope" in caplog.text
    case, statuses = await stored(sessions, case_id)
    assert case.slack_ts is not None and statuses == [OutboxStatus.SENT]


async def test_a_history_outage_postpones_the_post(sessions: Sessions, slack: FakeSlack) -> None:
    clock = FrozenClock(datetime.now(UTC))
    case_id = await open_case(sessions, clock())
    slack.answer_late("chat.postMessage", 30)
    slack.fail("conversations.history", status=503, times=None)

    await notifier(sessions, slack, clock).drain_once()
    clock.advance(seconds=5)
    await notifier(sessions, slack, clock).drain_once()

    assert len(slack.messages) == 1  # not posted again while the check cannot be made
    case, statuses = await stored(sessions, case_id)
    assert (case.slack_ts, statuses) == (None, [OutboxStatus.PENDING])


def serve_env(database_url: str, slack: FakeSlack) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "SLACK_BOT_TOKEN": TOKEN,
        "SLACK_SIGNING_SECRET": "slack-signing-secret-once",
        "SLACK_ALERT_CHANNEL": CHANNEL,
        "SLACK_API_URL": slack.url,
        "NYLAS_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }


def expiry(n: int) -> tuple[bytes, dict[str, str]]:
    # Each of its own domain and a few providers: no storm groups them into one message.
    raw = json.dumps(
        samples.v3_notification(
            "grant.expired",
            grant_id=f"g-{n}",
            email=f"user{n}@example{n}.com",
            provider=("google", "microsoft", "imap", "yahoo")[n % 4],
            at=datetime.now(UTC),
        )
    ).encode()
    return raw, {"X-Nylas-Signature": sign(WEBHOOK_SECRET, raw)}


async def test_sigkill_after_slack_took_the_post_does_not_post_twice(
    tmp_path: Path, blank_url: str, slack: FakeSlack
) -> None:
    env = serve_env(blank_url, slack)
    log = tmp_path / "serve.log"
    slack.answer_late("chat.postMessage", 60)
    raw, headers = expiry(1)

    async with service(tmp_path, log, env) as base, httpx.AsyncClient() as http:
        answer = await http.post(f"{base}/nylas/webhook", content=raw, headers=headers)
        assert answer.status_code == 200

        async def slack_has_it() -> bool:
            return len(slack.messages) == 1

        await eventually(slack_has_it, within=15)
        # SIGKILL on leaving the block: Slack holds the message, the service never heard back.

    engine = create_engine(blank_url)
    sessions = session_factory(engine)
    try:
        async with sessions() as session, session.begin():
            (post,) = (await session.exec(select(OutboxMessage))).all()
            assert post.status == OutboxStatus.PENDING and post.lease_until is not None
            # The dead process's lease would run out in a minute; let that minute pass.
            await session.exec(
                update(OutboxMessage)
                .where(col(OutboxMessage.id) == post.id)
                .values(lease_until=datetime.now(UTC) - timedelta(seconds=1))
            )

        async with service(tmp_path, log, env):

            async def sent() -> bool:
                async with sessions() as session:
                    row = (await session.exec(select(OutboxMessage))).one()
                return row.status == OutboxStatus.SENT

            await eventually(sent, within=15)

        ((where, ts),) = slack.messages
        async with sessions() as session:
            (case,) = (await session.exec(select(Case))).all()
        assert (case.slack_channel, case.slack_ts) == (where, ts)
        assert len(slack.calls_to("chat.postMessage")) == 1
        assert "adopted the parent message an earlier attempt posted" in log.read_text()
    finally:
        await engine.dispose()


async def test_two_processes_on_one_database_post_each_case_once(
    tmp_path: Path, blank_url: str, slack: FakeSlack
) -> None:
    env = serve_env(blank_url, slack)
    total = 8
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        service(tmp_path / "a", tmp_path / "a.log", env) as first,
        service(tmp_path / "b", tmp_path / "b.log", env) as second,
        httpx.AsyncClient() as http,
    ):
        deliveries = [expiry(n) for n in range(total)]
        answers = await asyncio.gather(
            *(
                http.post(f"{(first, second)[n % 2]}/nylas/webhook", content=raw, headers=headers)
                for n, (raw, headers) in enumerate(deliveries)
            )
        )
        assert [a.status_code for a in answers] == [200] * total
        # Nylas retries a delivery to whichever process it reaches: still one case.
        raw, headers = deliveries[0]
        again = await http.post(f"{second}/nylas/webhook", content=raw, headers=headers)
        assert again.json()["duplicates"] == 1

        async def all_posted() -> bool:
            return len(slack.messages) >= total

        await eventually(all_posted, within=60)
        await asyncio.sleep(1.5)  # room for a second post of any case to show up

    engine = create_engine(blank_url)
    try:
        async with session_factory(engine)() as session:
            stored_cases = (await session.exec(select(Case))).all()
    finally:
        await engine.dispose()
    posted_for = sorted(m["metadata"]["event_payload"]["case_id"] for m in slack.messages.values())
    assert posted_for == sorted(c.id or 0 for c in stored_cases)
    assert len(stored_cases) == total
    assert {(c.slack_channel, c.slack_ts) for c in stored_cases} == set(slack.messages)
