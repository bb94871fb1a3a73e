"""Queuing a message tells the drains once the transaction commits, and only then."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import outbox
from storage.models import PAGER_CHANNEL

Sessions = async_sessionmaker[AsyncSession]
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def heard() -> Iterator[list[frozenset[str]]]:
    calls: list[frozenset[str]] = []
    stop = outbox.on_queued(calls.append)
    yield calls
    stop()


async def test_a_commit_that_queued_names_its_channels(
    sessions: Sessions, heard: list[frozenset[str]]
) -> None:
    async with sessions() as session, session.begin():
        await outbox.enqueue(session, channel="C1", kind="notice", now=NOW)
        await outbox.enqueue(session, channel="C2", kind="notice", now=NOW)
        await outbox.enqueue_page(session, now=NOW, payload={})
        assert heard == []  # not before the commit: the drains would find nothing
    assert heard == [frozenset({"C1", "C2", PAGER_CHANNEL})]


async def test_a_rollback_or_a_duplicate_tells_nobody(
    sessions: Sessions, heard: list[frozenset[str]]
) -> None:
    async with sessions() as session, session.begin():
        await outbox.enqueue(session, channel="C1", kind="notice", now=NOW, dedupe_key="k")
    heard.clear()
    async with sessions() as session:
        await outbox.enqueue(session, channel="C1", kind="notice", now=NOW)
        await session.rollback()
        await session.commit()
    async with sessions() as session, session.begin():
        assert (
            await outbox.enqueue(session, channel="C1", kind="x", now=NOW, dedupe_key="k") is None
        )
    assert heard == []


async def test_a_savepoint_rolled_back_keeps_what_was_queued_before_it(
    sessions: Sessions, heard: list[frozenset[str]]
) -> None:
    async with sessions() as session, session.begin():
        await outbox.enqueue(session, channel="C1", kind="notice", now=NOW)
        savepoint = await session.begin_nested()
        await savepoint.rollback()
    assert heard == [frozenset({"C1"})]


async def test_a_stopped_listener_hears_nothing(sessions: Sessions) -> None:
    calls: list[frozenset[str]] = []
    outbox.on_queued(calls.append)()
    async with sessions() as session, session.begin():
        await outbox.enqueue(session, channel="C1", kind="notice", now=NOW)
    assert calls == []
