"""The webhook inbox: verified deliveries stored before they are acknowledged.

A delivery is processed in one transaction that first claims it (``claim_delivery``) and then
applies its effects; a crash anywhere before the commit leaves it pending for the next worker,
and a second worker racing for the same delivery finds it already claimed.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
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
from storage.engine import is_sqlite
from storage.models import InboxDelivery, InboxStatus

log = logging.getLogger("reauthbot.inbox")

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


Entries = Sequence[tuple[str, str, str]]  # (dedupe_key, source, body)
# How long one call of store_while_waiting may keep the connection (other writers wait).
STORE_SPELL = 0.05


async def store_while_waiting(
    engine: AsyncEngine,
    take: Callable[[], Entries | None],
    stored: Callable[[set[str] | Exception], None],
    *,
    received_at: Callable[[], datetime],
    spell: float = STORE_SPELL,
    linger: Callable[[float], bool] | None = None,
) -> None:
    """Store batches of deliveries, each in a transaction of its own, while ``take`` has any.

    ``take`` returns the next batch of ``(dedupe_key, source, body)``, or None. After each
    commit, ``stored`` gets the keys of the batch that were new (not stored before, nor
    earlier in the batch), or else the exception that kept the batch from being stored,
    which ends the call. It ends too once ``take`` has nothing, or after ``spell`` seconds
    so that other writers get their turn.

    On SQLite, ``linger(timeout)``, when given, is asked before the call ends because
    ``take`` has nothing: it may wait up to ``timeout`` seconds (what is left of the spell)
    for more, and says whether to take again. While deliveries pour in, the writer takes
    each as it comes, so that one batch is committed while the event loop answers the one
    before, rather than the loop and the commit waiting for each other in turn.

    This is the webhook's path: Nylas waits for its answer. On SQLite the batches run back
    to back on a worker thread, on the pooled connection (writers still queue), without the
    ORM: a session, an ``INSERT … ON CONFLICT`` compiled anew every time, and a trip through
    the busy event loop between one commit and the next cost more than storing the rows.
    There, ``take`` and ``stored`` are called on that thread.
    """
    if is_sqlite(engine):
        async with engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert isinstance(driver, sqlite_inline.Connection)
            work = functools.partial(
                _store_sqlite,
                take,
                stored,
                received_at,
                _bind_received_at(engine.dialect),
                spell,
                linger,
            )
            await driver.on_thread(work)
        return
    deadline = time.monotonic() + spell
    while time.monotonic() < deadline and (entries := take()):
        try:
            new = await _store_batch(engine, entries, received_at)
        except Exception as exc:
            stored(exc)
            return
        stored(new)


# PostgreSQL's SQLSTATE for a transaction it chose to fail to break a deadlock.
DEADLOCK = "40P01"
DEADLOCK_ATTEMPTS = 3


async def _store_batch(
    engine: AsyncEngine, entries: Entries, received_at: Callable[[], datetime]
) -> set[str]:
    """Store one batch in a transaction of its own; on a deadlock, store it again.

    Two replicas storing the same deliveries at once (a delivery to one, Nylas' retry of it
    to the other) may take the same keys' unique-index entries in opposite orders, and
    PostgreSQL then fails one of them. Its batch is stored again once the other committed
    (finding those keys stored), keeping the order the deliveries arrived in.
    """
    attempt = 1
    while True:
        try:
            async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
                return await add_deliveries(session, entries=entries, received_at=received_at())
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != DEADLOCK or attempt >= DEADLOCK_ATTEMPTS:
                raise
        attempt += 1
        log.info("storing webhook deliveries met a deadlock; storing them again")


_INSERTED_SQLITE = "SELECT dedupe_key FROM inbox WHERE id > ? AND id <= ?"
# Rows per INSERT statement: 4 parameters each, well below SQLite's limit of 32,766.
INSERT_ROWS = 500


@functools.lru_cache(maxsize=128)
def _insert_sqlite(rows: int) -> str:
    """One ``INSERT`` of ``rows`` deliveries; sqlite3 keeps it prepared for the next batch."""
    values = ", ".join([f"(?, ?, ?, ?, '{InboxStatus.PENDING}', 0)"] * rows)
    return (
        "INSERT INTO inbox (dedupe_key, source, body, received_at, status, attempts) "
        f"VALUES {values} ON CONFLICT (dedupe_key) DO NOTHING"
    )


def _store_sqlite(
    take: Callable[[], Entries | None],
    stored: Callable[[set[str] | Exception], None],
    received_at: Callable[[], datetime],
    bind_time: Callable[[datetime], Any],
    spell: float,
    linger: Callable[[float], bool] | None,
    conn: sqlite3.Connection,
) -> None:
    deadline = time.monotonic() + spell
    cursor = conn.cursor()
    while (left := deadline - time.monotonic()) > 0:
        entries = take()
        if not entries:
            if linger is not None and linger(left):
                continue
            return
        try:
            stamp = bind_time(received_at())
            if len(entries) <= INSERT_ROWS:
                # One statement outside a transaction is a transaction of its own: atomic,
                # and durable when it returns. One call into SQLite, not three, and each
                # call ends in waiting for the GIL while the event loop is busy.
                new = _insert_batch(cursor, entries, stamp)
            else:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    new = _insert_batch(cursor, entries, stamp)
                    conn.commit()
                except BaseException:
                    conn.rollback()
                    raise
        except sqlite3.Error as exc:  # raised as the ORM path would raise it
            stored(DBAPIError.instance("INSERT INTO inbox …", None, exc, sqlite3.Error))
            return
        except Exception as exc:
            stored(exc)
            return
        stored(new)


def _insert_batch(cursor: sqlite3.Cursor, entries: Entries, stamp: Any) -> set[str]:
    """Insert a batch, a statement per ``INSERT_ROWS`` rows; return the keys that were new.

    Not a statement per row: sqlite3 lets go of the GIL around every step of SQLite, and
    each time, getting it back meant waiting for the busy event loop's thread. A key stored
    before, or earlier in the batch, inserts nothing.
    """
    new: set[str] = set()
    for start in range(0, len(entries), INSERT_ROWS):
        chunk = entries[start : start + INSERT_ROWS]
        params = [value for key, source, body in chunk for value in (key, source, body, stamp)]
        cursor.execute(_insert_sqlite(len(chunk)), params)
        inserted = cursor.rowcount
        keys = {key for key, _, _ in chunk}
        if inserted == len(keys):
            new |= keys
            continue
        # Some were there already. The rows inserted have consecutive ids up to the last
        # one (one more than the largest id each, and this transaction holds the write lock).
        last = cursor.lastrowid or 0
        new |= {key for (key,) in cursor.execute(_INSERTED_SQLITE, (last - inserted, last))}
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


async def claim_deliveries(
    session: AsyncSession, *, delivery_ids: Sequence[int], now: datetime
) -> set[int]:
    """Mark pending deliveries done inside the caller's transaction, in one statement.

    Returns the ids this transaction claimed; one missing was claimed by another worker.
    """
    if not delivery_ids:
        return set()
    stmt = (
        update(InboxDelivery)
        .where(
            col(InboxDelivery.id).in_(delivery_ids),
            col(InboxDelivery.status) == InboxStatus.PENDING,
        )
        .values(status=InboxStatus.DONE, processed_at=now, attempts=InboxDelivery.attempts + 1)
        .returning(col(InboxDelivery.id))
    )
    return set((await session.exec(stmt)).scalars().all())
