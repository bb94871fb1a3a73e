"""The daily digest: its figures on each engine, and one queued message per UTC day."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import cases
from storage.models import Account, CaseStatus, OutboxKind, OutboxMessage
from storage.reports import Tally
from tests.conftest import FrozenClock
from workflows.clock import how_long
from workflows.digest import (
    Digest,
    OldestCase,
    build_digest,
    digest_key,
    digest_lines,
    digest_payload,
    queue_digest,
)
from workflows.stats import NO_OUTREACH

Sessions = async_sessionmaker[AsyncSession]
NOW = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
H, D = timedelta(hours=1), timedelta(days=1)


async def add_case(
    session: AsyncSession,
    account_id: str,
    *,
    opened: timedelta,
    kind: str = "reauth",
    email: str | None = None,
    billing_state: str | None = None,
    resolved: timedelta | None = None,
    resolved_by: str = "nylas",
    state_after: str = "valid",
) -> int:
    """An account and a case opened ``opened`` before NOW, resolved ``resolved`` before NOW."""
    session.add(
        Account(
            id=account_id,
            api_version="v2",
            email=email if email is not None else f"{account_id}@example.com",
            billing_state=billing_state,
            first_seen_at=NOW - opened,
            updated_at=NOW,
        )
    )
    await session.flush()
    case = await cases.open_case(
        session, account_id=account_id, kind=kind, state="invalid", now=NOW - opened
    )
    assert case is not None and case.id is not None
    if resolved is not None:
        case.status, case.resolved_at, case.resolved_by = (
            CaseStatus.RESOLVED,
            NOW - resolved,
            resolved_by,
        )
        session.add(case)
        await cases.record_event(
            session,
            actor=resolved_by,
            action="resolved",
            at=NOW - resolved,
            case_id=case.id,
            account_id=account_id,
            details={"state": state_after},
        )
    return case.id


async def test_an_empty_database_makes_a_quiet_digest(sessions: Sessions) -> None:
    async with sessions() as session:
        digest = await build_digest(session, now=NOW)
    assert digest == Digest(NOW, 0, (), None, 0, 0, 0, NO_OUTREACH)
    assert digest_lines(digest) == [
        "Open: no cases. Every tracked mailbox is syncing.",
        "Resolved in the last 24 h: 0, of which 0 recovered without an operator.",
        "Outreach in the last 24 h: no outreach yet.",
    ]


async def test_the_figures_count_what_is_open_and_what_the_last_day_resolved(
    sessions: Sessions,
) -> None:
    async with sessions() as session, session.begin():
        oldest = await add_case(session, "a-old", opened=3 * D + 4 * H, billing_state="paid")
        await add_case(session, "a-paid", opened=2 * H, billing_state="paid")
        await add_case(session, "a-free", opened=1 * H, billing_state="cancelled")
        await add_case(session, "a-stop", opened=5 * H, kind="stopped")
        # Resolved within the last day: by itself, by hand, and by deletion.
        await add_case(session, "r-self", opened=2 * D, resolved=2 * H)
        await add_case(session, "r-hand", opened=D, resolved=3 * H, resolved_by="slack:U0ANA")
        await add_case(session, "r-gone", opened=D, resolved=D, state_after="deleted")
        # Resolved before the last day: not counted.
        await add_case(session, "r-old", opened=3 * D, resolved=D + H)
    async with sessions() as session:
        digest = await build_digest(session, now=NOW)
    assert digest.open_total == 4
    assert digest.open_by_kind == (Tally("reauth", 3), Tally("stopped", 1))
    assert digest.oldest == OldestCase(oldest, "a-old", "a-old@example.com", 3 * D + 4 * H)
    assert (digest.resolved, digest.recovered) == (3, 1)  # "r-gone" ends exactly 24 h ago
    assert digest.billed == 2
    assert digest_lines(digest) == [
        "Open: 4 cases (3 need re-authentication, 1 sync stopped).",
        "Oldest open: case #1, a-old@example.com (account a-old), open for 3 d 4 h.",
        "Resolved in the last 24 h: 3, of which 1 recovered without an operator.",
        "Outreach in the last 24 h: no outreach yet.",
        "Still billed by Nylas: 2 open cases.",
    ]


async def test_an_oldest_case_without_an_email_says_so(sessions: Sessions) -> None:
    async with sessions() as session, session.begin():
        await add_case(session, "g-1", opened=45 * timedelta(minutes=1), email="")
    async with sessions() as session:
        digest = await build_digest(session, now=NOW)
    assert digest.oldest is not None and digest.oldest.age == timedelta(minutes=45)
    assert "case #1, email not known (account g-1), open for 45 min" in digest_lines(digest)[1]


async def notices(sessions: Sessions) -> list[OutboxMessage]:
    async with sessions() as session:
        stmt = select(OutboxMessage).where(col(OutboxMessage.kind) == OutboxKind.NOTICE)
        return list((await session.exec(stmt.order_by(col(OutboxMessage.id)))).all())


async def test_one_digest_is_queued_per_utc_day(sessions: Sessions) -> None:
    clock = FrozenClock(NOW)
    async with sessions() as session, session.begin():
        await add_case(session, "a-1", opened=H)
    assert await queue_digest(sessions, now=clock(), channel="C0ALERTS") is True
    # A restart, or another replica, on the same day queues nothing more.
    assert await queue_digest(sessions, now=clock.advance(hours=14), channel="C0ALERTS") is False
    assert await queue_digest(sessions, now=clock.advance(minutes=59), channel="C0X") is False
    # 2026-11-03 00:59 at UTC+2 is still 2026-11-02 in UTC.
    plus_two = clock().astimezone(timezone(timedelta(hours=2)))
    assert await queue_digest(sessions, now=plus_two, channel="C0ALERTS") is False
    assert await queue_digest(sessions, now=clock.advance(minutes=2), channel="C0ALERTS") is True

    first, second = await notices(sessions)
    assert (first.dedupe_key, second.dedupe_key) == ("digest:2026-11-02", "digest:2026-11-03")
    assert (first.channel, first.case_id, first.status) == ("C0ALERTS", None, "pending")
    assert first.payload == {
        "title": "reauthbot daily digest, 2026-11-02",
        "text": "reauthbot daily digest: 1 open case, 0 resolved in the last 24 h",
        "lines": [
            "Open: 1 case (1 need re-authentication).",
            "Oldest open: case #1, a-1@example.com (account a-1), open for 1 h.",
            "Resolved in the last 24 h: 0, of which 0 recovered without an operator.",
            "Outreach in the last 24 h: no outreach yet.",
        ],
    }
    assert digest_key(plus_two) == "digest:2026-11-02"


async def test_concurrent_runs_queue_one_digest(sessions: Sessions) -> None:
    # As two replicas whose schedulers fire at the same moment: the database settles it.
    async with sessions() as session, session.begin():
        await add_case(session, "a-1", opened=H)
    results = await asyncio.gather(
        *(queue_digest(sessions, now=NOW, channel="C0ALERTS") for _ in range(4))
    )
    assert sorted(results) == [False, False, False, True]
    assert [m.dedupe_key for m in await notices(sessions)] == ["digest:2026-11-02"]


def test_payload_is_plain_json_data() -> None:
    digest = Digest(
        NOW, 1, (Tally("reauth", 1),), OldestCase(7, "g-7", "<!channel>", H), 0, 0, 0, NO_OUTREACH
    )
    payload = digest_payload(digest)
    # Kept as typed: the sinks escape it when they render it.
    assert "case #7, <!channel> (account g-7)" in payload["lines"][1]


def test_ages_read_the_way_people_say_them() -> None:
    minute = timedelta(minutes=1)
    assert how_long(timedelta(seconds=59)) == "0 min"
    assert how_long(45 * minute) == "45 min"
    assert how_long(H) == "1 h"
    assert how_long(5 * H + 10 * minute) == "5 h 10 min"
    assert how_long(D) == "1 d"
    assert how_long(3 * D + 4 * H + 59 * minute) == "3 d 4 h"
    assert how_long(-minute) == "0 min"
