"""The webhook inbox: verified deliveries stored before they are acknowledged.

A delivery is processed in one transaction that first claims it (``claim_delivery``) and then
applies its effects; a crash anywhere before the commit leaves it pending for the next worker,
and a second worker racing for the same delivery finds it already claimed.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Dialect, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import sqlite_inline
from storage._sql import dialect_name, insert_ignoring_conflict
from storage.models import InboxDelivery, InboxStatus

MAX_ATTEMPTS = 5


async def add_delivery(
    session: AsyncSession, *, dedupe_key: str, source: str, body: str, received_at: datetime
) -> int | None:
    """Store a delivery; return its id, or None when the same delivery is already stored."""
    values = {
        "dedupe_key": dedupe_key,
        "source": source,
        "body": body,
        "received_at": received_at,
        "status": InboxStatus.PENDING,
        "attempts": 0,
    }
    return await insert_ignoring_conflict(session, InboxDelivery, values, unique="dedupe_key")


async def add_deliveries(
    session: AsyncSession, *, entries: Sequence[tuple[str, str, str]], received_at: datetime
) -> set[str]:
    """Store many ``(dedupe_key, source, body)`` deliveries in one statement.

    Returns the keys that were new; a key already stored, or repeated in ``entries``, is
    stored once.
    """
    if not entries:
        return set()
    dialect = postgresql if dialect_name(session) == "postgresql" else sqlite
    table = InboxDelivery.__table__  # type: ignore[attr-defined]
    rows = [
        {
            "dedupe_key": key,
            "source": source,
            "body": body,
            "received_at": received_at,
            "status": InboxStatus.PENDING,
            "attempts": 0,
        }
        for key, source, body in entries
    ]
    # One statement, compiled once per batch (SQLAlchemy never caches its ON CONFLICT
    # inserts) and executed for all rows: SQLAlchemy sends them in multi-row batches
    # ("insertmanyvalues"). Compiling a fresh VALUES list of hundreds of rows instead took
    # tens of milliseconds of the event loop under load.
    stmt = (
        dialect.insert(table)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(table.c.dedupe_key)
    )
    result = await session.exec(stmt, params=rows)
    return set(result.scalars().all())


async def store_deliveries(
    engine: AsyncEngine, *, entries: Sequence[tuple[str, str, str]], received_at: datetime
) -> set[str]:
    """Store ``(dedupe_key, source, body)`` deliveries in a transaction of their own, committed.

    Returns the keys that were new, as ``add_deliveries`` does. This is the webhook's path,
    taken for every batch of deliveries while Nylas waits for its answer. On SQLite it skips
    the ORM session: its setup, the insert's compilation and the commit cost the event loop
    more than storing the rows, which runs on a worker thread in one hand-off.
    """
    if not entries:
        return set()
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        if isinstance(driver, sqlite_inline.Connection):
            stamp = _bind_received_at(engine.dialect)(received_at)
            rows = [(key, source, body, stamp) for key, source, body in entries]
            try:
                return await driver.write(functools.partial(_insert_new_sqlite, rows))
            except sqlite3.Error as exc:  # raised as the ORM path would raise it
                raise DBAPIError.instance(_INSERT_SQLITE, None, exc, sqlite3.Error) from exc
    async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
        return await add_deliveries(session, entries=entries, received_at=received_at)


_INSERT_SQLITE = (
    "INSERT INTO inbox (dedupe_key, source, body, received_at, status, attempts) "
    f"VALUES (?, ?, ?, ?, '{InboxStatus.PENDING}', 0) ON CONFLICT (dedupe_key) DO NOTHING"
)


def _insert_new_sqlite(
    rows: Sequence[tuple[str, str, str, Any]], conn: sqlite3.Connection
) -> set[str]:
    # A row at a time: sqlite3 cannot return rows from executemany, and each statement
    # says whether it inserted (a key stored before, or earlier in ``rows``, is not).
    new = set()
    cursor = conn.cursor()
    for row in rows:
        cursor.execute(_INSERT_SQLITE, row)
        if cursor.rowcount == 1:
            new.add(row[0])
    return new


@functools.cache
def _bind_received_at(dialect: Dialect) -> Callable[[datetime], Any]:
    """How the column's type writes a timestamp for ``dialect``, as the ORM would."""
    column = InboxDelivery.__table__.c.received_at  # type: ignore[attr-defined]
    process = column.type.dialect_impl(dialect).bind_processor(dialect)
    assert process is not None
    return process


async def pending_deliveries(
    session: AsyncSession, *, now: datetime, limit: int = 100
) -> Sequence[InboxDelivery]:
    """Return deliveries waiting to be processed, oldest first (without claiming them)."""
    stmt = (
        select(InboxDelivery)
        .where(
            InboxDelivery.status == InboxStatus.PENDING,
            (col(InboxDelivery.lease_until).is_(None)) | (col(InboxDelivery.lease_until) <= now),
        )
        .order_by(col(InboxDelivery.id))
        .limit(limit)
    )
    return (await session.exec(stmt)).all()


async def claim_delivery(session: AsyncSession, *, delivery_id: int, now: datetime) -> bool:
    """Mark a pending delivery done inside the caller's transaction; False if another won it."""
    stmt = (
        update(InboxDelivery)
        .where(
            col(InboxDelivery.id) == delivery_id,
            col(InboxDelivery.status) == InboxStatus.PENDING,
        )
        .values(status=InboxStatus.DONE, processed_at=now, attempts=InboxDelivery.attempts + 1)
    )
    result = await session.exec(stmt)
    return result.rowcount == 1


async def defer_delivery(
    session: AsyncSession,
    *,
    delivery_id: int,
    error: str,
    retry_at: datetime,
    give_up: bool = True,
) -> str:
    """Record a failed attempt; retry at ``retry_at``, or give up after MAX_ATTEMPTS.

    ``give_up=False`` retries past MAX_ATTEMPTS (the failure is someone else's outage).
    Returns the delivery's new status.
    """
    delivery = await session.get(InboxDelivery, delivery_id, with_for_update=True)
    if delivery is None or delivery.status != InboxStatus.PENDING:
        return delivery.status if delivery else InboxStatus.DONE
    delivery.attempts += 1
    delivery.last_error = error[:2000]
    if give_up and delivery.attempts >= MAX_ATTEMPTS:
        delivery.status = InboxStatus.FAILED
    else:
        delivery.lease_until = retry_at
    session.add(delivery)
    await session.flush()
    return delivery.status
