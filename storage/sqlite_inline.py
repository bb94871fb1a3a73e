"""SQLite for the async engine, run on the event loop's own thread.

SQLAlchemy's async SQLite dialect speaks to aiosqlite, which runs every call on a thread of
its own and hands the answer back through the event loop. On a local file a statement takes
microseconds, far less than that round trip, and the engine pools a single connection, so
there is nothing to run in parallel either: the hand-offs are pure cost (about a third of the
time a storm of cases takes to process). This module offers the same small interface as
aiosqlite's connection and cursor, calling :mod:`sqlite3` directly, and lets the event loop
run other tasks whenever a transaction's statements have run back to back for ``TURN_EVERY``.

Only waiting must not happen on the loop's thread: when another process holds the write lock,
SQLite answers SQLITE_BUSY at once (the connection's busy timeout is 0), and the statement is
then run again on a worker thread, which waits for the lock up to ``busy_timeout_ms`` as
aiosqlite would have. In WAL mode that is only ever a ``BEGIN IMMEDIATE`` (every writer
starts so), or setting up the connection.

Nor must a commit, which waits for the disk, and now and then copies the write-ahead log
back into the database file: commits run on a worker thread. Nor must a long query hold up
the loop. Write transactions are short (indexed lookups and
inserts); read-only ones may tally thousands of rows (an incident's message, reports). A
connection in a read-only transaction is marked ``offload`` (``storage.engine`` does it when
the transaction begins) and runs its statements, and reads its rows, on a worker thread.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

# How long the statements of one transaction may run back to back before the event loop gets
# a turn. A turn per statement would make a short transaction, and the write lock it holds,
# last as many loop iterations as it has statements: under load, each is a few milliseconds,
# which webhook deliveries waiting to be stored would wait out.
TURN_EVERY = 0.002
clock = time.perf_counter


def _busy(exc: sqlite3.OperationalError) -> bool:
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_BUSY


class Connection:
    """What SQLAlchemy's aiosqlite adapter uses of ``aiosqlite.Connection``."""

    def __init__(self, conn: sqlite3.Connection, *, busy_timeout_ms: int) -> None:
        self._conn = conn
        self._busy_timeout_ms = busy_timeout_ms
        self._tx = _Inline()  # the adapter queues its isolation-level change here
        self.offload = False  # run on a worker thread (a read-only transaction)
        self._turn_given = 0.0  # when the loop last got a turn from this connection

    async def run(self, call: Callable[..., T], *args: Any) -> T:
        """``call(*args)`` now, or on a worker thread when offloaded or waiting for a lock.

        The event loop gets a turn once statements have run back to back for ``TURN_EVERY``:
        a transaction of many statements must not keep webhook deliveries and clicks waiting
        until it ends, and a short one should end (and let go of the write lock) at once.
        """
        try:
            if self.offload:
                return await self._on_thread(call, *args)
            result = call(*args)
        except sqlite3.OperationalError as exc:
            if not _busy(exc):
                raise
            return await self._on_thread(self._waiting, call, *args)
        if clock() - self._turn_given >= TURN_EVERY:
            await asyncio.sleep(0)
            self._turn_given = clock()
        return result

    async def _on_thread(self, call: Callable[..., T], *args: Any) -> T:
        work = asyncio.ensure_future(asyncio.to_thread(call, *args))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            # The caller gives up (a timeout), but the statement runs on: the connection must
            # not be used by anyone else until it ends, so let go only then.
            await asyncio.wait([work])
            raise

    def _waiting(self, call: Callable[..., T], *args: Any) -> T:
        self._conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
        try:
            return call(*args)
        finally:
            self._conn.execute("PRAGMA busy_timeout=0")

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    async def cursor(self) -> Cursor:
        return Cursor(self, self._conn.cursor())

    async def execute(self, sql: str, parameters: Iterable[Any] = ()) -> Cursor:
        cursor = await self.cursor()
        return await cursor.execute(sql, parameters)

    async def commit(self) -> None:
        # A commit waits for the disk (the WAL's fsync), and now and then copies the WAL back
        # into the database file (an automatic checkpoint, which grows with the database):
        # milliseconds the loop spends answering webhooks instead. Statements are quick; this
        # is not.
        await self._on_thread(self._waiting, self._conn.commit)

    async def rollback(self) -> None:
        self._conn.rollback()

    async def on_thread(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work(connection)`` on a worker thread, where it may wait for other processes.

        For writes that should not wait for the event loop between statements or between
        transactions (webhook deliveries, stored back to back): sqlite3 lets go of the GIL
        while SQLite works, so the loop goes on meanwhile. ``work`` begins and ends its own
        transactions and must leave none open.
        """
        return await self._on_thread(self._waiting, work, self._conn)

    async def close(self) -> None:
        self._conn.close()

    def stop(self) -> None:
        """Close at once (the adapter's forced termination)."""
        self._conn.close()

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)


class Cursor:
    """What SQLAlchemy's aiosqlite adapter uses of ``aiosqlite.Cursor``."""

    def __init__(self, connection: Connection, cursor: sqlite3.Cursor) -> None:
        self._connection = connection
        self._cursor = cursor

    async def execute(self, sql: str, parameters: Iterable[Any] = ()) -> Cursor:
        if sql.startswith("BEGIN"):
            # Whoever begins a transaction has just had to wait for the connection: the loop
            # has had its turn, and the count starts again.
            self._connection._turn_given = clock()
        await self._connection.run(self._cursor.execute, sql, parameters)
        return self

    async def executemany(self, sql: str, parameters: Iterable[Iterable[Any]]) -> Cursor:
        await self._connection.run(self._cursor.executemany, sql, parameters)
        return self

    async def fetchone(self) -> Any:
        return await self._connection.run(self._cursor.fetchone)

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        size = self._cursor.arraysize if size is None else size
        return await self._connection.run(self._cursor.fetchmany, size)

    async def fetchall(self) -> list[Any]:
        return await self._connection.run(self._cursor.fetchall)

    async def close(self) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount


class _Inline:
    """Runs what the adapter would queue for aiosqlite's thread, at once."""

    def put_nowait(self, item: tuple[asyncio.Future[Any] | None, Callable[[], Any]]) -> None:
        future, function = item
        try:
            result = function()
        except Exception as exc:
            if future is not None:
                future.set_exception(exc)
            return
        if future is not None:
            future.set_result(result)


def connector(
    args: Iterable[Any], kwargs: Mapping[str, Any], *, busy_timeout_ms: int
) -> Callable[[], Any]:
    """An ``async_creator`` for ``create_async_engine``, from the dialect's connect arguments."""
    arguments = {**kwargs, "check_same_thread": False, "timeout": 0}

    async def connect() -> Connection:
        conn = sqlite3.connect(*args, **arguments)
        return Connection(conn, busy_timeout_ms=busy_timeout_ms)

    return connect
