"""Counts for metrics and the retention purge."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import Case, CaseStatus, InboxDelivery, InboxStatus, OutboxMessage, OutboxStatus


async def queue_depths(session: AsyncSession) -> dict[str, dict[str, int]]:
    """Return row counts by status for the inbox and the outbox."""
    depths: dict[str, dict[str, int]] = {"inbox": {}, "outbox": {}}
    for name, model in (("inbox", InboxDelivery), ("outbox", OutboxMessage)):
        stmt = select(model.status, func.count()).group_by(model.status)
        for status, count in (await session.exec(stmt)).all():
            depths[name][status] = count
    return depths


async def open_cases_by_kind(session: AsyncSession) -> dict[str, int]:
    stmt = (
        select(Case.kind, func.count())
        .where(Case.status != CaseStatus.RESOLVED)
        .group_by(col(Case.kind))
    )
    return {kind: count for kind, count in (await session.exec(stmt)).all()}


async def purge(session: AsyncSession, *, before: datetime) -> tuple[int, int]:
    """Delete processed inbox rows and sent outbox rows older than ``before``.

    Pending and failed rows are kept whatever their age: they are evidence of work not done.
    """
    inbox = await session.exec(
        delete(InboxDelivery).where(
            col(InboxDelivery.status) == InboxStatus.DONE, col(InboxDelivery.received_at) < before
        )
    )
    outbox = await session.exec(
        delete(OutboxMessage).where(
            col(OutboxMessage.status).in_([OutboxStatus.SENT, OutboxStatus.SUPERSEDED]),
            col(OutboxMessage.created_at) < before,
        )
    )
    return inbox.rowcount, outbox.rowcount
