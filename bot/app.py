"""The composition root: ``create_app`` wires settings, database, notifier and scheduler.

Nothing happens at import time. ``create_app`` builds what never changes, the frozen
``Services`` (clients, engine, session factories; see bot.services), and hands it to the Slack
surfaces, the routes and the jobs. Startup and cleanup run as aiohttp cleanup contexts, in
order: the database (migrated; disposed of on the way down if the app made the engine), the
Nylas client's connections, then the background workers (notifier, scheduler), which are
stopped first on the way down so in-flight work finishes while the database is still open.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from functools import partial

import httpx
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from pydantic import SecretStr
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.ext.asyncio import AsyncEngine

from bot import jobs, reauth_links, routes, webhook
from bot.bodies import DEFAULT_READ_TIMEOUT, READ_TIMEOUT, quiet_client_faults
from bot.inbox_writer import InboxWriter, Load, paced
from bot.loops import Worker
from bot.metrics import Metrics
from bot.notifier import LogSink, Notifier, Sink
from bot.outreach import OutreachSink
from bot.pager import PagerSink
from bot.runtime import RUNTIME, Runtime
from bot.services import SERVICES, Services, build_services
from bot.settings import Settings
from bot.slack import app as slack_app
from bot.slack.sink import SlackSink
from storage import outbox
from storage.engine import (
    WalCheckpointer,
    create_engine,
    is_sqlite,
    reader_engine,
)
from storage.migrate import upgrade
from storage.models import OUTREACH_CHANNEL, PAGER_CHANNEL
from workflows import links
from workflows.clock import Clock, system_clock
from workflows.episodes import DATABASE, Episodes
from workflows.ingest import BATCH, drain_inbox
from workflows.nylas import NylasClient
from workflows.outreach import NylasMailer, OutreachWebhook
from workflows.paging import PagerDuty

log = logging.getLogger("reauthbot.app")

CleanupCtx = Callable[[web.Application], AsyncIterator[None]]

MAX_BODY_BYTES = 1024 * 1024
MIGRATION_RETRY_SECONDS = 5.0

LOCAL_MODE_BANNER = (
    "*** LOCAL MODE *** no Slack app is configured (SLACK_BOT_TOKEN is not set). "
    "Alerts are written to this log instead of Slack."
)


# Options for the server that runs the app: webhook signatures are checked over the bytes as
# sent, so compressed bodies must reach the handler compressed.
SERVER_OPTIONS: dict[str, object] = {"auto_decompress": False}
SHUTDOWN_TIMEOUT = 10.0


def run(
    app: web.Application, *, host: str, port: int, print: Callable[..., None] | None = None
) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, as ``reauthbot serve`` does.

    The one place that says how the app is served (the default asyncio event loop, no access
    log, ``SERVER_OPTIONS``), so that the benchmark's bare server can be served the same way.
    """
    web.run_app(
        app,
        host=host,
        port=port,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        access_log=None,
        print=print,
        **SERVER_OPTIONS,  # type: ignore[arg-type]
    )


def create_app(
    settings: Settings,
    *,
    engine: AsyncEngine | None = None,
    nylas: NylasClient | None = None,
    clock: Clock | None = None,
    slack_client: AsyncWebClient | None = None,
    sink: Sink | None = None,
    migrate: bool = True,
    scheduled_jobs: bool = True,
    read_timeout: float = DEFAULT_READ_TIMEOUT,
) -> web.Application:
    """Build the aiohttp application; pass fakes for any part to test it.

    ``scheduled_jobs=False`` leaves out the periodic jobs (reconciliation, retention), for
    tests that must see only the effects of what they send. ``read_timeout`` bounds the
    seconds a request may take to send its body.

    Serve it with ``run`` (or with ``SERVER_OPTIONS``: ``web.run_app(app, **SERVER_OPTIONS)``).
    """
    client = None
    revoke_enabled = settings.policy.permissions.revoke is not None
    if slack_client is not None or not settings.local_mode:
        settings.require_slack()
        client = slack_client or slack_app.build_client(settings)
        sink = sink or SlackSink(
            client, revoke_enabled=revoke_enabled, outreach=settings.outreach_channel
        )
    # Made here, opened on first use: the startup hook migrates, the cleanup disposes.
    owned = engine is None
    engine = engine or create_engine(settings.database_url, checkpoint_wal=False)
    readers = reader_engine(engine) if owned else None
    http = None
    if nylas is None and settings.nylas_configured:
        http = nylas_http()
        nylas = build_nylas(settings, http)
    services = build_services(
        settings,
        engine=engine,
        readers=readers,
        clock=clock or system_clock,
        nylas=nylas,
        slack=client,
        sink=sink or LogSink(revoke_enabled=revoke_enabled, outreach=settings.outreach_channel),
    )
    runtime = Runtime()
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[routes.count_requests])
    app[SERVICES] = services
    app[RUNTIME] = runtime
    app[READ_TIMEOUT] = read_timeout
    quiet_client_faults()
    listen = settings.metrics_listen
    routes.register(app, operational=listen is None)
    webhook.register(app)
    reauth_links.register(app)
    bolt = None
    if client is not None:
        bolt = slack_app.build_bolt(services, client)
        secret = settings.slack_signing_secret
        signing = None if settings.socket_mode or secret is None else secret.get_secret_value()
        slack_app.register(app, bolt, signing_secret=signing)
    app.cleanup_ctx.append(_database(services, runtime, owned, readers, migrate))
    app.cleanup_ctx.append(_closing(http))
    app.cleanup_ctx.append(_workers(services, runtime, scheduled_jobs))
    if bolt is not None and settings.socket_mode:
        app.cleanup_ctx.append(_socket_mode(settings, bolt))
    if listen is not None:

        def bound(host: str, port: int) -> None:
            runtime.metrics_address = (host, port)

        # Last in, first out: it stops answering before the workers and the database stop.
        app.cleanup_ctx.append(routes.metrics_listener(*listen, bound))
    return app


