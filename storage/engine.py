"""The async engine and session factory for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.dialects.sqlite.aiosqlite import dialect as aiosqlite_dialect
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import sqlite_inline

SQLITE_BUSY_TIMEOUT_MS = 10_000
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


def create_engine(url: str | URL, **kwargs: Any) -> AsyncEngine:
    """Create the async engine; for SQLite, WAL mode, a busy timeout and immediate transactions."""
    url = normalize_url(url) if isinstance(url, str) else url
    if url.drivername.startswith("sqlite"):
        assert url.database is not None
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
        _configure_sqlite(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 10)
    # asyncpg prepares every statement; a generic plan cached for "id IN (…500 ids…)" before
    # the table has statistics degrades to a scan of the whole table. Plan each execution.
    settings = {"plan_cache_mode": "force_custom_plan"}
    kwargs.setdefault("connect_args", {"server_settings": settings})
    return create_async_engine(url, **kwargs)


def _configure_sqlite(engine: AsyncEngine) -> None:
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


def readonly_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that only read: on SQLite they do not take the write lock."""
    readonly = engine.execution_options(**{READONLY_OPTION: True})
    return async_sessionmaker(readonly, class_=AsyncSession, expire_on_commit=False)
