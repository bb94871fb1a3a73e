"""Read-only queries behind ``/reauth list``, ``/reauth show`` and ``/reauth stats``.

Every query gives the same answer on SQLite and on PostgreSQL. Where the two engines need
different SQL (the domain of an email, the seconds between two timestamps) one helper builds
each. Aggregates run in the database and bring back one row per group; ties between groups are
ordered here rather than in SQL, because the engines' string collations may disagree.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage._sql import dialect_name
from storage.models import Account, ApiVersion, Case, CaseEvent, CaseStatus

# Case.id is a 32-bit integer on PostgreSQL: a larger number cannot name a case, and binding
# it would be an error there rather than no row.
MAX_CASE_NUMBER = 2**31 - 1
_CASE_NUMBER = re.compile(r"(#?)([0-9]+)")

Breakdown = Literal["kind", "status", "provider", "domain"]


@dataclass(frozen=True, slots=True)
class Tally:
    """How many cases share one value; ``key`` is None when the value is not known."""

    key: str | None
    count: int


@dataclass(frozen=True, slots=True)
class Durations:
    """How many cases reached a point and their mean time to it, rounded to the second."""

    count: int
    mean: timedelta | None


@dataclass(frozen=True, slots=True)
class ChronicAccount:
    account_id: str
    email: str | None
    cases: int


@dataclass(frozen=True, slots=True)
class ChronicDomain:
    domain: str
    cases: int
    accounts: int


# --- SQL that differs between the engines -------------------------------------------------


def _seconds_between(session: AsyncSession, start: Any, end: Any) -> Any:
    """Build the seconds from ``start`` to ``end``; SQLite keeps milliseconds of it."""
    if dialect_name(session) == "postgresql":
        return sa.extract("epoch", end - start)
    return (sa.func.julianday(end) - sa.func.julianday(start)) * 86400.0


def _unresolved() -> Any:
    return col(Case.status) != CaseStatus.RESOLVED


def _joined_account() -> Any:
    return col(Account.id) == col(Case.account_id)


def _ranked(tallies: Iterable[Tally]) -> list[Tally]:
    """Order by count, largest first, then by key with unknown keys last."""
    return sorted(tallies, key=lambda t: (-t.count, t.key is None, t.key or ""))


# --- list and show ------------------------------------------------------------------------


async def list_open_cases(
    session: AsyncSession,
    *,
    statuses: Collection[str] | None = None,
    kinds: Collection[str] | None = None,
    domain: str | None = None,
    provider: str | None = None,
    acknowledged_by: str | None = None,
    incident_id: int | None = None,
    limit: int = 10,
    offset: int = 0,
) -> tuple[list[tuple[Case, Account]], bool]:
    """Return a page of unresolved cases and their accounts, newest first, and if more follow.

    Empty or None filters match everything. ``domain`` is compared case-insensitively with the
    account's email domain (``Account.email_domain``; a leading '@' in it is ignored); ``provider``
    is compared case-insensitively; ``acknowledged_by`` is an actor (``slack:U…``), exactly;
    ``incident_id`` keeps the cases of one incident.
    """
    if limit < 1 or offset < 0:
        raise ValueError(f"limit must be at least 1 and offset at least 0, not {limit}, {offset}")
    stmt = select(Case, Account).join(Account, _joined_account()).where(_unresolved())
    if statuses:
        stmt = stmt.where(col(Case.status).in_(list(statuses)))
    if kinds:
        stmt = stmt.where(col(Case.kind).in_(list(kinds)))
    if domain is not None and domain.strip():
        wanted = domain.strip().removeprefix("@")
        stmt = stmt.where(col(Account.email_domain) == wanted.lower())
    if provider is not None and provider.strip():
        wanted = provider.strip()
        stmt = stmt.where(sa.func.lower(col(Account.provider)) == sa.func.lower(wanted))
    if acknowledged_by is not None:
        stmt = stmt.where(col(Case.acknowledged_by) == acknowledged_by)
    if incident_id is not None:
        stmt = stmt.where(col(Case.incident_id) == incident_id)
    stmt = (
        stmt.order_by(col(Case.opened_at).desc(), col(Case.id).desc())
        .offset(offset)
        .limit(limit + 1)  # one more row than asked says whether another page exists
    )
    rows = [(case, account) for case, account in (await session.exec(stmt)).all()]
    return rows[:limit], len(rows) > limit


async def oldest_open_case(
    session: AsyncSession, *, statuses: Collection[str] | None = None
) -> tuple[Case, Account] | None:
    """Return the unresolved case opened first (with ``statuses`` only, if given), or None."""
    stmt = select(Case, Account).join(Account, _joined_account()).where(_unresolved())
    if statuses:
        stmt = stmt.where(col(Case.status).in_(list(statuses)))
    stmt = stmt.order_by(col(Case.opened_at).asc(), col(Case.id).asc()).limit(1)
    row = (await session.exec(stmt)).first()
    return None if row is None else (row[0], row[1])


async def find_case(session: AsyncSession, *, ref: str) -> Case | None:
    """Find the case an operator names: "#42" or "42", an account id, or an email.

    "#42" is only ever a case number. A bare number is a case number when that case exists,
    else it is tried as an account id. An email is matched case-insensitively and may belong
    to several accounts (a duplicate). Of the cases of that account or email, the unresolved
    one wins, else the most recently opened one.
    """
    text = ref.strip()
    if not text:
        return None
    number = _CASE_NUMBER.fullmatch(text)
    if number is not None:
        case_id = int(number.group(2))
        case = await session.get(Case, case_id) if case_id <= MAX_CASE_NUMBER else None
        if case is not None or number.group(1):
            return case
    stmt = (
        select(Case)
        .join(Account, _joined_account())
        .where(
            (col(Account.id) == text) | (sa.func.lower(col(Account.email)) == sa.func.lower(text))
        )
        .order_by(
            (col(Case.status) == CaseStatus.RESOLVED).asc(),  # false, i.e. unresolved, first
            col(Case.opened_at).desc(),
            col(Case.id).desc(),
        )
        .limit(1)
    )
    return (await session.exec(stmt)).first()


async def case_history(session: AsyncSession, *, case_id: int, limit: int = 50) -> list[CaseEvent]:
    """Return the latest ``limit`` audit events of a case, oldest first."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    stmt = (
        select(CaseEvent)
        .where(col(CaseEvent.case_id) == case_id)
        .order_by(col(CaseEvent.at).desc(), col(CaseEvent.id).desc())
        .limit(limit)
    )
    return list(reversed((await session.exec(stmt)).all()))


