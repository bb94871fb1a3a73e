"""The ingest worker's batches: one transaction for many deliveries, and a failing one left out."""

from __future__ import annotations

import json

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
