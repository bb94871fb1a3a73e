"""Apply and inspect the Alembic migrations that live in ``storage/migrations``."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

from storage.engine import READONLY_OPTION

# Any constant works; it only has to be the same in every process that migrates this database.
_PG_MIGRATION_LOCK = 7_341_003


def alembic_config() -> Config:
    """Return an Alembic configuration that needs no alembic.ini."""
    cfg = Config()
    cfg.set_main_option("script_location", "storage:migrations")
    return cfg


@cache
def head_revision() -> str:
    """Return the newest revision shipped with this version of reauthbot."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "no migrations found"
    return head


def revisions() -> list[str]:
    """Every revision shipped with this version, oldest first."""
    script = ScriptDirectory.from_config(alembic_config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def describe(revision: str) -> str:
    """A revision's one-line description (its docstring's first line)."""
    script = ScriptDirectory.from_config(alembic_config()).get_revision(revision)
    return (script.doc or "").strip().splitlines()[0] if script is not None else revision


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Bring the database schema up to ``revision``; safe to run from several processes at once."""
    await _migrate(engine, command.upgrade, revision)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    """Take the schema back to ``revision`` (``"base"``: nothing), dropping what came after."""
    await _migrate(engine, command.downgrade, revision)


async def _migrate(engine: AsyncEngine, step: Callable[[Config, str], None], revision: str) -> None:
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Two replicas starting together must not both create the tables.
            await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        await conn.run_sync(_run, step, revision)


def _run(conn: Connection, step: Callable[[Config, str], None], revision: str) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    step(cfg, revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    """Return the revision the database is at, or None when it was never migrated."""
    readonly = engine.execution_options(**{READONLY_OPTION: True})
    async with readonly.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())


async def is_up_to_date(engine: AsyncEngine) -> bool:
    """Tell whether the database answers and carries the newest schema."""
    return await current_revision(engine) == head_revision()
