"""Operational HTTP routes: liveness, readiness and Prometheus metrics.

They are served on the public port, or, when REAUTHBOT_METRICS_ADDR names an address, by a
listener of their own there (``metrics_listener``), and the public port keeps only /healthz.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST

from bot.services import SERVICES, Services
from storage import maintenance
from storage.migrate import current_revision, head_revision
from workflows.episodes import DATABASE

log = logging.getLogger("reauthbot.http")

DB_CHECK_TIMEOUT = 3.0


async def healthz(request: web.Request) -> web.Response:
    """The process is alive and serving HTTP."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready when the database answers and carries the newest schema."""
    _, revision, problem = await _readiness(request.app[SERVICES], loop="readiness")
    if problem is not None:
        return _not_ready(problem)
    return web.json_response({"status": "ready", "schema": revision})


async def _readiness(services: Services, *, loop: str) -> tuple[bool, str | None, str | None]:
    """Whether the database answers, its schema revision, and why the service is not ready
    (None when it is).

    Sets the database and readiness gauges, so that a scrape reports what /readyz answers.
    """
    metrics = services.metrics
    began = services.episodes.now()
    try:
        revision = await asyncio.wait_for(current_revision(services.engine), DB_CHECK_TIMEOUT)
    except Exception as exc:
        metrics.database_up.set(0)
        metrics.ready.set(0)
        services.episodes.failed(exc, loop=loop, what=DATABASE, began=began)
        return False, None, f"database unreachable: {type(exc).__name__}"
    metrics.database_up.set(1)
    if revision != head_revision():
        # Answering is not enough: until it is migrated, every other part still fails.
        metrics.ready.set(0)
        needs = f"database schema at {revision or 'nothing'}, needs {head_revision()}"
        return True, revision, needs
    metrics.ready.set(1)
    services.episodes.succeeded(DATABASE, began=began)
    return True, revision, None


def _not_ready(reason: str) -> web.Response:
    return web.json_response({"status": "not ready", "reason": reason}, status=503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format; readiness, queue depths, ages and open cases at scrape time."""
    services = request.app[SERVICES]
    reachable, _, _ = await _readiness(services, loop="metrics")
    # An unreachable database is reported already; waiting on it again would slow the scrape.
    if reachable:
        await _count_queues(services)
    headers = {"Content-Type": CONTENT_TYPE_LATEST}
    return web.Response(body=services.metrics.render(), headers=headers)


async def _count_queues(services: Services) -> None:
    began = services.episodes.now()
    try:
        now = services.clock()
        async with asyncio.timeout(DB_CHECK_TIMEOUT), services.readers() as session:
            depths = await maintenance.queue_depths(session)
            open_cases = await maintenance.open_cases_by_kind(session)
            sizes = await maintenance.table_sizes(session)
            delivery = await maintenance.oldest_pending_delivery(session)
            messages = await maintenance.oldest_pending_messages(session, now=now)
    except Exception as exc:
        services.episodes.failed(exc, loop="metrics", what=DATABASE, began=began)
        services.metrics.database_up.set(0)
        return
    services.episodes.succeeded(DATABASE, began=began)
    services.metrics.set_depths(depths, open_cases, sizes)
    services.metrics.set_ages(
        delivery=_age(now, delivery),
        messages={sink: _age(now, since) for sink, since in messages.items()},
    )


def _age(now: datetime, since: datetime | None) -> float:
    return 0.0 if since is None else max((now - since).total_seconds(), 0.0)


# The status counted for a request whose client closed the connection before the answer
# (nginx's convention); no answer is sent.
CLIENT_CLOSED = 499


@web.middleware
async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every answer by route and status, errors included, and time it by route."""
    started = time.perf_counter()
    route = request.match_info.route.resource
    name = route.canonical if route is not None else "unmatched"
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        # The server cancels a handler whose client went away: nobody waits for an answer,
        # and it is no failure of ours.
        status = CLIENT_CLOSED
        raise
    finally:
        metrics = request.app[SERVICES].metrics
        metrics.child(metrics.http_requests, name, str(status)).inc()
        metrics.child(metrics.http_duration, name).observe(time.perf_counter() - started)


def register(app: web.Application, *, operational: bool = True) -> None:
    """Add /healthz, and /readyz and /metrics unless a listener of their own serves them."""
    app.router.add_get("/healthz", healthz)
    if operational:
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/metrics", metrics)


def metrics_listener(
    host: str, port: int, bound: Callable[[str, int], None]
) -> Callable[[web.Application], AsyncIterator[None]]:
    """Serve /metrics, /readyz and /healthz on ``host:port``, apart from the public port.

    ``bound`` is told the address actually listened on (port 0 picks a free one).
    """

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        operational = web.Application(middlewares=[count_requests])
        operational[SERVICES] = app[SERVICES]
        register(operational)
        runner = web.AppRunner(operational, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            address = runner.addresses[0]
            bound(str(address[0]), int(address[1]))
            log.info("metrics listening", extra={"url": f"http://{host}:{address[1]}"})
            yield
        finally:
            await runner.cleanup()

    return ctx
