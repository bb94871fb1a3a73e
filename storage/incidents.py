"""Queries on incidents: the storms that group many cases of one domain or integration."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import actors
from storage.models import (
    Account,
    ApiVersion,
    Case,
    CaseKind,
    CaseStatus,
    Incident,
    IncidentScope,
    IncidentStatus,
)

SAMPLE = 10  # member emails shown on an incident's message


def _matches(scope: str, key: str) -> Any:
    """The accounts an incident of ``scope`` and ``key`` is about."""
    if scope == IncidentScope.DOMAIN:
        return col(Account.email_domain) == key
    v3 = col(Account.api_version) == ApiVersion.V3
    if scope == IncidentScope.CREDENTIAL:
        return v3 & (col(Account.credential_id) == key)
    # Grants that name their credential are grouped by it, not by their provider.
    return v3 & col(Account.credential_id).is_(None) & (sa.func.lower(col(Account.provider)) == key)


async def open_incident(session: AsyncSession, *, scope: str, key: str) -> Incident | None:
    """The incident of a domain or integration still taking cases, locked for this transaction."""
    stmt = (
        select(Incident)
        .where(
            col(Incident.scope) == scope,
            col(Incident.key) == key,
            col(Incident.status) == IncidentStatus.OPEN,
            col(Incident.sealed_at).is_(None),
        )
        .with_for_update()
    )
    return (await session.exec(stmt)).first()


async def absorbing(
    session: AsyncSession, *, keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], Incident]:
    """``open_incident`` for many ``(scope, key)`` at once: those still taking cases, locked."""
    if not keys:
        return {}
    wanted = sa.or_(
        *(
            (col(Incident.scope) == scope) & (col(Incident.key) == key)
            for scope, key in sorted(set(keys))
        )
    )
    stmt = (
        select(Incident)
        .where(
            wanted,
            col(Incident.status) == IncidentStatus.OPEN,
            col(Incident.sealed_at).is_(None),
        )
        .order_by(col(Incident.id))
        .with_for_update()
    )
    return {(i.scope, i.key): i for i in (await session.exec(stmt)).all()}


def _key_of(scope: str) -> Any:
    if scope == IncidentScope.DOMAIN:
        return col(Account.email_domain)
    if scope == IncidentScope.CREDENTIAL:
        return col(Account.credential_id)
    return sa.func.lower(col(Account.provider))


async def loose_by_domain(
    session: AsyncSession, *, scope: str, keys: Sequence[str], since: datetime
) -> dict[str, Counter[str | None]]:
    """``loose_tally`` for many keys of one scope in one grouped count: for each key, the
    loose cases by email domain."""
    if not keys:
        return {}
    key = _key_of(scope)
    matches = sa.or_(*(_matches(scope, k) for k in sorted(set(keys))))
    stmt = (
        select(key, col(Account.email_domain), sa.func.count())
        .select_from(Case)
        .join(Account, col(Account.id) == col(Case.account_id))
        .where(*_loose_cases(since), matches)
        .group_by(key, col(Account.email_domain))
    )
    tallies: dict[str, Counter[str | None]] = {}
    for k, domain, n in (await session.exec(stmt)).all():
        tallies.setdefault(k, Counter())[domain] += int(n)
    return tallies


async def lock_incident(session: AsyncSession, *, incident_id: int) -> Incident | None:
    return await session.get(Incident, incident_id, with_for_update=True)


def _loose_cases(since: datetime) -> list[Any]:
    """Unresolved cases opened since ``since`` that are in no incident."""
    return [
        col(Case.opened_at) >= since,
        col(Case.status) != CaseStatus.RESOLVED,
        col(Case.incident_id).is_(None),
    ]


def _loose(scope: str, key: str, since: datetime) -> list[Any]:
    return [*_loose_cases(since), _matches(scope, key)]


async def loose_tally(
    session: AsyncSession, *, scope: str, key: str, since: datetime
) -> tuple[int, int]:
    """How many unresolved cases of the group opened since ``since`` in no incident, and over
    how many email domains: counted by the database, so a case that forms no storm costs one
    statement whatever the bar."""
    stmt = (
        select(sa.func.count(), sa.func.count(sa.distinct(col(Account.email_domain))))
        .select_from(Case)
        .join(Account, col(Account.id) == col(Case.account_id))
        .where(*_loose(scope, key, since))
    )
    cases, domains = (await session.exec(stmt)).one()
    return int(cases), int(domains)


async def recent_loose_cases(
    session: AsyncSession, *, scope: str, key: str, since: datetime
) -> Sequence[tuple[Case, Account]]:
    """Unresolved cases of the domain or integration opened since ``since``, in no incident."""
    stmt = (
        select(Case, Account)
        .join(Account, col(Account.id) == col(Case.account_id))
        .where(*_loose(scope, key, since))
        .order_by(col(Case.id))
    )
    return (await session.exec(stmt)).all()


async def create_incident(
    session: AsyncSession, *, scope: str, key: str, now: datetime, first_case_at: datetime
) -> Incident | None:
    """Open an incident; None when another writer opened one for the same key first."""
    incident = Incident(
        scope=scope,
        key=key,
        status=IncidentStatus.OPEN,
        opened_at=now,
        updated_at=now,
        first_case_at=first_case_at,
        last_case_at=now,
    )
    try:
        async with session.begin_nested():
            session.add(incident)
            await session.flush()
    except IntegrityError:
        return None
    return incident


async def members(session: AsyncSession, *, incident_id: int) -> Sequence[tuple[Case, Account]]:
    """Every case of an incident with its account, oldest first."""
    stmt = (
        select(Case, Account)
        .join(Account, col(Account.id) == col(Case.account_id))
        .where(col(Case.incident_id) == incident_id)
        .order_by(col(Case.opened_at), col(Case.id))
    )
    return (await session.exec(stmt)).all()


async def count_unresolved(session: AsyncSession, *, incident_id: int) -> int:
    stmt = (
        select(sa.func.count())
        .select_from(Case)
        .where(col(Case.incident_id) == incident_id, col(Case.status) != CaseStatus.RESOLVED)
    )
    return int((await session.exec(stmt)).one())


@dataclass(frozen=True, slots=True)
class Member:
    """A case of an incident as its message lists it: who, and its own alert if it has one."""

    label: str  # the email, or the account id when the email is not known
    channel: str | None = None  # where the case's own alert is, when it was posted alone
    ts: str | None = None

    @property
    def posted(self) -> bool:
        return self.channel is not None and self.ts is not None


@dataclass(frozen=True, slots=True)
class IncidentView:
    """What an incident's message shows: the incident and a tally of its cases."""

    incident: Incident
    total: int
    by_status: dict[str, int]
    by_kind: dict[str, int]  # unresolved cases only
    retryable: int  # unresolved v2 cases that stopped (Retry all applies to them)
    linkable: int  # unresolved cases with an email that a re-auth link can fix
    sample: tuple[Member, ...]  # unresolved cases, oldest first
    resolved_by: dict[str, int]  # how the resolved ones were resolved: "nylas", "slack", …

    @property
    def unresolved(self) -> int:
        return self.total - self.by_status.get(CaseStatus.RESOLVED, 0)