def _socket_mode(settings: Settings, bolt: AsyncApp) -> CleanupCtx:
    """Receive Slack traffic over a WebSocket; the HTTP routes keep serving Nylas and health.

    The connection is made in the background: while Slack is unreachable or refuses the
    token, webhooks must still be stored, so the HTTP server does not wait for it.
    """

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        assert settings.slack_app_token is not None
        handler = AsyncSocketModeHandler(bolt, settings.slack_app_token.get_secret_value())

        async def connect() -> None:
            try:
                await handler.connect_async()
            except Exception:
                log.exception("cannot connect to Slack in Socket Mode")
                raise
            log.info("connected to Slack in Socket Mode")

        connecting = asyncio.create_task(connect(), name="socket-mode-connect")
        yield
        connecting.cancel()
        with suppress(asyncio.CancelledError, Exception):
            await connecting
        await handler.close_async()

    return ctx


def build_nylas(settings: Settings, http: httpx.AsyncClient) -> NylasClient:
    """The Nylas client the settings describe (call only when ``nylas_configured``)."""

    def secret(value: SecretStr | None) -> str | None:
        return None if value is None else value.get_secret_value()

    return NylasClient(
        http,
        api_version=settings.nylas_api_version,
        base_url=settings.nylas_base_url,
        api_key=secret(settings.nylas_api_key),
        client_id=settings.nylas_client_id,
        client_secret=secret(settings.nylas_client_secret),
    )


def nylas_http() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(15.0, connect=5.0))


