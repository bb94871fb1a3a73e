"""What the running service holds: settings, clock, database, metrics, notifier."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.metrics import Metrics
from bot.notifier import Notifier
from bot.settings import Settings
from workflows.clock import Clock


@dataclass
class Runtime:
    settings: Settings
    clock: Clock
    metrics: Metrics
    engine: AsyncEngine | None = None
    sessions: async_sessionmaker[AsyncSession] | None = None
    notifier: Notifier | None = None
    migrated: bool = False
    notes: list[str] = field(default_factory=list)

    def db(self) -> async_sessionmaker[AsyncSession]:
        assert self.sessions is not None, "the database is not open yet"
        return self.sessions


RUNTIME = web.AppKey("runtime", Runtime)
