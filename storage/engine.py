"""The async engine and session factory for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from contextlib import suppress
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.dialects.sqlite.aiosqlite import dialect as aiosqlite_dialect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import sqlite_inline

log = logging.getLogger("reauthbot.storage")

SQLITE_BUSY_TIMEOUT_MS = 10_000
READER_CONNECTIONS = 2
# This many pages (about 400 MB) of write-ahead log that a checkpoint could not copy means
# checkpoints are not catching up: some reader never lets go of an old snapshot.
CHECKPOINT_WARN_PAGES = 100_000
READONLY_OPTION = "reauthbot_readonly"

_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


def normalize_url(raw: str) -> URL:
    """Parse a database URL and pick the async driver; raise ValueError if it cannot be used."""
    try:
        url = make_url(raw.strip())
    except ArgumentError:
        raise ValueError(
            f"{raw!r} is not a database URL; use e.g. sqlite+aiosqlite:///./reauthbot.db "
            "or postgresql+asyncpg://user@host:5432/dbname"
        ) from None
    driver = _DRIVERS.get(url.drivername)
    if driver is None:
        raise ValueError(
            f"unsupported database {url.drivername!r}; use sqlite+aiosqlite:///PATH "
            "or postgresql+asyncpg://user@host:5432/dbname"
        )
    url = url.set(drivername=driver)
    if driver.startswith("sqlite"):
        if not url.database or url.database == ":memory:":
            raise ValueError(
                "an SQLite URL needs a file path, e.g. sqlite+aiosqlite:///./reauthbot.db"
            )
    elif not url.database:
        raise ValueError("a PostgreSQL URL needs a database name, e.g. postgresql+asyncpg://u@h/db")
    return url


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def _is_file_path(url: URL) -> bool:
    """Whether an SQLite URL names a file by its path: not ``:memory:``, nor a ``file:`` URI
    (whose text is no directory to create)."""
    database = url.database or ""
    uri = str(url.query.get("uri", "")).lower() in ("true", "1")
    return database not in ("", ":memory:") and not database.startswith("file:") and not uri


def create_engine(url: str | URL, *, checkpoint_wal: bool = True, **kwargs: Any) -> AsyncEngine:
    """Create the async engine; for SQLite, WAL mode, a busy timeout and immediate transactions.

    ``checkpoint_wal=False`` (SQLite): commits never copy the write-ahead log back into the
    database file, which SQLite otherwise does in whichever commit finds the log past 1,000
    pages; a :class:`WalCheckpointer` must then do it.
    """
    url = normalize_url(url) if isinstance(url, str) else url
    if url.drivername.startswith("sqlite"):
        assert url.database is not None
        if _is_file_path(url):
            Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # SQLite has one writer at a time, and its busy handler makes waiting writers poll in
        # sleeps of up to 100 ms. One pooled connection makes them queue in order instead.
        kwargs.setdefault("pool_size", 1)
        kwargs.setdefault("max_overflow", 0)
        kwargs.setdefault("pool_timeout", 60)
        # Statements run on the event loop's thread; only waits for a lock go to a thread.
        args, connect_kwargs = aiosqlite_dialect().create_connect_args(url)
        kwargs.setdefault(
            "async_creator",
            sqlite_inline.connector(args, connect_kwargs, busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS),
        )
        engine = create_async_engine(url, **kwargs)
        _configure_sqlite(engine, checkpoint_wal=checkpoint_wal)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    # asyncpg prepares every statement; a generic plan cached for "id IN (…500 ids…)" before
    # the table has statistics degrades to a scan of the whole table. Plan each execution.
    settings = {"plan_cache_mode": "force_custom_plan"}
    kwargs.setdefault("connect_args", {"server_settings": settings})
    return create_async_engine(url, **kwargs)


def _configure_sqlite(engine: AsyncEngine, *, checkpoint_wal: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves (below) instead of the driver's deferred BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # No busy timeout: a statement that must wait for another process's lock (switching
        # to WAL may) waits on a worker thread, never on the event loop (storage.sqlite_inline).
        cursor.execute("PRAGMA busy_timeout=0")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        # FULL: a delivery acknowledged to Nylas must survive a power loss, not just a crash.
        cursor.execute("PRAGMA synchronous=FULL")
        if not checkpoint_wal:
            cursor.execute("PRAGMA wal_autocheckpoint=0")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A deferred transaction that later writes fails at once with SQLITE_BUSY when another
        # writer got there first; taking the write lock up front makes it wait its turn instead.
        # Read-only sessions begin deferred: in WAL mode readers never block the writer.
        readonly = conn.get_execution_options().get(READONLY_OPTION, False)
        driver = conn.connection.driver_connection
        if isinstance(driver, sqlite_inline.Connection):
            driver.offload = bool(readonly)  # reads may be long: off the event loop
        conn.exec_driver_sql("BEGIN DEFERRED" if readonly else "BEGIN IMMEDIATE")


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Return the factory of sessions used by every workflow."""
    return async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)


