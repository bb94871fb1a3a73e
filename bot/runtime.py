"""What the running service has started, filled in by the startup hooks of ``create_app``.

What is built once and never changes is :class:`bot.services.Services`; this is the rest,
which exists only once the service runs. Slack listeners never see it.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.inbox_writer import InboxWriter
from bot.loops import Worker
from storage.engine import WalCheckpointer


@dataclass
class Runtime:
    migrated: bool = False
    checkpointer: WalCheckpointer | None = None  # SQLite, when the service made the engine
    inbox_writer: InboxWriter | None = None
    ingest: Worker | None = None
    notify: Worker | None = None
    page: Worker | None = None
    reach: Worker | None = None  # outreach to end users, when configured
    scheduler: AsyncIOScheduler | None = None  # the periodic jobs, started or not
    # Where /metrics and /readyz are served apart from the public port, once listening.
    metrics_address: tuple[str, int] | None = None


RUNTIME = web.AppKey("runtime", Runtime)
