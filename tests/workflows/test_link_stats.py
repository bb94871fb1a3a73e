"""The outreach figures of /reauth stats and the daily digest, from cases the lifecycle made."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import actors, cases
from storage import links as store
from storage.models import CaseStatus
from tests.workflows.test_stats import NOW, WEEK, D, H, event, reauthenticated, stats
from workflows.digest import build_digest, digest_lines
from workflows.stats import OutreachFigures

Sessions = async_sessionmaker[AsyncSession]
TOKENS = iter(range(1000))


async def add_link(
    sessions: Sessions,
    case_id: int,
    made: datetime,
    *,
    sent: datetime | None = None,
    opened: datetime | None = None,
    opens: int = 1,
) -> None:
    async with sessions() as session, session.begin():
        link = await store.add(
            session,
            token=f"token-{next(TOKENS)}",
            case_id=case_id,
            created_by=actors.slack("U1"),
            now=made,
            expires_at=made + timedelta(days=7),
        )
        if sent is not None:
            link.sent_at, link.sent_via = sent, "nylas"
        if opened is not None:
            link.first_opened_at, link.last_opened_at, link.opens = opened, opened, opens
        session.add(link)


async def opened_case(sessions: Sessions, account_id: str, at: datetime, **kw: object) -> int:
    version = "v3" if account_id.startswith("g") else "v2"
    state = str(kw.pop("state", "invalid"))
    case_id = await event(
        sessions, account_id, state, at, version=version, email=f"{account_id}@example.com"
    )
    assert case_id is not None
    return case_id


async def resolve_by_hand(sessions: Sessions, case_id: int, at: datetime) -> None:
    async with sessions() as session, session.begin():
        case = await cases.get_case(session, case_id=case_id)
        assert case is not None
        case.status, case.resolved_at = CaseStatus.RESOLVED, at
        case.resolved_by, case.resolution = actors.slack("U1"), "Fixed by hand."
        session.add(case)


async def test_outreach_over_a_week(sessions: Sessions) -> None:
    s = sessions
    # c1: emailed, opened, re-authenticated 3 h after the link.
    t = NOW - 3 * D
    c1 = await opened_case(s, "g1", t - H)
    await add_link(s, c1, t, sent=t, opened=t + H)
    await event(s, "g1", "valid", t + 3 * H, version="v3", **reauthenticated())
    # c2: a second link was sent; re-authenticated 5 h after the first.
    t = NOW - 2 * D
    c2 = await opened_case(s, "g2", t - H)
    await add_link(s, c2, t)
    await add_link(s, c2, t + 2 * H, sent=t + 2 * H, opened=t + 3 * H)
    await event(s, "g2", "valid", t + 5 * H, version="v3", **reauthenticated())
    # c3: emailed, opened twice, still open.
    t = NOW - D
    c3 = await opened_case(s, "a3", t - H)
    await add_link(s, c3, t, sent=t, opened=t + H, opens=2)
    # c4: emailed, opened, then resolved by an operator by hand.
    c4 = await opened_case(s, "a4", t - H)
    await add_link(s, c4, t, sent=t, opened=t + H)
    await resolve_by_hand(s, c4, t + 2 * H)
    # c5: never sent; the poll saw the account recover 1 h after the link.
    t = NOW - 4 * D
    c5 = await opened_case(s, "a5", t - H)
    await add_link(s, c5, t)
    await event(s, "a5", "running", t + H, source="poll")
    # c6: a support case is not a re-auth case, whatever was sent.
    c6 = await opened_case(s, "a6", t, state="sync-error")
    await add_link(s, c6, t, sent=t)
    # c7: sent and re-authenticated before the week.
    t = NOW - 10 * D
    c7 = await opened_case(s, "g7", t - H)
    await add_link(s, c7, t, sent=t, opened=t + H)
    await event(s, "g7", "valid", t + 2 * H, version="v3", **reauthenticated())
    # c8: sent, then the grant was deleted: not a re-authentication.
    t = NOW - D
    c8 = await opened_case(s, "g8", t - H)
    await add_link(s, c8, t, sent=t)
    await event(s, "g8", "deleted", t + H, version="v3")
    # c9: sent, but a newer link was made and not sent yet: the newest one counts.
    c9 = await opened_case(s, "g9", t - H)
    await add_link(s, c9, t, sent=t)
    await add_link(s, c9, t + H)

    figures = (await stats(s, WEEK)).outreach
    assert figures == OutreachFigures(
        sent=5,  # c1, c2, c3, c4, c8
        fixed=2,  # c1, c2
        median_time_to_reauthenticate=3 * H,  # of 1 h (c5), 3 h (c1), 5 h (c2)
        opened_not_completed=2,  # c3, c4
    )
    assert figures.fixed_share == 2 / 5
    assert not figures.nothing


async def test_the_digest_tells_the_last_day(sessions: Sessions) -> None:
    t = NOW - 5 * H
    c1 = await opened_case(sessions, "g1", t - H)
    await add_link(sessions, c1, t, sent=t, opened=t + H)
    await event(
        sessions,
        "g1",
        "valid",
        t + 2 * H + 30 * timedelta(minutes=1),
        version="v3",
        **reauthenticated(),
    )
    c2 = await opened_case(sessions, "a2", t)
    await add_link(sessions, c2, t, sent=t, opened=t + H)
    async with sessions() as session:
        digest = await build_digest(session, now=NOW)
    assert digest.outreach == OutreachFigures(2, 1, 2 * H + 30 * timedelta(minutes=1), 1)
    assert (
        "Outreach in the last 24 h: 1 of 2 end users reached re-authenticated (50%); "
        "median 2 h 30 min from the first link to re-authentication; "
        "1 opened the link without re-authenticating."
    ) in digest_lines(digest)


async def test_an_opened_link_alone_is_told_without_a_share(sessions: Sessions) -> None:
    t = NOW - 5 * H
    case_id = await opened_case(sessions, "a1", t)
    await add_link(sessions, case_id, t, opened=t + H)
    async with sessions() as session:
        digest = await build_digest(session, now=NOW)
    assert (
        "Outreach in the last 24 h: no end user reached; "
        "1 opened the link without re-authenticating."
    ) in digest_lines(digest)
