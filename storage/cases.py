"""Queries on accounts, cases and the audit log."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import make_transient_to_detached
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage._sql import insert_ignoring_conflict
from storage.models import OPEN_CASE_SQL, Account, Case, CaseEvent, CaseStatus


async def get_account(session: AsyncSession, *, account_id: str) -> Account | None:
    return await session.get(Account, account_id)


async def get_case(session: AsyncSession, *, case_id: int) -> Case | None:
    return await session.get(Case, case_id)


async def get_open_case(session: AsyncSession, *, account_id: str) -> Case | None:
    stmt = select(Case).where(Case.account_id == account_id, Case.status != CaseStatus.RESOLVED)
    return (await session.exec(stmt)).first()


async def open_case(
    session: AsyncSession,
    *,
    account_id: str,
    kind: str,
    state: str | None,
    now: datetime,
    channel: str | None = None,
    broken_since: datetime | None = None,
    incident_id: int | None = None,
) -> Case | None:
    """Open a case for the account, or return None when it already has an open one.

    A case opened into an incident has no alert of its own: the incident's message stands
    for it. The partial unique index decides races between two writers; the loser gets None.
    """
    case = Case(
        account_id=account_id,
        kind=kind,
        state=state,
        status=CaseStatus.OPEN,
        opened_at=now,
        updated_at=now,
        slack_channel=channel,
        broken_since=broken_since or now,
        incident_id=incident_id,
        own_alert=incident_id is None,
    )
    table = Case.__table__  # type: ignore[attr-defined]
    values = {c.name: getattr(case, c.name) for c in table.columns if c.name != "id"}
    # One statement, where a savepoint around an ORM insert took three.
    case.id = await insert_ignoring_conflict(
        session, Case, values, unique="account_id", where=OPEN_CASE_SQL
    )
    if case.id is None:
        return None
    make_transient_to_detached(case)  # as if just read from the database
    session.add(case)
    return case


async def list_open_cases(
    session: AsyncSession, *, limit: int | None = None
) -> Sequence[tuple[Case, Account]]:
    """Return open cases with their accounts, oldest first."""
    stmt = (
        select(Case, Account)
        .join(Account, col(Account.id) == col(Case.account_id))
        .where(Case.status != CaseStatus.RESOLVED)
        .order_by(col(Case.opened_at), col(Case.id))
        .limit(limit)
    )
    return (await session.exec(stmt)).all()


async def record_event(
    session: AsyncSession,
    *,
    actor: str,
    action: str,
    at: datetime,
    case_id: int | None = None,
    account_id: str | None = None,
    details: dict[str, Any] | None = None,
    flush: bool = True,
) -> None:
    """Append one line to the audit log, now.

    Whatever the session holds unwritten is flushed first (the line may refer to it). The line
    itself is one cached INSERT, without the unit of work an ORM object would go through: a
    storm writes two per case. ``flush`` is kept for callers that batch their own changes; the
    line is written at once either way.
    """
    if session.new or session.dirty or session.deleted:
        await session.flush()
    values = {
        "case_id": case_id,
        "account_id": account_id,
        "actor": actor,
        "action": action,
        "at": at,
        "details": details or {},
    }
    await session.exec(_AUDIT_LINE, params=values)


_AUDIT_LINE = sa.insert(CaseEvent.__table__)  # type: ignore[attr-defined]


async def case_events(session: AsyncSession, *, case_id: int) -> Sequence[CaseEvent]:
    """Return the audit log of a case, oldest first."""
    stmt = select(CaseEvent).where(CaseEvent.case_id == case_id).order_by(col(CaseEvent.id))
    return (await session.exec(stmt)).all()
