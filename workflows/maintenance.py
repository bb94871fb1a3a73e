"""Housekeeping jobs run by the scheduler."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import maintenance
from workflows.clock import Clock


async def purge_old_rows(
    sessions: async_sessionmaker[AsyncSession], *, clock: Clock, keep_days: int
) -> tuple[int, int]:
    """Delete processed inbox and sent outbox rows older than ``keep_days``."""
    async with sessions() as session, session.begin():
        return await maintenance.purge(session, before=clock() - timedelta(days=keep_days))
