"""The migrations build exactly the schema the models describe, on each database, and each
one can be undone."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import SQLModel

import storage.models  # noqa: F401  (registers the tables)
from storage.engine import create_engine
from storage.migrate import current_revision, downgrade, head_revision, revisions, upgrade


async def test_migrations_match_the_models(engine: AsyncEngine) -> None:
    def differences(connection: Any) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": False})
        return list(compare_metadata(context, SQLModel.metadata))

    async with engine.connect() as connection:
        diff = await connection.run_sync(differences)

    ignored = {"alembic_version"}
    assert [d for d in diff if not (d[0] == "remove_table" and d[1].name in ignored)] == []


async def test_every_migration_goes_back_and_forth(blank_url: str) -> None:
    # `reauthbot db downgrade` is the supported way back for a rollback: every step must undo
    # its migration on each engine, and the schema after going down and up again is the same.
    engine = create_engine(blank_url)
    try:
        await upgrade(engine)
        shipped = revisions()
        for target in [*reversed(shipped[:-1]), "base"]:
            await downgrade(engine, target)
            assert await current_revision(engine) == (None if target == "base" else target)
        await upgrade(engine)
        assert await current_revision(engine) == head_revision()
        await test_migrations_match_the_models(engine)
    finally:
        await engine.dispose()
