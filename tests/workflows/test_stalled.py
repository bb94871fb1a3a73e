"""Stalled links: opened a day ago, the case still waiting, flagged once in the case's thread."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import actors, cases
from storage import links as store
from storage.models import Account, CaseEvent, CaseStatus, OutboxKind, OutboxMessage, ReauthLink
from tests.conftest import FrozenClock
from workflows.enduser import STALLED_LINE
from workflows.stalled import flag_stalled_links

Sessions = async_sessionmaker[AsyncSession]
CHANNEL = "C0ALERTS"


async def case_with_link(
    sessions: Sessions, now: datetime, *, account_id: str = "acc-1", opened: bool = True
) -> tuple[int, int]:
    """An open case of a new account with one link, opened at ``now`` if ``opened``."""
    async with sessions() as session, session.begin():
        session.add(
            Account(
                id=account_id,
                api_version="v3",
                email=f"{account_id}@example.com",
                first_seen_at=now,
                updated_at=now,
            )
        )
        await session.flush()
        case = await cases.open_case(
            session, account_id=account_id, kind="reauth", state="invalid", now=now, channel=CHANNEL
        )
        assert case is not None and case.id is not None
        link_id = await add_link(session, case.id, now, opened=opened)
        return case.id, link_id


async def add_link(session: AsyncSession, case_id: int, now: datetime, *, opened: bool) -> int:
    link = await store.add(
        session,
        token=f"token-{case_id}-{now.timestamp()}",
        case_id=case_id,
        created_by=actors.slack("U0ANA"),
        now=now,
        expires_at=now + timedelta(days=7),
    )
    if opened:
        link.first_opened_at = link.last_opened_at = now
        link.opens = 1
    assert link.id is not None
    return link.id


async def stalled(sessions: Sessions) -> dict[int, datetime | None]:
    async with sessions() as session:
        found = (await session.exec(select(ReauthLink))).all()
    return {link.id or 0: link.stalled_at for link in found}


async def thread_lines(sessions: Sessions, case_id: int) -> list[str]:
    async with sessions() as session:
        stmt = select(OutboxMessage).where(
            col(OutboxMessage.case_id) == case_id, col(OutboxMessage.kind) == OutboxKind.THREAD
        )
        return [str(m.payload["text"]) for m in (await session.exec(stmt)).all()]


async def test_a_link_opened_a_day_ago_is_flagged_once(
    sessions: Sessions, clock: FrozenClock
) -> None:
    case_id, link_id = await case_with_link(sessions, clock())
    clock.advance(hours=23, minutes=59)
    assert await flag_stalled_links(sessions, now=clock()) == 0
    assert await stalled(sessions) == {link_id: None}
    flagged_at = clock.advance(minutes=1)
    assert await flag_stalled_links(sessions, now=clock()) == 1
    assert await stalled(sessions) == {link_id: flagged_at}
    clock.advance(minutes=10)
    assert await flag_stalled_links(sessions, now=clock()) == 0
    assert await thread_lines(sessions, case_id) == [STALLED_LINE]
    async with sessions() as session:
        events = (await session.exec(select(CaseEvent))).all()
        updates = (
            await session.exec(
                select(OutboxMessage).where(col(OutboxMessage.kind) == OutboxKind.UPDATE)
            )
        ).all()
    assert [(e.action, e.actor, e.details["link"]) for e in events] == [
        ("link_stalled", actors.SYSTEM, link_id)
    ]
    assert len(updates) == 1  # the card says it too


async def test_a_resolved_case_is_not_flagged(sessions: Sessions, clock: FrozenClock) -> None:
    case_id, link_id = await case_with_link(sessions, clock())
    async with sessions() as session, session.begin():
        case = await cases.get_case(session, case_id=case_id)
        assert case is not None
        case.status, case.resolved_at, case.resolved_by = CaseStatus.RESOLVED, clock(), "nylas"
        session.add(case)
    clock.advance(days=2)
    assert await flag_stalled_links(sessions, now=clock()) == 0
    assert await stalled(sessions) == {link_id: None}


async def test_only_the_newest_link_of_a_case_counts(
    sessions: Sessions, clock: FrozenClock
) -> None:
    start = clock()
    case_id, old = await case_with_link(sessions, start)
    clock.advance(hours=20)
    async with sessions() as session, session.begin():
        new = await add_link(session, case_id, clock(), opened=False)
    clock.advance(days=3)
    assert await flag_stalled_links(sessions, now=clock()) == 0
    assert await stalled(sessions) == {old: None, new: None}


async def test_links_never_opened_are_not_flagged(sessions: Sessions, clock: FrozenClock) -> None:
    await case_with_link(sessions, clock(), opened=False)
    clock.advance(days=3)
    assert await flag_stalled_links(sessions, now=clock()) == 0


async def test_every_waiting_case_is_flagged_across_batches(
    sessions: Sessions, clock: FrozenClock
) -> None:
    for n in range(5):
        await case_with_link(sessions, clock(), account_id=f"acc-{n}")
    clock.advance(days=1)
    assert await flag_stalled_links(sessions, now=clock(), limit=2) == 5
    assert None not in (await stalled(sessions)).values()
