"""Real databases for the tests: a temporary SQLite file, and PostgreSQL when configured.

``TEST_DATABASE_URL`` names a PostgreSQL server (any database on it); each test session makes
its own databases there, under random names, and drops them at the end, so runs never see each
other's rows, nor do the parallel workers of one run (pytest-xdist: each is a session).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from storage.engine import create_engine, normalize_url
from storage.migrate import upgrade

PG_URL = os.environ.get("TEST_DATABASE_URL", "").strip()
TABLES = [
    "cleanup_runs",
    "outbox",
    "case_events",
    "reauth_links",
    "cases",
    "mutes",
    "incidents",
    "inbox",
    "accounts",
    "leases",
    "webhook_alerts",
    "posted_notices",
    "slack_requests",
    "slack_views",
]


def pg_admin_url() -> URL:
    return normalize_url(PG_URL)


async def _pg_admin(sql: str) -> None:
    engine = create_async_engine(pg_admin_url(), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


def check_postgres_reachable() -> None:
    """Fail loudly (not skip) when TEST_DATABASE_URL is set but the server does not answer."""
    try:
        asyncio.run(asyncio.wait_for(_pg_admin("SELECT 1"), timeout=15))
    except Exception as exc:
        raise RuntimeError(
            f"TEST_DATABASE_URL is set but PostgreSQL cannot be reached: {exc!r}"
        ) from exc


def new_database_url(backend: str, tmp_dir: Path) -> str:
    """Create an empty database and return its URL."""
    name = f"reauthbot_t_{uuid.uuid4().hex[:12]}"
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_dir / (name + '.db')}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    return pg_admin_url().set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{parsed.database}" WITH (FORCE)'))


def migrate(url: str) -> None:
    async def run() -> None:
        engine = create_engine(url)
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    asyncio.run(run())


async def clear(engine: AsyncEngine) -> None:
    """Empty every table (children first) so each test starts from nothing."""
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        else:
            for table in TABLES:
                await conn.execute(text(f"DELETE FROM {table}"))
