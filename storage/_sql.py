"""SQL helpers that differ between SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession


def dialect_name(session: AsyncSession) -> str:
    bind = session.bind
    assert bind is not None, "session is not bound to an engine"
    return bind.dialect.name


async def insert_ignoring_conflict(
    session: AsyncSession,
    model: type[SQLModel],
    values: dict[str, Any],
    *,
    unique: str,
    where: Any = None,
) -> int | None:
    """Insert a row unless one with the same ``unique`` value exists; return the new id or None.

    ``INSERT … ON CONFLICT DO NOTHING`` lets the database settle a race between two writers: the
    second waits for the first to commit and then inserts nothing, with no error to handle.
    ``where`` names the condition of a partial unique index.
    """
    dialect = postgresql if dialect_name(session) == "postgresql" else sqlite
    table = model.__table__  # type: ignore[attr-defined]
    stmt = (
        dialect.insert(table)
        .values(**values)
        .on_conflict_do_nothing(index_elements=[unique], index_where=where)
        .returning(table.c.id)
    )
    result = await session.exec(stmt)
    row = result.first()
    return None if row is None else int(row[0])
