"""One definition of an email's domain: after the last '@', in Python, SQL and routing alike.

RFC 5321 allows an '@' inside a quoted local part, never in the domain; before, the reports
took the domain after the first '@' in SQL while the stored column and routing took the last.
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import col
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import reports
from storage.engine import create_engine, session_factory
from storage.migrate import upgrade
from storage.models import Account, domain_of
from storage.reports import ChronicDomain, Tally
from tests.storage.test_reports import NOW, accounts_of, add_account, add_case
from workflows.routing import make_router

Sessions = async_sessionmaker[AsyncSession]
QUOTED = '"a@b"@Example.com'


def test_the_domain_is_after_the_last_at_stripped_and_lower_cased() -> None:
    assert domain_of(QUOTED) == "example.com"
    assert domain_of('"x@y"@ mail.Example.com ') == "mail.example.com"
    assert domain_of('"a@b"@') is None


def test_routing_takes_the_same_domain() -> None:
    route = make_router({"example.com": "C0EXAMPLE", "b": "C0WRONG"}, "C0DEFAULT")
    assert route(QUOTED) == "C0EXAMPLE"


async def test_reports_by_domain_take_the_same_domain(sessions: Sessions) -> None:
    async with sessions() as session, session.begin():
        await add_account(session, "a1", email=QUOTED)
        await add_case(session, "a1", opened_at=NOW - timedelta(days=1), status="resolved")
        await add_case(session, "a1", opened_at=NOW)
    async with sessions() as session:
        account = await session.get(Account, "a1")
        assert account is not None and account.email_domain == "example.com"
        found, _ = await reports.list_open_cases(session, domain="EXAMPLE.com")
        assert accounts_of(found) == ["a1"]
        assert (await reports.list_open_cases(session, domain='b"@example.com'))[0] == []
        assert await reports.count_open_cases(session, by="domain") == [Tally("example.com", 1)]
        chronic = await reports.chronic_domains(
            session, since=NOW - timedelta(days=2), until=NOW, min_cases=2
        )
        assert chronic == [ChronicDomain("example.com", 2, 1)]


async def test_the_migration_rewrites_domains_taken_after_the_first_at(blank_url: str) -> None:
    engine: AsyncEngine = create_engine(blank_url)
    try:
        await upgrade(engine, "0009")
        async with session_factory(engine)() as session, session.begin():
            await add_account(session, "a1", email=QUOTED)
            await add_account(session, "a2", email="ana@Acme.com")
            # What 0006 wrote for rows that existed then: after the first '@'.
            await session.exec(
                sa.update(Account)
                .where(col(Account.id) == "a1")
                .values(email_domain='b"@example.com')
            )
        await upgrade(engine)
        async with session_factory(engine)() as session:
            rows = await session.exec(
                sa.select(col(Account.id), col(Account.email_domain)).order_by(col(Account.id))
            )
            assert list(rows) == [("a1", "example.com"), ("a2", "acme.com")]
    finally:
        await engine.dispose()
