"""SQL helpers that differ between SQLite and PostgreSQL."""

from __future__ import annotations

import functools
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession


def dialect_name(session: AsyncSession) -> str:
    bind = session.bind
    assert bind is not None, "session is not bound to an engine"
    return bind.dialect.name


def dialect_insert(session: AsyncSession, table: sa.Table) -> Any:
    """The engine's own INSERT construct, which can say ``ON CONFLICT``."""
    dialect = postgresql if dialect_name(session) == "postgresql" else sqlite
    return dialect.insert(table)


async def insert_ignoring_conflict(
    session: AsyncSession,
    model: type[SQLModel],
    values: dict[str, Any],
    *,
    unique: str,
    where: str | None = None,
) -> int | None:
    """Insert a row unless one with the same ``unique`` value exists; return the new id or None.

    ``INSERT … ON CONFLICT DO NOTHING`` lets the database settle a race between two writers: the
    second waits for the first to commit and then inserts nothing, with no error to handle.
    ``where`` is the condition of a partial unique index, in SQL, as the index states it.
    """
    table = model.__table__  # type: ignore[attr-defined]
    stmt = _conflict_free_insert(table, tuple(values), unique, where)
    row = (await session.exec(stmt, params=values)).first()  # type: ignore[call-overload]
    return None if row is None else int(row[0])


@functools.cache
def _conflict_free_insert(
    table: sa.Table, columns: tuple[str, ...], unique: str, where: str | None
) -> sa.TextualSelect:
    """The statement, made once per table and shape, with each value bound by its column's type.

    SQLAlchemy compiles its own INSERT … ON CONFLICT anew at every execution (the dialects'
    insert constructs are never cached): for a case or an outbox message, more time than
    running it. A text statement is compiled once and cached. Both engines read the same SQL.
    """
    target = f"({unique})" + (f" WHERE {where}" if where else "")
    sql = (
        f"INSERT INTO {table.name} ({', '.join(columns)}) "
        f"VALUES ({', '.join(':' + c for c in columns)}) "
        f"ON CONFLICT {target} DO NOTHING RETURNING id"
    )
    binds = [sa.bindparam(c, type_=table.c[c].type) for c in columns]
    return sa.text(sql).bindparams(*binds).columns(table.c.id)