# --- aggregates for stats -----------------------------------------------------------------


async def count_open_cases(session: AsyncSession, *, by: Breakdown) -> list[Tally]:
    """Count unresolved cases per kind, status, provider or email domain, largest first.

    Providers and domains are lower-cased; cases whose account has none are counted under None.
    """
    keys = {
        "kind": col(Case.kind),
        "status": col(Case.status),
        "provider": sa.func.lower(col(Account.provider)),
        "domain": col(Account.email_domain),
    }
    key = keys[by]
    stmt = (
        select(key, sa.func.count())
        .select_from(Case)
        .join(Account, _joined_account())
        .where(_unresolved())
        .group_by(key)
    )
    return _ranked(Tally(k, n) for k, n in (await session.exec(stmt)).all())


async def count_open_billed(session: AsyncSession, *, not_billed: Collection[str]) -> int:
    """Count unresolved cases whose account Nylas bills.

    v2: a known billing state not in ``not_billed``; v3: any grant not deleted.
    """
    v2 = (col(Account.api_version) == ApiVersion.V2) & col(Account.billing_state).not_in(
        list(not_billed)
    )
    v3 = (col(Account.api_version) == ApiVersion.V3) & (
        sa.func.coalesce(col(Account.sync_state), "") != "deleted"
    )
    stmt = (
        select(sa.func.count())
        .select_from(Case)
        .join(Account, _joined_account())
        .where(_unresolved(), v2 | v3)
    )
    return int((await session.exec(stmt)).one())


