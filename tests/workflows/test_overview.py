"""What the Home tab shows one operator, read from the database on each engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import cases, reports
from storage.models import Account, CaseStatus
from storage.reports import Tally
from workflows.overview import overview

Sessions = async_sessionmaker[AsyncSession]
NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
H = timedelta(hours=1)


async def add_case(
    session: AsyncSession,
    account_id: str,
    *,
    opened: timedelta,
    status: str = CaseStatus.OPEN,
    acknowledged_by: str | None = None,
    kind: str = "reauth",
) -> int:
    session.add(
        Account(
            id=account_id,
            api_version="v3",
            email=f"{account_id}@example.com",
            first_seen_at=NOW,
            updated_at=NOW,
        )
    )
    await session.flush()
    case = await cases.open_case(
        session, account_id=account_id, kind=kind, state="invalid", now=NOW - opened
    )
    assert case is not None and case.id is not None
    case.status, case.acknowledged_by = status, acknowledged_by
    if status == CaseStatus.RESOLVED:
        case.resolved_at = NOW
    session.add(case)
    await session.flush()
    return case.id


async def test_nothing_open_is_an_empty_overview(sessions: Sessions) -> None:
    async with sessions() as session:
        found = await overview(session, actor="slack:U0ANA")
    assert (found.mine, found.newest, found.by_status, found.by_kind) == ((), (), (), ())
    assert found.oldest_unacknowledged is None and found.open_total == 0


async def test_the_viewers_cases_and_the_open_queue(sessions: Sessions) -> None:
    ana, bob = "slack:U0ANA", "slack:U0BOB"
    async with sessions() as session, session.begin():
        await add_case(session, "ana-1", opened=9 * H, status="acknowledged", acknowledged_by=ana)
        await add_case(session, "ana-2", opened=2 * H, status="snoozed", acknowledged_by=ana)
        await add_case(session, "ana-old", opened=20 * H, status="resolved", acknowledged_by=ana)
        await add_case(session, "bob-1", opened=8 * H, status="acknowledged", acknowledged_by=bob)
        await add_case(session, "open-1", opened=5 * H, kind="stopped")
        await add_case(session, "open-2", opened=1 * H)
        # Snoozed before anyone acknowledged it: someone did look, so it is not "waiting".
        await add_case(session, "snoozed", opened=30 * H, status="snoozed")
    async with sessions() as session:
        found = await overview(session, actor=ana, mine=1, newest=3)
        everyone = await overview(session, actor="slack:U0NONE")
    assert [a.id for _, a in found.mine] == ["ana-2"] and found.more_mine
    assert [a.id for _, a in found.newest] == ["open-2", "ana-2", "open-1"] and found.more_open
    assert found.by_status == (Tally("acknowledged", 2), Tally("open", 2), Tally("snoozed", 2))
    assert found.by_kind == (Tally("reauth", 5), Tally("stopped", 1))
    assert found.open_total == 6
    assert found.oldest_unacknowledged is not None
    assert found.oldest_unacknowledged[1].id == "open-1"
    assert everyone.mine == () and not everyone.more_mine


async def test_oldest_open_case_is_the_first_opened_unresolved_one(sessions: Sessions) -> None:
    async with sessions() as session, session.begin():
        await add_case(session, "gone", opened=50 * H, status="resolved")
        await add_case(session, "acked", opened=40 * H, status="acknowledged")
        first = await add_case(session, "same-time-1", opened=10 * H)
        await add_case(session, "same-time-2", opened=10 * H)
    async with sessions() as session:
        any_status = await reports.oldest_open_case(session)
        open_only = await reports.oldest_open_case(session, statuses=["open"])
        none = await reports.oldest_open_case(session, statuses=["waiting_on_user"])
    assert any_status is not None and any_status[1].id == "acked"
    assert open_only is not None and open_only[0].id == first  # a tie goes to the lower number
    assert none is None
