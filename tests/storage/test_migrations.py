"""The migrations build exactly the schema the models describe, on each database."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import SQLModel

import storage.models  # noqa: F401  (registers the tables)


async def test_migrations_match_the_models(engine: AsyncEngine) -> None:
    def differences(connection: Any) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": False})
        return list(compare_metadata(context, SQLModel.metadata))

    async with engine.connect() as connection:
        diff = await connection.run_sync(differences)

    ignored = {"alembic_version"}
    assert [d for d in diff if not (d[0] == "remove_table" and d[1].name in ignored)] == []