def _closing(http: httpx.AsyncClient | None) -> CleanupCtx:
    """Close the Nylas client's connections once the workers that use it have stopped."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        yield
        if http is not None:
            await http.aclose()

    return ctx


def _database(
    services: Services,
    runtime: Runtime,
    owned: bool,
    readers: AsyncEngine | None,
    migrate: bool,
) -> CleanupCtx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        engine = services.engine
        stop_checkpoints = asyncio.Event()
        checkpoints = None
        if owned and is_sqlite(engine):
            runtime.checkpointer = WalCheckpointer(engine)
            checkpoints = asyncio.create_task(runtime.checkpointer.run(stop_checkpoints))
        retry: asyncio.Task[None] | None = None
        if migrate:
            if not await _try_migrate(engine, runtime, services.episodes):
                retry = asyncio.create_task(_migrate_until_done(engine, runtime, services.episodes))
        else:
            runtime.migrated = True
        yield
        if retry is not None:
            retry.cancel()
            with suppress(asyncio.CancelledError):
                await retry
        if checkpoints is not None:
            stop_checkpoints.set()
            await checkpoints
        if readers is not None:
            await readers.dispose()
        if owned:
            await engine.dispose()
        log.info("database closed")

    return ctx


async def _try_migrate(engine: AsyncEngine, runtime: Runtime, episodes: Episodes) -> bool:
    began = episodes.now()
    try:
        await upgrade(engine)
    except Exception as exc:
        episodes.failed(exc, loop="migrations", retry_in=MIGRATION_RETRY_SECONDS, began=began)
        return False
    episodes.succeeded(DATABASE, "migrations", began=began)
    runtime.migrated = True
    log.info("database schema is up to date")
    return True


async def _migrate_until_done(engine: AsyncEngine, runtime: Runtime, episodes: Episodes) -> None:
    while True:
        await asyncio.sleep(MIGRATION_RETRY_SECONDS)
        if await _try_migrate(engine, runtime, episodes):
            return


def _workers(services: Services, runtime: Runtime, scheduled_jobs: bool) -> CleanupCtx:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = services.settings
        if settings.local_mode:
            log.warning(LOCAL_MODE_BANNER)
        sessions = services.sessions
        episodes = services.episodes
        stop = asyncio.Event()
        notifier = Notifier(
            sessions,
            services.sink,
            clock=services.clock,
            metrics=services.metrics,
            readers=services.readers,
            not_channels=(PAGER_CHANNEL, OUTREACH_CHANNEL),
            stopping=stop.is_set,
            episodes=episodes,
        )
        inbox_writer = InboxWriter(services.engine, clock=services.clock, episodes=episodes)
        runtime.inbox_writer = inbox_writer
        runtime.notify = Worker(
            "notifier", paced(notifier.drain_once, inbox_writer.load), episodes=episodes
        )

        ingest_step = partial(
            drain_inbox,
            sessions,
            nylas=services.nylas,
            clock=services.clock,
            route=services.route,
            readers=services.readers,
            step_aside=inbox_writer.step_aside,
            saturated=lambda: inbox_writer.load() is Load.SATURATED,
            contended=inbox_writer.contended,
            storms=settings.policy.storms,
            episodes=episodes,
        )
        runtime.ingest = Worker(
            "ingest", paced(ingest_step, inbox_writer.load, full=BATCH), episodes=episodes
        )
        pager_http = None
        if settings.pagerduty_routing_key is not None:
            pager_http = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0))
            pager = PagerDuty(
                pager_http,
                routing_key=settings.pagerduty_routing_key.get_secret_value(),
                base_url=settings.pagerduty_api_url,
            )
            paging = Notifier(
                sessions,
                PagerSink(pager),
                clock=services.clock,
                metrics=services.metrics,
                readers=services.readers,
                channel=PAGER_CHANNEL,
                stopping=stop.is_set,
                episodes=episodes,
            )
            runtime.page = Worker("pager", paging.drain_once, episodes=episodes)
        outreach_http = None
        if settings.outreach_channel is not None:
            outreach_http = httpx.AsyncClient(timeout=httpx.Timeout(15.0, connect=5.0))
            reaching = Notifier(
                sessions,
                outreach_sink(settings, outreach_http, services.metrics),
                clock=services.clock,
                metrics=services.metrics,
                readers=services.readers,
                batch=10,
                channel=OUTREACH_CHANNEL,
                stopping=stop.is_set,
                still_due=links.still_due,
                after_sent=links.record_sent,
                after_failed=links.record_failed,
                mark_in_flight=True,
                episodes=episodes,
            )
            runtime.reach = Worker("outreach", reaching.drain_once, episodes=episodes)
        # Whatever commits queued messages wakes the drain of their channel.
        stop_waking = outbox.on_queued(wake_senders(runtime.notify, runtime.page, runtime.reach))
        drains = (runtime.ingest, runtime.notify, runtime.page, runtime.reach)
        workers = [w for w in drains if w is not None]
        tasks = [asyncio.create_task(worker.run(stop), name=worker.name) for worker in workers]
        tasks.append(asyncio.create_task(runtime.inbox_writer.run(stop), name="inbox-writer"))
        scheduler = AsyncIOScheduler(timezone="UTC")
        jobs.schedule(scheduler, services, jobs.table(settings))
        runtime.scheduler = scheduler
        if scheduled_jobs:
            scheduler.start()
            if services.nylas is not None:
                # Alert rules measure a reconciliation that stopped succeeding in intervals.
                services.metrics.reconcile_interval.set(settings.poll_interval.total_seconds())
        # What exists by now (modules, the app, the engine) lives as long as the process. Kept
        # out of the garbage collector's full passes, which otherwise stalled the event loop for
        # up to 100 ms under load (webhook p99 at 300/s: 87 ms, 18 ms with this).
        gc.freeze()
        yield
        if scheduler.running:
            scheduler.shutdown(wait=False)
        stop.set()
        await asyncio.gather(*tasks)
        stop_waking()
        for http_client in (pager_http, outreach_http):
            if http_client is not None:
                await http_client.aclose()
        log.info("workers stopped")

    return ctx


def outreach_sink(settings: Settings, http: httpx.AsyncClient, metrics: Metrics) -> OutreachSink:
    """The sink that reaches end users the way ``[outreach]`` says."""
    policy = settings.policy.outreach
    mailer = webhook_client = None
    if policy.channel == "nylas":
        assert policy.grant_id is not None and settings.nylas_api_key is not None
        mailer = NylasMailer(
            http,
            base_url=settings.nylas_base_url,
            api_key=settings.nylas_api_key.get_secret_value(),
            grant_id=policy.grant_id,
        )
    else:
        assert policy.webhook_url is not None and settings.outreach_secret is not None
        webhook_client = OutreachWebhook(
            http, url=policy.webhook_url, secret=settings.outreach_secret.get_secret_value()
        )
    return OutreachSink(
        channel=str(policy.channel),
        mailer=mailer,
        webhook=webhook_client,
        subject=policy.subject,
        template=policy.template_text,
        metrics=metrics,
    )


def wake_senders(
    slack: Worker, pager: Worker | None, reach: Worker | None = None
) -> Callable[[frozenset[str]], None]:
    """Wake the drain of each channel that has new messages (from any thread of the process)."""
    loop = asyncio.get_running_loop()
    own = {PAGER_CHANNEL: pager, OUTREACH_CHANNEL: reach}

    def wake(channels: frozenset[str]) -> None:
        if channels - own.keys():
            loop.call_soon_threadsafe(slack.wake)
        for channel, worker in own.items():
            if worker is not None and channel in channels:
                loop.call_soon_threadsafe(worker.wake)

    return wake
