"""Queries on accounts, cases and the audit log."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import Account, Case, CaseEvent, CaseStatus


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
) -> Case | None:
    """Open a case for the account, or return None when it already has an open one.

    The partial unique index decides races between two writers; the loser gets None.
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
    )
    try:
        async with session.begin_nested():
            session.add(case)
            await session.flush()
    except IntegrityError:
        return None
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
) -> CaseEvent:
    """Append one line to the audit log."""
    event = CaseEvent(
        case_id=case_id,
        account_id=account_id,
        actor=actor,
        action=action,
        at=at,
        details=details or {},
    )
    session.add(event)
    await session.flush()
    return event


async def case_events(session: AsyncSession, *, case_id: int) -> Sequence[CaseEvent]:
    """Return the audit log of a case, oldest first."""
    stmt = select(CaseEvent).where(CaseEvent.case_id == case_id).order_by(col(CaseEvent.id))
    return (await session.exec(stmt)).all()
