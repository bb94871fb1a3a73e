"""The inbox writer: group commits of webhook deliveries, and the pacing of other writers."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.inbox_writer import REST_MAX, InboxWriter, Load, paced
from storage.engine import create_engine, is_sqlite
from storage.models import InboxDelivery
from tests.conftest import FrozenClock
from workflows.nylas.webhooks import InboxEntry


async def test_background_work_rests_longer_the_harder_deliveries_arrive() -> None:
    now = 100.0
    rests: list[float] = []
    loads = iter([Load.IDLE, Load.BUSY, Load.SATURATED])

    async def step() -> int:  # a pass of the ingest worker that takes 10 ms
        nonlocal now
        now += 0.01
        return 1

    async def rest(seconds: float) -> None:
        rests.append(round(seconds, 6))

    run = paced(step, lambda: next(loads), clock=lambda: now, sleep=rest)
    for _ in range(3):
        await run()
    assert rests == [0.02, 0.08]  # none while idle, then 2x and 8x the time it worked


async def test_a_step_that_found_a_backlog_rests_less_while_deliveries_arrive() -> None:
    now = 100.0
    rests: list[float] = []
    found = iter([500, 250, 10, 500])
    loads = iter([Load.BUSY, Load.BUSY, Load.BUSY, Load.SATURATED])

    async def step() -> int:  # a pass of the ingest worker that takes 10 ms
        nonlocal now
        now += 0.01
        return next(found)

    async def rest(seconds: float) -> None:
        rests.append(round(seconds, 6))

    run = paced(step, lambda: next(loads), full=500, clock=lambda: now, sleep=rest)
    for _ in range(4):
        await run()
    # A full batch: processing lags arrival, no rest; half a batch, half the rest; a batch
    # that was nearly all there was, nearly all of it. Saturated, the rest is not shortened.
    assert rests == [0.01, 0.0196, 0.08]


async def test_a_step_that_waited_long_rests_no_more_than_the_cap() -> None:
    now = 100.0
    rests: list[float] = []

    async def step() -> int:  # a pass held up for a minute by a database that hung
        nonlocal now
        now += 60.0
        return 1

    async def rest(seconds: float) -> None:
        rests.append(seconds)

    run = paced(step, lambda: Load.SATURATED, clock=lambda: now, sleep=rest)
    await run()
    assert rests == [REST_MAX]  # not eight minutes


async def test_deliveries_arriving_faster_than_the_saturation_rate_mean_saturation(
    engine: AsyncEngine,
) -> None:
    # 100 a second here, so that a test machine reaches it: the service's is SATURATED_RATE.
    writer = InboxWriter(engine, clock=FrozenClock(), saturated_rate=100)
    stop = asyncio.Event()
    running = asyncio.create_task(writer.run(stop))
    try:
        assert writer.load() is Load.IDLE
        await writer.store([inbox_entry("one")])
        assert writer.load() is Load.BUSY  # one request
        # A dozen at once, as after another writer's transaction: they share one commit, but
        # thirteen within the last half second is a rate well below the saturation rate.
        await asyncio.gather(*(writer.store([inbox_entry(f"k{n}")]) for n in range(12)))
        assert writer.load() is Load.BUSY
        # Many at once, again and again, as when senders outpace the commits.
        for burst in range(3):
            await asyncio.gather(*(writer.store([inbox_entry(f"b{burst}-{n}")]) for n in range(20)))
        assert writer.load() is Load.SATURATED
    finally:
        stop.set()
        await running


async def test_a_delivery_not_stored_in_time_is_a_timeout_and_the_writer_goes_on(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    writer = InboxWriter(engine, clock=FrozenClock(), timeout=0.3)
    stop = asyncio.Event()
    running = asyncio.create_task(writer.run(stop))
    other = create_engine(engine.url)
    try:
        async with other.begin() as conn:  # another writer holds the lock meanwhile
            if not is_sqlite(other):
                await conn.execute(text("LOCK TABLE inbox IN EXCLUSIVE MODE"))
            started = time.monotonic()
            stuck = asyncio.create_task(writer.store([inbox_entry("stuck")]))
            await asyncio.sleep(0.05)
            queued = asyncio.create_task(writer.store([inbox_entry("queued")]))
            with pytest.raises(TimeoutError, match=r"not stored within 0\.3 s"):
                await stuck
            assert 0.3 <= time.monotonic() - started < 1.0
            with pytest.raises(TimeoutError):
                await queued
        # The commit under way goes through once the lock is free; the one waiting behind it
        # was given up, so it is not stored. Later deliveries are stored as usual.
        assert await writer.store([inbox_entry("after")]) == 1
        async with sessions() as session:
            keys = (await session.exec(select(InboxDelivery.dedupe_key))).all()
        assert sorted(keys) == ["after", "stuck"]
    finally:
        stop.set()
        await running
        await other.dispose()


def inbox_entry(key: str) -> InboxEntry:
    return InboxEntry(dedupe_key=key, source="nylas-v3", body="{}")


async def test_only_sqlite_s_one_writer_asks_others_to_step_aside(engine: AsyncEngine) -> None:
    writer = InboxWriter(engine, clock=FrozenClock())
    assert not writer.step_aside()  # nothing waits
    stop = asyncio.Event()
    stop.set()
    # Queued before the writer runs: the delivery waits for it.
    storing = asyncio.create_task(writer.store([inbox_entry("one")]))
    await asyncio.sleep(0)
    assert writer.waiting()
    assert writer.step_aside() is is_sqlite(engine)
    await writer.run(stop)  # stores what waits, then stops
    assert await storing == 1
    assert not writer.step_aside()


async def test_the_writer_lingers_for_the_next_delivery_only_while_they_pour_in(
    engine: AsyncEngine,
) -> None:
    # One a second is saturation here, so that a single request makes it.
    writer = InboxWriter(engine, clock=FrozenClock(), saturated_rate=1)
    started = time.monotonic()
    assert not await asyncio.to_thread(writer.linger, 5.0)  # idle: no wait at all
    assert time.monotonic() - started < 2.0

    stop = asyncio.Event()
    running = asyncio.create_task(writer.run(stop))
    await writer.store([inbox_entry("one")])
    stop.set()
    await running
    assert writer.load() is Load.SATURATED
    # The writer's thread waits; a delivery arriving meanwhile ends the wait at once.
    lingering = asyncio.create_task(asyncio.to_thread(writer.linger, 30.0))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    arriving = asyncio.create_task(writer.store([inbox_entry("two")]))
    assert await lingering is True
    assert time.monotonic() - started < 10.0
    arriving.cancel()  # the writer stopped: nobody will store it
    with pytest.raises(asyncio.CancelledError):
        await arriving
