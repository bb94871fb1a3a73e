"""What the running service holds: settings, clock, database, metrics, notifier."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.inbox_writer import InboxWriter
from bot.loops import Worker
from bot.metrics import Metrics
from bot.settings import Settings
from storage.engine import WalCheckpointer
from workflows.clock import Clock
from workflows.lifecycle import Router
from workflows.nylas import NylasClient
from workflows.routing import make_router


@dataclass
class Runtime:
    settings: Settings
    clock: Clock
    metrics: Metrics
    engine: AsyncEngine | None = None
    checkpointer: WalCheckpointer | None = None  # SQLite, when the service made the engine
    sessions: async_sessionmaker[AsyncSession] | None = None
    readers: async_sessionmaker[AsyncSession] | None = None
    nylas: NylasClient | None = None
    notify: Worker | None = None
    page: Worker | None = None
    ingest: Worker | None = None
    inbox_writer: InboxWriter | None = None
    scheduler: AsyncIOScheduler | None = None  # the periodic jobs, started or not
    migrated: bool = False
    # Where /metrics and /readyz are served apart from the public port, once listening.
    metrics_address: tuple[str, int] | None = None
    notes: list[str] = field(default_factory=list)
    # Names this process among replicas (leases, logs): host, pid and a random suffix.
    instance: str = field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    )
    # The keys Nylas signs webhooks with, read once: every delivery needs them.
    webhook_secrets: dict[str, str] = field(init=False)
    webhook_versions: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        self.webhook_secrets = self.settings.webhook_secrets()
        self.webhook_versions = self.settings.webhook_versions()

    @property
    def route(self) -> Router:
        return make_router(self.settings.policy.routing.domains, self.settings.alert_channel)

    def db(self) -> async_sessionmaker[AsyncSession]:
        assert self.sessions is not None, "the database is not open yet"
        return self.sessions

    def reader(self) -> async_sessionmaker[AsyncSession]:
        """Sessions that only read (on SQLite they never wait for the write lock)."""
        assert self.readers is not None, "the database is not open yet"
        return self.readers


RUNTIME = web.AppKey("runtime", Runtime)
