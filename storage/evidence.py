"""Queries behind a case's diagnosis: our own revokes, domain peers, and how often it recurs.

Every query gives the same answer on SQLite and on PostgreSQL. A domain is matched with
``lower(email) LIKE '%@domain'`` and an explicit escape character, which both engines honour.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import Account, Case, CaseEvent


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


def _of_domain(domain: str) -> Any:
    # The indexed column: a storm diagnoses every one of its cases against its domain.
    return col(Account.email_domain) == domain.lower()


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
        .join(Account, col(Account.id) == col(Case.account_id))
        .where(
            _of_domain(domain),
            col(Case.account_id) != other_than,
            col(Case.kind).in_(list(kinds)),
            went_bad >= start,
            went_bad <= end,
        )
    )
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
        .join(Account, col(Account.id) == col(Case.account_id))
        .where(recent)
    )
    if account_id is not None:
        stmt = stmt.where(col(Case.account_id) == account_id)
    if domain is not None:
        stmt = stmt.where(_of_domain(domain))
    cases, accounts = (await session.exec(stmt)).one()
    return Tally(int(cases), int(accounts))