def reader_engine(engine: AsyncEngine) -> AsyncEngine | None:
    """SQLite: an engine of its own for read-only sessions (dispose of it too); else None.

    The main engine pools one connection, so that writers queue in order. A read holding it,
    such as tallying a storm's tens of thousands of cases for its Slack message, made every
    webhook delivery wait to be stored meanwhile. In WAL mode readers and the writer do not
    block each other, as long as they do not share a connection.
    """
    if not is_sqlite(engine):
        return None
    return create_engine(engine.url, checkpoint_wal=False, pool_size=READER_CONNECTIONS)


def readonly_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that only read: on SQLite they do not take the write lock."""
    readonly = engine.execution_options(**{READONLY_OPTION: True})
    return async_sessionmaker(readonly, class_=AsyncSession, expire_on_commit=False)


class WalCheckpointer:
    """Copies SQLite's write-ahead log back into the database file, away from any commit.

    Left to SQLite, the commit that finds the log past 1,000 pages does it: copying and
    syncing the database file held that commit, and every webhook delivery waiting on it, for
    up to a tenth of a second once the database held tens of thousands of cases. Here it runs
    on a worker thread of its own connection, every ``every`` seconds. A passive checkpoint
    takes no lock that writers or readers wait for; what it could not copy yet (frames a
    reader still needs) it copies next time.
    """

    def __init__(self, engine: AsyncEngine, *, every: float = 1.0) -> None:
        assert is_sqlite(engine)
        self._args, self._kwargs = aiosqlite_dialect().create_connect_args(engine.url)
        self._every = every
        self._warning: str | None = None  # the problem last logged, while it lasts
        self.passes = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Checkpoint every ``every`` seconds until ``stop`` is set, and once more then."""
        conn: sqlite3.Connection | None = None
        try:
            while True:
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._every)
                conn = conn or await asyncio.to_thread(self._connect)
                if conn is not None:
                    await asyncio.to_thread(self._checkpoint, conn)
                if stop.is_set():
                    return
        finally:
            if conn is not None:
                conn.close()

    def _connect(self) -> sqlite3.Connection | None:
        kwargs = {**self._kwargs, "check_same_thread": False, "isolation_level": None}
        try:
            return sqlite3.connect(*self._args, **kwargs)  # type: ignore[call-overload]
        except sqlite3.Error as exc:
            self._warn("cannot open the SQLite database to checkpoint it", str(exc))
            return None

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            _, pages, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            self._warn("cannot checkpoint the SQLite write-ahead log", str(exc))
            return
        self.passes += 1
        if pages - copied > CHECKPOINT_WARN_PAGES:
            self._warn("SQLite checkpoints are falling behind", f"{pages - copied} pages")
        else:
            self._warning = None

    def _warn(self, problem: str, detail: str) -> None:
        """Log a problem once, not every second, until it clears or another one comes."""
        if problem != self._warning:
            log.warning("%s: %s", problem, detail)
        self._warning = problem
