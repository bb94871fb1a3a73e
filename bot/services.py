"""What the service is built from: made once by ``create_app``, never changed afterwards.

``create_app`` builds a frozen :class:`Services` before anything else and hands it to every
``register`` of a Slack surface, to the scheduled jobs and to the routes. Everything in it can
exist before the service starts: SQLAlchemy opens no connection until one is needed, so the
engine and the session factories are made in ``create_app`` (the startup hook only migrates,
and the cleanup hook disposes of the engine it made), and so is the Nylas client, whose HTTP
client the cleanup closes. Listeners therefore take the object itself, not an accessor that
could be read too early, and read plain fields.

What exists only while the service runs (whether the schema is migrated, the workers, the
scheduler, the metrics listener's address) is :class:`bot.runtime.Runtime`, filled by the
startup hooks and read by the HTTP routes and tests, never by listeners.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

from aiohttp import web
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.metrics import Metrics
from bot.notifier import Sink
from bot.settings import Settings
from storage.engine import readonly_session_factory, session_factory
from storage.models import Account
from workflows.clock import Clock
from workflows.episodes import Episodes
from workflows.lifecycle import Router
from workflows.links import HostedUrl, LinkMaker
from workflows.nylas import NylasClient
from workflows.routing import make_router


@dataclass(frozen=True)
class Services:
    settings: Settings
    clock: Clock
    metrics: Metrics
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    # Sessions that only read (on SQLite they never wait for the write lock).
    readers: async_sessionmaker[AsyncSession]
    nylas: NylasClient | None  # None when Nylas is not configured
    slack: AsyncWebClient | None  # None in local mode
    sink: Sink  # where the notifier sends what the outbox holds
    route: Router  # the channel each account's alerts go to
    # Names this process among replicas (leases, logs): host, pid and a random suffix.
    instance: str
    # The keys Nylas signs webhooks with, read once: every delivery needs them.
    webhook_secrets: dict[str, str]
    webhook_versions: frozenset[str]
    # How re-auth links are made (tracked, sent to end users) and how long they work.
    links: LinkMaker
    # Where every retrying part reports its failures, so an outage is logged once.
    episodes: Episodes


def build_services(
    settings: Settings,
    *,
    engine: AsyncEngine,
    sink: Sink,
    clock: Clock,
    readers: AsyncEngine | None = None,
    nylas: NylasClient | None = None,
    slack: AsyncWebClient | None = None,
    metrics: Metrics | None = None,
) -> Services:
    """The services over ``engine`` (and ``readers``, an engine for reads, when there is one)."""
    return Services(
        settings=settings,
        clock=clock,
        metrics=metrics or Metrics(),
        engine=engine,
        sessions=session_factory(engine),
        readers=readonly_session_factory(readers or engine),
        nylas=nylas,
        slack=slack,
        sink=sink,
        route=make_router(settings.policy.routing.domains, settings.alert_channel),
        instance=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
        webhook_secrets=settings.webhook_secrets(),
        webhook_versions=settings.webhook_versions(),
        links=LinkMaker(
            hosted=hosted_auth(settings, nylas),
            public_url=settings.public_url,
            expire_after=settings.policy.links.expire_after,
            outreach=settings.policy.outreach,
        ),
        episodes=Episodes(clock=clock),
    )


def hosted_auth(settings: Settings, nylas: NylasClient | None) -> HostedUrl | None:
    """Build Nylas hosted-auth URLs (``login_hint``, ``provider``) when Nylas' client id and
    redirect URI are set; None otherwise."""
    if nylas is None or not settings.nylas_client_id or not settings.nylas_redirect_uri:
        return None
    redirect = settings.nylas_redirect_uri

    def build(account: Account) -> str:
        assert nylas is not None and account.email is not None
        # No state: the account id in it would let anyone who sees the link guess others.
        return nylas.reauth_url(
            email=account.email, redirect_uri=redirect, provider=account.provider
        )

    return build


SERVICES = web.AppKey("services", Services)
