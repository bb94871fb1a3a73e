"""Queries over maintenance windows (mutes) and the cases opened in them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import Account, Case, CaseStatus, Mute


def _active(now: datetime) -> sa.ColumnElement[bool]:
    return sa.and_(
        col(Mute.starts_at) <= now, col(Mute.ends_at) > now, col(Mute.ended_at).is_(None)
    )


async def active(session: AsyncSession, *, now: datetime) -> Sequence[Mute]:
    """The windows in force at ``now``, the earliest ending first."""
    stmt = select(Mute).where(_active(now)).order_by(col(Mute.ends_at), col(Mute.id))
    return (await session.exec(stmt)).all()


async def add(
    session: AsyncSession,
    *,
    scope: str,
    value: str,
    starts_at: datetime,
    ends_at: datetime,
    created_by: str,
    reason: str | None,
) -> Mute:
    """Store a new window and return it with its id."""
    mute = Mute(
        scope=scope,
        value=value,
        starts_at=starts_at,
        ends_at=ends_at,
        created_by=created_by,
        reason=reason,
    )
    session.add(mute)
    await session.flush()
    return mute


async def get_for_update(session: AsyncSession, *, mute_id: int) -> Mute | None:
    """One window, locked until the end of the transaction."""
    return await session.get(Mute, mute_id, with_for_update=True)


async def due_summaries(session: AsyncSession, *, now: datetime, limit: int) -> Sequence[Mute]:
    """Lock windows that ran to their end and are not summarised yet (skipping held ones)."""
    stmt = (
        select(Mute)
        .where(col(Mute.summarised_at).is_(None), col(Mute.ends_at) <= now)
        .order_by(col(Mute.id))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return (await session.exec(stmt)).all()


async def cases_of(session: AsyncSession, *, mute_id: int) -> Sequence[tuple[Case, Account]]:
    """The cases opened in a window, with their accounts, in the order they opened."""
    stmt = (
        select(Case, Account)
        .join(Account, col(Account.id) == col(Case.account_id))
        .where(col(Case.muted_by) == mute_id)
        .order_by(col(Case.opened_at), col(Case.id))
    )
    return (await session.exec(stmt)).all()


def still_open(case: Case) -> bool:
    """Whether a case is not resolved."""
    return case.status != CaseStatus.RESOLVED
