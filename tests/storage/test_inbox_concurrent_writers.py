"""Two replicas storing the same deliveries at once (Nylas' retry reaching the other one)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import inbox
from storage.engine import create_engine
from storage.models import InboxDelivery

Sessions = async_sessionmaker[AsyncSession]


async def store(engine: AsyncEngine, keys: list[str], now: datetime) -> set[str]:
    """Store one batch as the inbox writer does; return the keys it found new."""
    batches = [[(key, "webhook", "{}") for key in keys]]
    results: list[set[str] | Exception] = []
    await inbox.store_while_waiting(
        engine,
        lambda: batches.pop() if batches else None,
        results.append,
        received_at=lambda: now,
    )
    [result] = results
    assert not isinstance(result, Exception), result
    return result


async def test_replicas_storing_the_same_keys_in_opposite_orders_both_succeed(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    now = datetime.now(UTC)
    other = create_engine(engine.url)  # the other replica, with connections of its own
    try:
        for round_ in range(10):
            keys = [f"r{round_}-k{n:03}" for n in range(300)]
            # Each batch takes its keys' unique-index entries in its own order: in opposite
            # orders at once, PostgreSQL fails one of the two as a deadlock; it is stored again.
            first, second = await asyncio.gather(
                store(engine, keys, now), store(other, keys[::-1], now)
            )
            assert first | second == set(keys)
            assert not first & second  # each stored once, by whichever came first
    finally:
        await other.dispose()
    async with sessions() as session:
        count = (await session.exec(select(func.count()).select_from(InboxDelivery))).one()
    assert count == 3000
