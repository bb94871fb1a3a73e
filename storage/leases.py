"""Leases: which process runs a job that one process at a time should run.

A lease is a row per job name with its holder and until when it holds. Taking it is one
``INSERT … ON CONFLICT DO UPDATE … WHERE`` that succeeds only when the row is new, expired or
already ours, so two processes asking at once cannot both get it, on SQLite or PostgreSQL.
A lease is not released: it runs out, so the job runs at most once per lease period however
many replicas ask.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel.ext.asyncio.session import AsyncSession

from storage._sql import dialect_name
from storage.models import Lease


async def acquire(
    session: AsyncSession, *, name: str, owner: str, now: datetime, period: timedelta
) -> bool:
    """Take or renew the lease ``name`` for ``owner`` until ``now + period``; False if held."""
    dialect = postgresql if dialect_name(session) == "postgresql" else sqlite
    table = Lease.__table__  # type: ignore[attr-defined]
    insert = dialect.insert(table).values(name=name, owner=owner, until=now + period)
    stmt = insert.on_conflict_do_update(
        index_elements=[table.c.name],
        set_={"owner": insert.excluded.owner, "until": insert.excluded.until},
        where=(table.c.until <= now) | (table.c.owner == owner),
    ).returning(table.c.name)
    return (await session.exec(stmt)).first() is not None


async def holder(session: AsyncSession, *, name: str) -> Lease | None:
    """The lease as it stands (who holds it until when), or None if never taken."""
    return await session.get(Lease, name)
