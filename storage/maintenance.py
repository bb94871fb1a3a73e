"""Counts for metrics and the retention purge.

Metrics are scraped every few seconds, so what they count must not grow with the tables:
pending and failed rows are counted through the status indexes, up to ``COUNT_CAP`` each, and
the size of each queue table is an estimate (PostgreSQL's statistics; on SQLite the span of
its ids), never a ``count(*)`` over millions of processed rows.
"""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import delete, func
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import (
    OUTREACH_CHANNEL,
    PAGER_CHANNEL,
    Case,
    CaseStatus,
    InboxDelivery,
    InboxStatus,
    OutboxMessage,
    OutboxStatus,
    UTCDateTime,
)

# Beyond this many rows of one status a gauge says "at least this many".
COUNT_CAP = 10_000
# Statuses that mean work waiting or work that was given up on; the others only grow.
WATCHED: dict[str, tuple[type[InboxDelivery] | type[OutboxMessage], tuple[str, ...]]] = {
    "inbox": (InboxDelivery, (InboxStatus.PENDING, InboxStatus.FAILED)),
    "outbox": (OutboxMessage, (OutboxStatus.PENDING, OutboxStatus.FAILED)),
}
OPEN_STATUSES = tuple(s.value for s in CaseStatus if s != CaseStatus.RESOLVED)
ESTIMATED_TABLES: tuple[type[InboxDelivery] | type[OutboxMessage] | type[Case], ...] = (
    InboxDelivery,
    OutboxMessage,
    Case,
)


async def queue_depths(session: AsyncSession) -> dict[str, dict[str, int]]:
    """Count pending and failed inbox and outbox rows, up to COUNT_CAP each (0s left out)."""
    depths: dict[str, dict[str, int]] = {"inbox": {}, "outbox": {}}
    for name, (model, statuses) in WATCHED.items():
        for status in statuses:
            rows = select(col(model.id)).where(col(model.status) == status).limit(COUNT_CAP)
            count = (await session.exec(select(func.count()).select_from(rows.subquery()))).one()
            if count:
                depths[name][status] = count
    return depths


async def open_cases_by_kind(session: AsyncSession) -> dict[str, int]:
    """Count cases not resolved by kind (the first COUNT_CAP of them), through the status index."""
    open_rows = (
        select(col(Case.kind)).where(col(Case.status).in_(OPEN_STATUSES)).limit(COUNT_CAP)
    ).subquery()
    stmt = select(open_rows.c.kind, func.count()).group_by(open_rows.c.kind)
    return {kind: count for kind, count in (await session.exec(stmt)).all()}


async def oldest_pending_delivery(session: AsyncSession) -> datetime | None:
    """When the oldest webhook delivery still waiting to be processed arrived (None: none waits).

    The first pending row by id, through the (status, id) index.
    """
    stmt = (
        select(col(InboxDelivery.received_at))
        .where(col(InboxDelivery.status) == InboxStatus.PENDING)
        .order_by(col(InboxDelivery.id))
        .limit(1)
    )
    return (await session.exec(stmt)).first()


async def oldest_pending_messages(session: AsyncSession, *, now: datetime) -> dict[str, datetime]:
    """Since when the oldest message of each sink (slack, pagerduty, outreach) has waited.

    A message waits from the time it was due; once an attempt failed, from the time it was
    queued, so that a message retried with backoff through an outage keeps ageing. Messages
    held back for later (a nudge, an incident settling) do not wait yet. One query over the
    pending rows, through the (status, available_at) index; sinks with nothing waiting are left
    out.
    """
    sink = sa.case(
        (col(OutboxMessage.channel) == PAGER_CHANNEL, "pagerduty"),
        (col(OutboxMessage.channel) == OUTREACH_CHANNEL, "outreach"),
        else_="slack",
    ).label("sink")
    since = sa.type_coerce(
        sa.case(
            (col(OutboxMessage.attempts) > 0, col(OutboxMessage.created_at)),
            else_=col(OutboxMessage.available_at),
        ),
        UTCDateTime(),
    )
    waiting = (
        select(sink, since.label("since"))
        .where(
            col(OutboxMessage.status) == OutboxStatus.PENDING,
            (col(OutboxMessage.available_at) <= now) | (col(OutboxMessage.attempts) > 0),
        )
        .subquery()
    )
    stmt = select(waiting.c.sink, func.min(waiting.c.since)).group_by(waiting.c.sink)
    return {str(name): at for name, at in (await session.exec(stmt)).all() if at is not None}


async def table_sizes(session: AsyncSession) -> dict[str, int]:
    """Estimate the rows of the inbox, outbox and cases tables without counting them."""
    names = [model.__tablename__ for model in ESTIMATED_TABLES]
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        stmt = sa.text(
            "SELECT relname, reltuples::bigint FROM pg_class "
            "WHERE relname IN :names AND relkind = 'r' "
            "AND relnamespace = to_regnamespace(current_schema())"
        ).bindparams(sa.bindparam("names", expanding=True))
        conn = await session.connection()
        rows = (await conn.execute(stmt, {"names": names})).all()
        # -1: never analysed yet; no estimate rather than a wrong one.
        return {str(name): int(n) for name, n in rows if n >= 0}
    sizes = {}
    for model in ESTIMATED_TABLES:
        # Both ends of the primary key are one index lookup each; the span counts purged gaps.
        # (SQLite reads min and max through the index only when each is asked alone.)
        low = (await session.exec(select(func.min(col(model.id))))).one()
        high = (await session.exec(select(func.max(col(model.id))))).one()
        sizes[str(model.__tablename__)] = 0 if low is None or high is None else high - low + 1
    return sizes


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
