"""Queries behind a case's diagnosis: our own revokes, domain peers, and how often it recurs.

Every query gives the same answer on SQLite and on PostgreSQL. A domain is matched on the
indexed ``accounts.email_domain`` column.

A domain's queries are read one of two ways, and the engine is not left to choose: its planner
guesses the size of a domain and of a window (with no statistics, or none yet for rows just
written) and drove from a domain of 100,000 accounts for the few cases of the last minutes.
A small domain (at most ``SMALL_DOMAIN`` accounts, as during a storm of many small domains) is
read from its accounts, each one's cases found by account; a bigger one from the cases of the
window (the index on ``opened_at``), each one's account looked up by id. How big a domain is
is asked once per transaction.

Cases opened together (a reconciliation's page) are diagnosed in one go: ``recent_cases`` and
``revokes`` read what their findings count for all of them at once, one query per domain
rather than several per case.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import Account, Case, CaseEvent

# Past this many accounts, a domain's accounts cost more to walk than the cases of a window.
SMALL_DOMAIN = 2000
_BIG_DOMAINS = "reauthbot.evidence_big_domains"


@dataclass(frozen=True, slots=True)
class Peers:
    """Other accounts of a domain that went bad in a window, and the first and last time."""

    accounts: int
    first: datetime | None
    last: datetime | None


@dataclass(frozen=True, slots=True)
class Tally:
    """How many cases, of how many distinct accounts."""

    cases: int
    accounts: int


@dataclass(frozen=True, slots=True)
class CaseRow:
    """What a diagnosis counts of one case."""

    id: int
    account_id: str
    kind: str
    opened_at: datetime
    went_bad: datetime


def _of_domain(domain: str) -> Any:
    # The indexed column: a storm diagnoses every one of its cases against its domain.
    return col(Account.email_domain) == domain.lower()


async def _is_big(session: AsyncSession, domain: str) -> bool:
    """Whether the domain has more than ``SMALL_DOMAIN`` accounts (asked once per transaction)."""
    known: dict[str, bool] = session.info.setdefault(_BIG_DOMAINS, {})
    key = domain.lower()
    if key not in known:
        some = select(col(Account.id)).where(_of_domain(key)).limit(SMALL_DOMAIN + 1).subquery()
        found = (await session.exec(select(sa.func.count()).select_from(some))).one()
        known[key] = found > SMALL_DOMAIN
    return known[key]


async def _cases_of_domain(session: AsyncSession, stmt: Any, domain: str) -> Any:
    """Restrict a query on cases to the accounts of ``domain``, read the cheaper way."""
    if await _is_big(session, domain):
        # A correlated lookup: the engine can only drive from the cases the query selects.
        of_case = (
            select(col(Account.email_domain))
            .where(col(Account.id) == col(Case.account_id))
            .scalar_subquery()
        )
        return stmt.where(of_case == domain.lower())
    return stmt.join(Account, col(Account.id) == col(Case.account_id)).where(_of_domain(domain))


@event.listens_for(Session, "after_soft_rollback")
def _forget_rolled_back(session: Session, previous: SessionTransaction) -> None:
    session.info.pop(_BIG_DOMAINS, None)


@event.listens_for(Session, "after_commit")
def _forget_committed(session: Session) -> None:
    session.info.pop(_BIG_DOMAINS, None)


def _went_bad() -> Any:
    # broken_since is set by every opener; opened_at stands in for rows written before it was.
    return sa.func.coalesce(col(Case.broken_since), col(Case.opened_at))


async def latest_revoke(
    session: AsyncSession, *, account_id: str, until: datetime
) -> CaseEvent | None:
    """Return the audit event of the account's latest revoke at or before ``until``, or None."""
    stmt = (
        select(CaseEvent)
        .where(
            col(CaseEvent.account_id) == account_id,
            col(CaseEvent.action) == "revoked",
            col(CaseEvent.at) <= until,
        )
        .order_by(col(CaseEvent.at).desc(), col(CaseEvent.id).desc())
        .limit(1)
    )
    return (await session.exec(stmt)).first()


async def domain_peers(
    session: AsyncSession,
    *,
    domain: str,
    other_than: str,
    start: datetime,
    end: datetime,
    kinds: Collection[str],
) -> Peers:
    """Count the other accounts of ``domain`` whose case went bad between ``start`` and ``end``.

    Only cases of ``kinds`` count; ``other_than`` is the account being diagnosed.
    """
    went_bad = _went_bad()
    stmt = (
        select(
            sa.func.count(sa.distinct(col(Case.account_id))),
            sa.func.min(went_bad),
            sa.func.max(went_bad),
        )
        .select_from(Case)
        .where(
            col(Case.account_id) != other_than,
            col(Case.kind).in_(list(kinds)),
            # Implied (a case goes bad before it opens), and what the index on opened_at serves.
            col(Case.opened_at) >= start,
            went_bad >= start,
            went_bad <= end,
        )
    )
    stmt = await _cases_of_domain(session, stmt, domain)
    count, first, last = (await session.exec(stmt)).one()
    return Peers(int(count), first, last)


async def count_cases(
    session: AsyncSession,
    *,
    since: datetime,
    account_id: str | None = None,
    domain: str | None = None,
    including: int | None = None,
) -> Tally:
    """Count the cases opened since ``since``, of one account or one domain (or all).

    ``including`` names a case counted even if it opened earlier: the one being diagnosed.
    """
    recent = col(Case.opened_at) >= since
    if including is not None:
        recent = recent | (col(Case.id) == including)
    stmt = (
        select(sa.func.count(), sa.func.count(sa.distinct(col(Case.account_id))))
        .select_from(Case)
        .where(recent)
    )
    if account_id is not None:
        stmt = stmt.where(col(Case.account_id) == account_id)
    if domain is not None:
        stmt = await _cases_of_domain(session, stmt, domain)
    cases, accounts = (await session.exec(stmt)).one()
    return Tally(int(cases), int(accounts))


async def revokes(
    session: AsyncSession, *, account_ids: Collection[str], until: datetime
) -> list[CaseEvent]:
    """Return the audit events of the accounts' revokes at or before ``until``, newest first."""
    if not account_ids:
        return []
    stmt = (
        select(CaseEvent)
        .where(
            col(CaseEvent.account_id).in_(sorted(account_ids)),
            col(CaseEvent.action) == "revoked",
            col(CaseEvent.at) <= until,
        )
        .order_by(col(CaseEvent.at).desc(), col(CaseEvent.id).desc())
    )
    return list((await session.exec(stmt)).all())


async def recent_cases(
    session: AsyncSession,
    *,
    since: datetime,
    account_ids: Collection[str] | None = None,
    domain: str | None = None,
    including: Collection[int] = (),
) -> list[CaseRow]:
    """Return the cases opened since ``since``, of some accounts or of one domain, by id.

    The cases of ``including`` are returned even if they opened earlier: those being diagnosed.
    """
    recent = col(Case.opened_at) >= since
    if including:
        recent = recent | col(Case.id).in_(sorted(including))
    columns = (col(Case.id), col(Case.account_id), col(Case.kind), col(Case.opened_at))
    stmt: Any = sa.select(*columns, _went_bad()).where(recent)
    if account_ids is not None:
        if not account_ids:
            return []
        stmt = stmt.where(col(Case.account_id).in_(sorted(account_ids)))
    if domain is not None:
        stmt = await _cases_of_domain(session, stmt, domain)
    rows = (await session.exec(stmt.order_by(col(Case.id)))).all()
    return [CaseRow(int(i), a, k, opened, bad) for i, a, k, opened, bad in rows]
