"""Tracked re-authentication links: made for a case, looked up by token, opened, sent."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import exists, update
from sqlalchemy.orm import aliased
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import (
    Case,
    CaseStatus,
    OutboxKind,
    OutboxMessage,
    OutboxStatus,
    ReauthLink,
)


def token_hash(token: str) -> str:
    """What is stored of a token: its SHA-256, in hex."""
    return hashlib.sha256(token.encode()).hexdigest()


async def add(
    session: AsyncSession,
    *,
    token: str,
    case_id: int,
    created_by: str,
    now: datetime,
    expires_at: datetime,
) -> ReauthLink:
    link = ReauthLink(
        token_hash=token_hash(token),
        case_id=case_id,
        created_by=created_by,
        created_at=now,
        expires_at=expires_at,
    )
    session.add(link)
    await session.flush()
    return link


async def by_token(session: AsyncSession, token: str, *, lock: bool = False) -> ReauthLink | None:
    stmt = select(ReauthLink).where(col(ReauthLink.token_hash) == token_hash(token))
    if lock:
        stmt = stmt.with_for_update()
    return (await session.exec(stmt)).first()


async def latest(session: AsyncSession, *, case_id: int) -> ReauthLink | None:
    """The case's newest link, or None."""
    stmt = (
        select(ReauthLink)
        .where(col(ReauthLink.case_id) == case_id)
        .order_by(col(ReauthLink.id).desc())
        .limit(1)
    )
    return (await session.exec(stmt)).first()


async def of_cases(session: AsyncSession, *, case_ids: Sequence[int]) -> dict[int, ReauthLink]:
    """The newest link of each of the cases that have one."""
    if not case_ids:
        return {}
    stmt = (
        select(ReauthLink).where(col(ReauthLink.case_id).in_(case_ids)).order_by(col(ReauthLink.id))
    )
    return {link.case_id: link for link in (await session.exec(stmt)).all()}


async def get(session: AsyncSession, *, link_id: int, lock: bool = False) -> ReauthLink | None:
    stmt = select(ReauthLink).where(col(ReauthLink.id) == link_id)
    if lock:
        stmt = stmt.with_for_update()
    return (await session.exec(stmt)).first()


async def opened_and_waiting(
    session: AsyncSession, *, opened_before: datetime, after: int | None = None, limit: int = 500
) -> list[tuple[ReauthLink, Case]]:
    """Lock and return links first opened at or before ``opened_before``, not flagged stalled
    yet, that are the newest of their case, whose case is not resolved: oldest link first,
    after link ``after``.

    Rows another transaction holds are skipped (PostgreSQL), so two replicas take turns.
    """
    newer = aliased(ReauthLink)
    has_newer = exists().where(
        col(newer.case_id) == col(ReauthLink.case_id), col(newer.id) > col(ReauthLink.id)
    )
    stmt = (
        select(ReauthLink, Case)
        .join(Case, col(Case.id) == col(ReauthLink.case_id))
        .where(
            col(ReauthLink.first_opened_at) <= opened_before,
            col(ReauthLink.stalled_at).is_(None),
            col(Case.status) != CaseStatus.RESOLVED,
            ~has_newer,
        )
    )
    if after is not None:
        stmt = stmt.where(col(ReauthLink.id) > after)
    stmt = stmt.order_by(col(ReauthLink.id)).limit(limit).with_for_update(skip_locked=True)
    return [(link, case) for link, case in (await session.exec(stmt)).all()]


async def cancel_outreach(
    session: AsyncSession, *, case_id: int, now: datetime, nudges_only: bool = True
) -> int:
    """Withdraw a case's outreach not yet attempted (its nudges only, by default).

    A message tried once may have reached the end user, so it is left to the check made
    before each send (``workflows.links.still_due``).
    """
    stmt = update(OutboxMessage).where(
        col(OutboxMessage.case_id) == case_id,
        col(OutboxMessage.kind) == OutboxKind.OUTREACH,
        col(OutboxMessage.status) == OutboxStatus.PENDING,
        col(OutboxMessage.attempts) == 0,
    )
    if nudges_only:
        stmt = stmt.where(col(OutboxMessage.dedupe_key).like("outreach:%:nudge:%"))
    result = await session.exec(
        stmt.values(status=OutboxStatus.SUPERSEDED, sent_at=now, last_error="withdrawn")
    )
    return result.rowcount