LINKABLE_KINDS = frozenset({CaseKind.REAUTH, CaseKind.STOPPED, CaseKind.UNKNOWN})


async def view(session: AsyncSession, *, incident_id: int) -> IncidentView | None:
    """Tally an incident's cases for its message; None when it does not exist.

    Counted by the database, in groups: an incident may have tens of thousands of cases, and
    its message is rendered again every few seconds while they change.
    """
    incident = await session.get(Incident, incident_id)
    if incident is None:
        return None
    tally = (
        select(col(Case.status), col(Case.kind), col(Case.resolved_by), sa.func.count())
        .where(col(Case.incident_id) == incident_id)
        .group_by(col(Case.status), col(Case.kind), col(Case.resolved_by))
    )
    by_status: Counter[str] = Counter()
    by_kind: Counter[str] = Counter()
    resolved_by: Counter[str] = Counter()
    for status, kind, resolver, n in (await session.exec(tally)).all():
        by_status[status] += n
        if status == CaseStatus.RESOLVED:
            resolved_by[actors.source(resolver or actors.SYSTEM)] += n
        else:
            by_kind[kind] += n

    def count_where(condition: Any) -> Any:
        return sa.func.coalesce(sa.func.sum(sa.case((condition, 1), else_=0)), 0)

    stopped_v2 = (col(Account.api_version) == ApiVersion.V2) & (col(Case.kind) == CaseKind.STOPPED)
    with_email = (sa.func.coalesce(col(Account.email), "") != "") & col(Case.kind).in_(
        sorted(LINKABLE_KINDS)
    )
    actionable = (
        select(count_where(stopped_v2), count_where(with_email))
        .select_from(Case)
        .join(Account, col(Account.id) == col(Case.account_id))
        .where(col(Case.incident_id) == incident_id, col(Case.status) != CaseStatus.RESOLVED)
    )
    retryable, linkable = (await session.exec(actionable)).one()
    first_unresolved = (
        select(
            sa.func.coalesce(sa.func.nullif(col(Account.email), ""), col(Account.id)),
            col(Case.own_alert),
            col(Case.slack_channel),
            col(Case.slack_ts),
        )
        .join(Case, col(Account.id) == col(Case.account_id))
        .where(col(Case.incident_id) == incident_id, col(Case.status) != CaseStatus.RESOLVED)
        .order_by(col(Case.opened_at), col(Case.id))
        .limit(SAMPLE)
    )
    sample = tuple(
        Member(label, channel, ts) if own and ts else Member(label)
        for label, own, channel, ts in (await session.exec(first_unresolved)).all()
    )
    return IncidentView(
        incident=incident,
        total=sum(by_status.values()),
        by_status=dict(by_status),
        by_kind=dict(by_kind),
        retryable=int(retryable),
        linkable=int(linkable),
        sample=sample,
        resolved_by=dict(resolved_by),
    )
