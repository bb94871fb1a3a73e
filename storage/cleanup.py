"""Queries of the month-end billing clean-up: the accounts past their grace, and its runs."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import Account, ApiVersion, Case, CaseStatus, CleanupRun


def _billed(not_billed: Collection[str]) -> sa.ColumnElement[bool]:
    """Nylas bills the account: v2 a known billing state not in ``not_billed``; v3 not deleted."""
    v2 = (col(Account.api_version) == ApiVersion.V2) & col(Account.billing_state).not_in(
        list(not_billed)
    )
    v3 = (col(Account.api_version) == ApiVersion.V3) & (
        sa.func.coalesce(col(Account.sync_state), "") != "deleted"
    )
    return v2 | v3


def _past_grace(
    *, broken_before: datetime, kinds: Collection[str], not_billed: Collection[str]
) -> sa.ColumnElement[bool]:
    since = sa.func.coalesce(col(Case.broken_since), col(Case.opened_at))
    return sa.and_(
        col(Case.status) != CaseStatus.RESOLVED,
        col(Case.kind).in_(list(kinds)),
        since < broken_before,
        _billed(not_billed),
    )


async def past_grace(
    session: AsyncSession,
    *,
    broken_before: datetime,
    kinds: Collection[str],
    not_billed: Collection[str],
) -> list[tuple[Case, Account]]:
    """Open cases of ``kinds`` broken since before ``broken_before`` whose account is billed,
    the longest broken first."""
    since = sa.func.coalesce(col(Case.broken_since), col(Case.opened_at))
    stmt = (
        select(Case, Account)
        .join(Account, col(Account.id) == col(Case.account_id))
        .where(_past_grace(broken_before=broken_before, kinds=kinds, not_billed=not_billed))
        .order_by(since, col(Case.id))
    )
    return [(case, account) for case, account in (await session.exec(stmt)).all()]


async def count_past_grace(
    session: AsyncSession,
    *,
    broken_before: datetime,
    kinds: Collection[str],
    not_billed: Collection[str],
) -> int:
    """How many cases ``past_grace`` would list."""
    stmt = (
        select(sa.func.count())
        .select_from(Case)
        .join(Account, col(Account.id) == col(Case.account_id))
        .where(_past_grace(broken_before=broken_before, kinds=kinds, not_billed=not_billed))
    )
    return int((await session.exec(stmt)).one())


_INSERT_RUN = sa.text(
    "INSERT INTO cleanup_runs (month, created_at, channel, case_ids, notice, tally) "
    "VALUES (:month, :created_at, :channel, :case_ids, :notice, :tally) "
    "ON CONFLICT (month) DO NOTHING RETURNING month"
).bindparams(
    sa.bindparam("created_at", type_=CleanupRun.__table__.c.created_at.type),  # type: ignore[attr-defined]
    sa.bindparam("case_ids", type_=sa.JSON()),
    sa.bindparam("notice", type_=sa.JSON()),
    sa.bindparam("tally", type_=sa.JSON()),
)


async def create_run(
    session: AsyncSession,
    *,
    month: str,
    channel: str,
    case_ids: Sequence[int],
    notice: dict[str, Any],
    now: datetime,
) -> bool:
    """Record the clean-up of ``month``; False when it was recorded already (by anyone)."""
    params = {
        "month": month,
        "created_at": now,
        "channel": channel,
        "case_ids": list(case_ids),
        "notice": notice,
        "tally": {},
    }
    row = (await session.exec(_INSERT_RUN, params=params)).first()  # type: ignore[call-overload]
    return row is not None


async def lock_run(session: AsyncSession, *, month: str) -> CleanupRun | None:
    """The clean-up of ``month``, locked for this transaction; None if it never was offered."""
    return await session.get(CleanupRun, month, with_for_update=True)


async def get_run(session: AsyncSession, *, month: str) -> CleanupRun | None:
    return await session.get(CleanupRun, month)