async def _durations(
    session: AsyncSession, end: Any, *, since: datetime, until: datetime
) -> Durations:
    seconds = _seconds_between(session, col(Case.opened_at), end)
    stmt = (
        select(sa.func.count(), sa.func.avg(seconds))
        .select_from(Case)
        .where(end >= since, end <= until)
    )
    count, mean = (await session.exec(stmt)).one()
    if not count or mean is None:
        return Durations(0, None)
    return Durations(int(count), timedelta(seconds=round(float(mean))))


async def time_to_acknowledge(
    session: AsyncSession, *, since: datetime, until: datetime
) -> Durations:
    """Count the cases acknowledged in ``[since, until]`` and their mean time from opening."""
    return await _durations(session, col(Case.acknowledged_at), since=since, until=until)


async def time_to_resolve(session: AsyncSession, *, since: datetime, until: datetime) -> Durations:
    """Count the cases resolved in ``[since, until]`` and their mean time from opening."""
    return await _durations(session, col(Case.resolved_at), since=since, until=until)


async def count_resolved_unaided(
    session: AsyncSession,
    *,
    since: datetime,
    until: datetime,
    resolvers: Collection[str],
    gone_states: Collection[str],
    operator_actions: Collection[str],
) -> int:
    """Count the cases resolved in ``[since, until]`` that recovered with no operator's help.

    Such a case has ``resolved_by`` in ``resolvers``; its ``resolved`` audit event, written by
    that same actor, announced an account state not in ``gone_states``; and its audit log has no
    event whose action is in ``operator_actions``.
    """
    recovered = (
        select(col(CaseEvent.id))
        .where(
            col(CaseEvent.case_id) == col(Case.id),
            col(CaseEvent.action) == "resolved",
            col(CaseEvent.actor) == col(Case.resolved_by),
            col(CaseEvent.details)["state"].as_string().not_in(list(gone_states)),
        )
        .exists()
    )
    helped = (
        select(col(CaseEvent.id))
        .where(
            col(CaseEvent.case_id) == col(Case.id),
            col(CaseEvent.action).in_(list(operator_actions)),
        )
        .exists()
    )
    resolved_at = col(Case.resolved_at)
    stmt = (
        select(sa.func.count())
        .select_from(Case)
        .where(
            resolved_at >= since,
            resolved_at <= until,
            col(Case.resolved_by).in_(list(resolvers)),
            recovered,
            ~helped,
        )
    )
    return int((await session.exec(stmt)).one())


async def chronic_accounts(
    session: AsyncSession, *, since: datetime, until: datetime, min_cases: int
) -> list[ChronicAccount]:
    """Return the accounts with at least ``min_cases`` cases opened in ``[since, until]``.

    Most cases first, then by account id.
    """
    opened_at = col(Case.opened_at)
    stmt = (
        select(col(Case.account_id), col(Account.email), sa.func.count())
        .join(Account, _joined_account())
        .where(opened_at >= since, opened_at <= until)
        .group_by(col(Case.account_id), col(Account.email))
        .having(sa.func.count() >= min_cases)
    )
    found = [ChronicAccount(a, e, n) for a, e, n in (await session.exec(stmt)).all()]
    return sorted(found, key=lambda c: (-c.cases, c.account_id))


async def chronic_domains(
    session: AsyncSession, *, since: datetime, until: datetime, min_cases: int
) -> list[ChronicDomain]:
    """Return the email domains with at least ``min_cases`` cases opened in ``[since, until]``.

    Each comes with how many of its accounts those cases concern. Accounts with no known email
    belong to no domain. Most cases first, then by domain.
    """
    domain = col(Account.email_domain)
    opened_at = col(Case.opened_at)
    stmt = (
        select(domain, sa.func.count(), sa.func.count(sa.distinct(col(Case.account_id))))
        .select_from(Case)
        .join(Account, _joined_account())
        .where(opened_at >= since, opened_at <= until, domain.is_not(None))
        .group_by(domain)
        .having(sa.func.count() >= min_cases)
    )
    rows = (await session.exec(stmt)).all()
    found = [ChronicDomain(d, n, a) for d, n, a in rows if d is not None]
    return sorted(found, key=lambda c: (-c.cases, c.domain))
