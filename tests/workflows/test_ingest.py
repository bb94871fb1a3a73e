"""The ingest worker's batches: one transaction for many deliveries, and a failing one left out."""

from __future__ import annotations

import json

from sqlalchemy import event
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import inbox
from storage.models import Case, InboxDelivery, InboxStatus
from tests.conftest import FrozenClock
from workflows import ingest
from workflows.nylas import samples, webhooks

Sessions = async_sessionmaker[AsyncSession]


def route(email: str | None) -> str:
    return "C0ALERTS"


async def store_expiries(sessions: Sessions, clock: FrozenClock, grants: list[str]) -> None:
    entries = []
    for grant in grants:
        payload = samples.v3_notification(
            "grant.expired", grant_id=grant, email=f"{grant}@example.com", at=clock()
        )
        entries += webhooks.split("v3", json.dumps(payload).encode())
    async with sessions() as session, session.begin():
        await inbox.add_deliveries(
            session,
            entries=[(e.dedupe_key, e.source, e.body) for e in entries],
            received_at=clock(),
        )


async def state(sessions: Sessions) -> tuple[list[str], dict[str, tuple[str, int, bool]]]:
    async with sessions() as session:
        cases = (await session.exec(select(Case).order_by(col(Case.id)))).all()
        deliveries = (await session.exec(select(InboxDelivery))).all()
    accounts = [c.account_id for c in cases]
    by_grant = {
        json.loads(d.body)["data"]["object"]["grant_id"]: (d.status, d.attempts, bool(d.last_error))
        for d in deliveries
    }
    return accounts, by_grant


async def test_a_batch_is_applied_in_one_transaction(sessions: Sessions) -> None:
    clock = FrozenClock()
    await store_expiries(sessions, clock, ["g-1", "g-2", "g-3"])

    assert await ingest.drain_inbox(sessions, nylas=None, clock=clock, route=route) == 3

    accounts, deliveries = await state(sessions)
    assert accounts == ["g-1", "g-2", "g-3"]
    assert set(deliveries.values()) == {(InboxStatus.DONE, 1, False)}


async def test_a_delivery_that_fails_is_left_out_and_the_others_are_applied(
    sessions: Sessions,
) -> None:
    clock = FrozenClock()
    await store_expiries(sessions, clock, ["g-1", "g-2", "g-3"])

    def fails_for_g2(email: str | None) -> str:
        # Routing g-2's alert fails: the batch fails its stage, and each delivery is then
        # applied alone.
        if email == "g-2@example.com":
            raise RuntimeError("cannot route g-2")
        return "C0ALERTS"

    await ingest.drain_inbox(sessions, nylas=None, clock=clock, route=fails_for_g2)

    accounts, deliveries = await state(sessions)
    assert accounts == ["g-1", "g-3"]  # nothing of g-2 was kept
    assert deliveries["g-1"] == deliveries["g-3"] == (InboxStatus.DONE, 1, False)
    assert deliveries["g-2"] == (InboxStatus.PENDING, 1, True)  # to be retried later

    clock.advance(minutes=1)
    await ingest.drain_inbox(sessions, nylas=None, clock=clock, route=route)
    accounts, deliveries = await state(sessions)
    assert accounts == ["g-1", "g-3", "g-2"]
    assert deliveries["g-2"][0] == InboxStatus.DONE


async def test_while_deliveries_contend_for_the_write_lock_transactions_are_short(
    sessions: Sessions,
) -> None:
    clock = FrozenClock()
    grants = [f"g-{n}" for n in range(20)]
    await store_expiries(sessions, clock, grants)
    commits: list[int] = []
    engine = sessions.kw["bind"].sync_engine
    count = lambda conn: commits.append(1)  # noqa: E731
    event.listen(engine, "commit", count)
    try:
        looked_at = await ingest.drain_inbox(
            sessions, nylas=None, clock=clock, route=route, contended=lambda: True
        )
    finally:
        event.remove(engine, "commit", count)

    assert looked_at == 20
    # Twenty deliveries, at most PER_TRANSACTION_CONTENDED (8) a transaction: three commits,
    # where one transaction would take them all when nothing else waits for the lock.
    assert ingest.PER_TRANSACTION_CONTENDED == 8 < 20 <= ingest.PER_TRANSACTION
    assert len(commits) == 3
    accounts, deliveries = await state(sessions)
    assert sorted(accounts) == sorted(grants)
    assert set(deliveries.values()) == {(InboxStatus.DONE, 1, False)}


async def test_saturated_and_contended_a_pass_reads_no_more_than_one_transaction_takes(
    sessions: Sessions,
) -> None:
    clock = FrozenClock()
    grants = [f"g-{n}" for n in range(20)]
    await store_expiries(sessions, clock, grants)
    looked_at = await ingest.drain_inbox(
        sessions,
        nylas=None,
        clock=clock,
        route=route,
        saturated=lambda: True,
        contended=lambda: True,
    )
    # Eight read and applied, one transaction's worth; the rest waits, unread, for later.
    assert looked_at == ingest.PER_TRANSACTION_CONTENDED == 8
    _, deliveries = await state(sessions)
    statuses = [status for status, _, _ in deliveries.values()]
    assert statuses.count(InboxStatus.DONE) == 8
    assert statuses.count(InboxStatus.PENDING) == 12


async def test_without_contention_a_pass_is_one_transaction(sessions: Sessions) -> None:
    clock = FrozenClock()
    await store_expiries(sessions, clock, [f"g-{n}" for n in range(20)])
    commits: list[int] = []
    engine = sessions.kw["bind"].sync_engine
    count = lambda conn: commits.append(1)  # noqa: E731
    event.listen(engine, "commit", count)
    try:
        await ingest.drain_inbox(sessions, nylas=None, clock=clock, route=route)
    finally:
        event.remove(engine, "commit", count)
    assert len(commits) == 1
