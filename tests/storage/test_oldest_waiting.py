"""The oldest webhook delivery and outbox message still waiting, as the metrics report them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import inbox, maintenance, outbox
from storage.models import OUTREACH_CHANNEL, PAGER_CHANNEL, InboxDelivery, OutboxMessage

NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


async def test_nothing_waits_on_an_empty_database(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as session:
        assert await maintenance.oldest_pending_delivery(session) is None
        assert await maintenance.oldest_pending_messages(session, now=NOW) == {}


async def test_the_oldest_pending_delivery_is_the_first_still_pending(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as session, session.begin():
        for n, minutes in enumerate((30, 20, 10)):
            await inbox.add_delivery(
                session,
                dedupe_key=f"d-{n}",
                source="nylas-v3",
                body="{}",
                received_at=NOW - timedelta(minutes=minutes),
            )
        await session.exec(
            update(InboxDelivery)
            .where(col(InboxDelivery.dedupe_key) == "d-0")
            .values(status="done")
        )
    async with sessions() as session:
        oldest = await maintenance.oldest_pending_delivery(session)
    assert oldest == NOW - timedelta(minutes=20)


async def test_messages_wait_from_when_due_and_keep_ageing_while_retried(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    async with sessions() as session, session.begin():
        # Slack: one due for 3 minutes, one sent long ago, one held back for tomorrow.
        await outbox.enqueue(
            session,
            channel="C1",
            kind="post",
            now=NOW - timedelta(hours=1),
            available_at=NOW - timedelta(minutes=3),
        )
        sent = await outbox.enqueue(
            session, channel="C2", kind="post", now=NOW - timedelta(hours=2)
        )
        await outbox.enqueue(
            session,
            channel="C3",
            kind="thread",
            now=NOW - timedelta(days=2),
            available_at=NOW + timedelta(days=1),
        )
        # PagerDuty: queued 40 minutes ago, failed, and backed off past now.
        paged = await outbox.enqueue(
            session, channel=PAGER_CHANNEL, kind="page", now=NOW - timedelta(minutes=40)
        )
        await session.exec(
            update(OutboxMessage).where(col(OutboxMessage.id) == sent).values(status="sent")
        )
        await session.exec(
            update(OutboxMessage)
            .where(col(OutboxMessage.id) == paged)
            .values(attempts=4, available_at=NOW + timedelta(minutes=5))
        )
    async with sessions() as session:
        waiting = await maintenance.oldest_pending_messages(session, now=NOW)
    assert waiting == {
        "slack": NOW - timedelta(minutes=3),
        "pagerduty": NOW - timedelta(minutes=40),
    }
    assert OUTREACH_CHANNEL not in waiting
