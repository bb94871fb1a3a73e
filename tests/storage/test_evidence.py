"""The diagnosis' queries by domain: the same answers read either way, and a big domain read
from the cases of the window, never from its accounts."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import evidence
from storage.models import Account, Case, CaseEvent, CaseKind

Sessions = async_sessionmaker[AsyncSession]
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
M, D = timedelta(minutes=1), timedelta(days=1)
KINDS = (CaseKind.REAUTH, CaseKind.STOPPED)
# (account, kind, went bad, opened): the accounts of acme.example with a case.
HISTORY = [
    ("a1", CaseKind.REAUTH, T0, T0),
    ("a2", CaseKind.REAUTH, T0 - 10 * M, T0 - 10 * M),
    ("a2", CaseKind.STOPPED, T0 + 5 * M, T0 + 6 * M),  # a second case of one account
    ("a3", CaseKind.STOPPED, T0 + 20 * M, T0 + 25 * M),
    ("a7", CaseKind.REAUTH, T0 - 2 * D, T0 + 10 * M),  # opened in the window, went bad before
    ("a4", CaseKind.REAUTH, T0 + 40 * M, T0 + 40 * M),  # after the window
    ("a5", CaseKind.SUPPORT, T0, T0),  # not a kind that went bad
    ("a6", CaseKind.REAUTH, T0 - 40 * D, T0 - 40 * D),  # before the 30 days
]


async def make_history(sessions: Sessions, *, quiet_accounts: int) -> None:
    """Cases at acme.example (and one elsewhere), among ``quiet_accounts`` more accounts."""
    rows: list[dict[str, Any]] = [
        {"id": f"q{n}", "email": f"q{n}@acme.example"} for n in range(quiet_accounts)
    ]
    rows += [{"id": f"a{n}", "email": f"user{n}@Acme.example"} for n in range(1, 8)]
    rows.append({"id": "b1", "email": "bo@other.example"})
    async with sessions() as session, session.begin():
        await session.exec(
            sa.insert(Account),
            params=[
                {
                    **row,
                    "api_version": "v3",
                    "email_domain": row["email"].rsplit("@", 1)[1].lower(),
                    "first_seen_at": T0 - 60 * D,
                    "updated_at": T0 - 60 * D,
                    "details": {},
                }
                for row in rows
            ],
        )
        history = [*HISTORY, ("b1", CaseKind.REAUTH, T0, T0)]
        for account_id, kind, went_bad, opened in history:
            # One open case per account: a2's first one is over.
            status = "resolved" if (account_id, kind) == ("a2", CaseKind.REAUTH) else "open"
            session.add(
                Case(
                    account_id=account_id,
                    kind=kind,
                    status=status,
                    opened_at=opened,
                    updated_at=opened,
                    broken_since=went_bad,
                )
            )


async def ask(sessions: Sessions) -> tuple[evidence.Peers, evidence.Tally, evidence.Tally]:
    async with sessions() as session:
        peers = await evidence.domain_peers(
            session,
            domain="ACME.example",
            other_than="a1",
            start=T0 - 30 * M,
            end=T0 + 30 * M,
            kinds=KINDS,
        )
        month = await evidence.count_cases(session, since=T0 - 30 * D, domain="acme.example")
        case_a6 = (await session.exec(select(Case.id).where(Case.account_id == "a6"))).one()
        including = await evidence.count_cases(
            session, since=T0 - 30 * D, domain="acme.example", including=case_a6
        )
    return peers, month, including


EXPECTED = (
    # a2 (twice) and a3 went bad within 30 minutes of T0; a1 is the one diagnosed.
    evidence.Peers(2, T0 - 10 * M, T0 + 20 * M),
    evidence.Tally(7, 6),  # a6's case opened 40 days ago
    evidence.Tally(8, 7),
)


@pytest.mark.parametrize("read_from", ["accounts", "cases"])
async def test_a_domain_gives_the_same_answers_read_either_way(
    sessions: Sessions, monkeypatch: pytest.MonkeyPatch, read_from: str
) -> None:
    await make_history(sessions, quiet_accounts=20)
    if read_from == "cases":
        monkeypatch.setattr(evidence, "SMALL_DOMAIN", 5)
    assert await ask(sessions) == EXPECTED


@pytest.fixture
def statements(engine: AsyncEngine) -> Iterator[list[tuple[str, Any]]]:
    """Every statement sent to the database, with its parameters."""
    sent: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    sa.event.listen(engine.sync_engine, "before_cursor_execute", record)
    yield sent
    sa.event.remove(engine.sync_engine, "before_cursor_execute", record)


async def test_a_big_domain_is_read_from_the_cases_of_the_window(
    sessions: Sessions, engine: AsyncEngine, statements: list[tuple[str, Any]]
) -> None:
    await make_history(sessions, quiet_accounts=evidence.SMALL_DOMAIN)
    statements.clear()
    assert await ask(sessions) == EXPECTED
    queries = [(sql, params) for sql, params in statements if "FROM cases" in sql]
    assert len(queries) == 4  # the three questions, and the case's id
    explain = "EXPLAIN QUERY PLAN " if engine.dialect.name == "sqlite" else "EXPLAIN "
    async with engine.connect() as conn:
        for sql, params in queries:
            plan = " / ".join(
                str(row[-1]) for row in await conn.exec_driver_sql(explain + sql, params)
            )
            # Never a walk over the domain's thousands of accounts for a few recent cases.
            assert "ix_accounts_email_domain" not in plan, (sql, plan)


@pytest.mark.parametrize("read_from", ["accounts", "cases"])
async def test_the_recent_cases_of_a_domain_read_either_way(
    sessions: Sessions, monkeypatch: pytest.MonkeyPatch, read_from: str
) -> None:
    await make_history(sessions, quiet_accounts=20)
    if read_from == "cases":
        monkeypatch.setattr(evidence, "SMALL_DOMAIN", 5)
    async with sessions() as session:
        case_a6 = (await session.exec(select(Case.id).where(Case.account_id == "a6"))).one()
        month = await evidence.recent_cases(session, since=T0 - 30 * D, domain="ACME.example")
        including = await evidence.recent_cases(
            session, since=T0 - 30 * D, domain="acme.example", including={case_a6}
        )
    # In the order the cases were opened (by id); a6's opened 40 days ago.
    expected = [(a, k, opened, went_bad) for a, k, went_bad, opened in HISTORY]
    assert [(r.account_id, r.kind, r.opened_at, r.went_bad) for r in month] == expected[:-1]
    assert [(r.account_id, r.kind, r.opened_at, r.went_bad) for r in including] == expected
    assert [r.id for r in including] == sorted(r.id for r in including)
    assert including[-1].id == case_a6


async def test_the_recent_cases_of_some_accounts(sessions: Sessions) -> None:
    await make_history(sessions, quiet_accounts=0)
    async with sessions() as session:
        rows = await evidence.recent_cases(
            session, since=T0 - 30 * D, account_ids={"a2", "b1", "a6", "q0"}
        )
        none = await evidence.recent_cases(session, since=T0 - 30 * D, account_ids=set())
    assert [(r.account_id, r.kind) for r in rows] == [
        ("a2", CaseKind.REAUTH),
        ("a2", CaseKind.STOPPED),
        ("b1", CaseKind.REAUTH),
    ]
    assert none == []


async def test_the_revokes_of_some_accounts_newest_first(sessions: Sessions) -> None:
    await make_history(sessions, quiet_accounts=0)
    lines = [
        ("a1", "revoked", T0 - 120 * M),
        ("a1", "revoked", T0 - 60 * M),
        ("a1", "revoked", T0 + 60 * M),  # after the time asked about
        ("a1", "acknowledged", T0 - 30 * M),  # not a revoke
        ("a2", "revoked", T0 - 90 * M),
        ("a3", "revoked", T0 - 10 * M),  # not asked about
    ]
    async with sessions() as session, session.begin():
        for account_id, action, at in lines:
            session.add(CaseEvent(account_id=account_id, actor="cli", action=action, at=at))
    async with sessions() as session:
        found = await evidence.revokes(session, account_ids={"a1", "a2"}, until=T0)
        none = await evidence.revokes(session, account_ids=(), until=T0)
    assert [(e.account_id, e.at) for e in found] == [
        ("a1", T0 - 60 * M),
        ("a2", T0 - 90 * M),
        ("a1", T0 - 120 * M),
    ]
    assert none == []
