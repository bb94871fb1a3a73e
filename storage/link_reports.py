"""Read-only queries behind the outreach figures of ``/reauth stats`` and the daily digest.

What became of the re-authentication links over a window, on SQLite and PostgreSQL alike.
A case counts as re-authenticated by the end user when it is resolved, by one of
``resolvers``, with a resolution that starts with one of ``wordings`` (the caller's rule:
``workflows.enduser``); the test is written so that it is never NULL, and its negation keeps
cases with no resolver or no resolution.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import aliased
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import Case, CaseStatus, ReauthLink


@dataclass(frozen=True, slots=True)
class Reauthenticated:
    """The rule that says a case was resolved by the end user re-authenticating."""

    resolvers: Collection[str]
    wordings: Collection[str]

    def sql(self) -> Any:
        resolution = sa.func.coalesce(col(Case.resolution), "")
        return sa.and_(
            col(Case.status) == CaseStatus.RESOLVED,
            sa.func.coalesce(col(Case.resolved_by), "").in_(list(self.resolvers)),
            sa.or_(*(resolution.startswith(w, autoescape=True) for w in self.wordings)),
        )


@dataclass(frozen=True, slots=True)
class OutreachOutcome:
    sent: int  # cases whose newest link went out to the end user within the window
    reauthenticated: int  # of those, re-authenticated by the end user after it went out


def _case_of_link() -> Any:
    return col(Case.id) == col(ReauthLink.case_id)


def _newest_link() -> Any:
    other = aliased(ReauthLink)
    newest = select(sa.func.max(col(other.id))).where(col(other.case_id) == col(ReauthLink.case_id))
    return col(ReauthLink.id) == newest.scalar_subquery()


async def outreach_outcome(
    session: AsyncSession,
    *,
    since: datetime,
    until: datetime,
    kinds: Collection[str],
    rule: Reauthenticated,
) -> OutreachOutcome:
    """Of the cases of ``kinds`` whose newest link was sent in ``[since, until]``, how many
    were then re-authenticated by the end user (at any time since)."""
    sent_at = col(ReauthLink.sent_at)
    fixed = sa.and_(rule.sql(), col(Case.resolved_at) >= sent_at)
    stmt = (
        select(sa.func.count(), sa.func.coalesce(sa.func.sum(sa.case((fixed, 1), else_=0)), 0))
        .select_from(ReauthLink)
        .join(Case, _case_of_link())
        .where(
            _newest_link(),
            sent_at >= since,
            sent_at <= until,
            col(Case.kind).in_(list(kinds)),
        )
    )
    sent, fixed_count = (await session.exec(stmt)).one()
    return OutreachOutcome(int(sent), int(fixed_count))


async def times_to_reauthenticate(
    session: AsyncSession, *, since: datetime, until: datetime, rule: Reauthenticated
) -> list[timedelta]:
    """For each case re-authenticated by the end user in ``[since, until]`` that had a link,
    the time from its first link to its resolution, shortest first."""
    resolved_at = col(Case.resolved_at)
    stmt = (
        select(sa.func.min(col(ReauthLink.created_at)), resolved_at)
        .select_from(ReauthLink)
        .join(Case, _case_of_link())
        .where(rule.sql(), resolved_at >= since, resolved_at <= until)
        .group_by(col(Case.id), resolved_at)
    )
    rows = (await session.exec(stmt)).all()
    return sorted(resolved - first for first, resolved in rows if resolved is not None)


async def count_opened_not_completed(
    session: AsyncSession, *, since: datetime, until: datetime, rule: Reauthenticated
) -> int:
    """Count the cases with a link first opened in ``[since, until]`` that the end user has
    not re-authenticated: still unresolved, or resolved some other way."""
    opened = col(ReauthLink.first_opened_at)
    stmt = (
        select(sa.func.count(sa.distinct(col(Case.id))))
        .select_from(ReauthLink)
        .join(Case, _case_of_link())
        .where(opened >= since, opened <= until, sa.not_(rule.sql()))
    )
    return int((await session.exec(stmt)).one())
