"""The scheduled jobs, declared as data, and the one function that puts them on the scheduler.

Each job is a plain workflow call over what the service holds; ``isolated`` wraps every run so
that a failure is counted and reported to the service's episodes (``workflows.episodes``: one
line per outage, not per run) instead of ending the schedule. Which jobs exist and how often
they run follow from the settings alone (``table``); ``schedule`` adds them, leaving out those
that need Nylas when no Nylas client is configured.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from bot.services import Services
from bot.settings import Settings
from storage import leases
from workflows.actions import end_snoozes
from workflows.cleanup import queue_cleanup
from workflows.digest import queue_digest
from workflows.episodes import DATABASE, NYLAS
from workflows.escalation import escalate_due, sweep_period
from workflows.links import auto_outreach
from workflows.maintenance import purge_old_rows
from workflows.mutes import summarise_ended
from workflows.nylas import NylasError
from workflows.reconcile import reconcile
from workflows.stalled import flag_stalled_links
from workflows.stuck import open_stuck_cases
from workflows.webhook_watch import check_webhook_destinations

log = logging.getLogger("reauthbot.app")

JobFn = Callable[[Services], Awaitable[None]]

# The share of the poll interval a replica holds the reconciliation lease: whichever replica
# asks first in each interval runs the pass, the others skip it.
RECONCILE_LEASE_SHARE = 0.9
# A daily job may start up to an hour late (the event loop was busy, the clock jumped) rather
# than be skipped until the next day.
DAILY_GRACE_SECONDS = 3600


@dataclass(frozen=True)
class Job:
    """One scheduled job: what runs, when, and what it needs."""

    name: str
    run: JobFn
    trigger: BaseTrigger
    needs_nylas: bool = False
    # Run once as the service starts too, not only after the first interval.
    at_start: bool = False
    # Seconds a run may start late rather than be skipped; None: the scheduler's default.
    misfire_grace: int | None = None
    # Whether every run reads the database, so that one that succeeds ends its outage.
    reads_database: bool = True


def every(**interval: float) -> IntervalTrigger:
    return IntervalTrigger(timezone="UTC", **interval)


def table(settings: Settings) -> list[Job]:
    """The jobs the settings call for."""
    poll = settings.poll_interval.total_seconds()
    jobs = [
        Job("retention", purge_retained, every(hours=6)),
        Job("snoozes", end_due_snoozes, every(minutes=1)),
        Job("stuck", open_stuck, every(minutes=5)),
        Job("mutes", summarise_mutes, every(minutes=1)),
        # Hourly, though it posts at most once a month: a service down at the window's start
        # still offers the clean-up as soon as it is back.
        # Outside the last five days of the month a run reads nothing: its success says
        # nothing of the database.
        Job("cleanup", offer_cleanup, every(hours=1), at_start=True, reads_database=False),
    ]
    if settings.outreach_channel is not None and settings.policy.outreach.auto:
        jobs.append(Job("outreach", reach_new_cases, every(seconds=15), at_start=True))
    if settings.public_url is not None:
        # Only tracked links record their opens.
        jobs.append(Job("stalled_links", flag_stalled, every(minutes=10)))
    if settings.policy.escalation.levels:
        period = sweep_period(settings.policy.escalation).total_seconds()
        jobs.append(Job("escalation", escalate, every(seconds=period)))
    if (at := settings.digest_at) is not None:
        daily = CronTrigger(hour=at.hour, minute=at.minute, timezone="UTC")
        jobs.append(Job("digest", digest, daily, misfire_grace=DAILY_GRACE_SECONDS))
    # At start too: webhooks missed while the service was down are caught now.
    reconciling = Job(
        "reconcile", reconcile_pass, every(seconds=poll), needs_nylas=True, at_start=True
    )
    jobs.append(reconciling)
    # At start too: a destination Nylas marked failing while the service was down is why
    # webhooks were missed.
    watching = Job(
        "webhook_watch", watch_webhooks, every(seconds=poll), needs_nylas=True, at_start=True
    )
    jobs.append(watching)
    return jobs


def schedule(scheduler: AsyncIOScheduler, services: Services, jobs: list[Job]) -> None:
    """Add ``jobs`` to ``scheduler``: one run of each at a time, missed runs folded into one."""
    for job in jobs:
        if job.needs_nylas and services.nylas is None:
            continue
        options: dict[str, Any] = {}
        if job.at_start:
            options["next_run_time"] = services.clock()
        if job.misfire_grace is not None:
            options["misfire_grace_time"] = job.misfire_grace
        scheduler.add_job(
            isolated(
                services,
                job.name,
                job.run,
                next_run=partial(_next_run, scheduler, job.name),
                nylas=job.needs_nylas,
                database=job.reads_database,
            ),
            job.trigger,
            id=job.name,
            max_instances=1,
            coalesce=True,
            **options,
        )


def isolated(
    services: Services,
    name: str,
    fn: JobFn,
    *,
    next_run: Callable[[], datetime | None] = lambda: None,
    nylas: bool = False,
    database: bool = True,
) -> Callable[[], Awaitable[None]]:
    """Wrap a job so a failure is counted and reported instead of killing the schedule.

    ``next_run`` tells when the job runs next (the retry, if this run failed); a run that
    succeeds ends an outage of what it reads: the ``database`` unless told otherwise, and
    ``nylas`` when told.
    """
    loop = f"{name} job"
    reached = (*((DATABASE,) if database else ()), *((NYLAS,) if nylas else ()), loop)

    async def run() -> None:
        began = services.episodes.now()
        try:
            await fn(services)
        except asyncio.CancelledError:
            # Shutdown cancels a job in progress; its work is in the database, to be redone.
            services.metrics.job_runs.labels(job=name, outcome="cancelled").inc()
            log.info("scheduled job stopped by shutdown", extra={"job": name})
        except Exception as exc:
            services.metrics.job_runs.labels(job=name, outcome="error").inc()
            services.episodes.failed(exc, loop=loop, retry_at=next_run(), began=began)
        else:
            services.metrics.job_runs.labels(job=name, outcome="ok").inc()
            services.episodes.succeeded(*reached, began=began)

    return run


def _next_run(scheduler: AsyncIOScheduler, name: str) -> datetime | None:
    """When the scheduler runs the job next (already set while the current run goes on)."""
    job = scheduler.get_job(name)
    return None if job is None else job.next_run_time


async def open_stuck(services: Services) -> None:
    limits = services.settings.policy.stuck
    now = services.clock()
    await open_stuck_cases(services.sessions, limits=limits, now=now, route=services.route)


async def reach_new_cases(services: Services) -> None:
    reached = await auto_outreach(services.sessions, now=services.clock(), maker=services.links)
    if reached:
        log.info("end users reached automatically", extra={"cases": reached})


async def end_due_snoozes(services: Services) -> None:
    await end_snoozes(services.sessions, now=services.clock())


async def summarise_mutes(services: Services) -> None:
    channel = services.settings.alert_channel
    await summarise_ended(services.sessions, now=services.clock(), channel=channel)


async def flag_stalled(services: Services) -> None:
    await flag_stalled_links(services.sessions, now=services.clock())


async def escalate(services: Services) -> None:
    policy = services.settings.policy.escalation
    await escalate_due(services.sessions, policy=policy, now=services.clock())


async def reconcile_pass(services: Services) -> None:
    assert services.nylas is not None
    period = services.settings.poll_interval * RECONCILE_LEASE_SHARE
    async with services.sessions() as session, session.begin():
        mine = await leases.acquire(
            session, name="reconcile", owner=services.instance, now=services.clock(), period=period
        )
    if not mine:
        log.info("reconciliation skipped: another replica runs it this interval")
        services.metrics.job_runs.labels(job="reconcile", outcome="skipped").inc()
        return
    report = await reconcile(
        services.sessions,
        services.nylas,
        clock=services.clock,
        route=services.route,
        storms=services.settings.policy.storms,
    )
    for outcome in ("seen", "new", "changed", "missing", "skipped"):
        services.metrics.reconciled_accounts.labels(outcome=outcome).inc(getattr(report, outcome))
    services.metrics.last_reconcile_success.set(services.clock().timestamp())


async def watch_webhooks(services: Services) -> None:
    assert services.nylas is not None
    report = await check_webhook_destinations(
        services.sessions,
        services.nylas,
        now=services.clock(),
        channel=services.settings.alert_channel,
    )
    if report.error is not None:
        # Nothing changed; the run failed all the same, and belongs to an outage of Nylas.
        raise NylasError(report.error)


async def digest(services: Services) -> None:
    channel = services.settings.alert_channel
    await queue_digest(services.sessions, now=services.clock(), channel=channel)


async def offer_cleanup(services: Services) -> None:
    policy = services.settings.policy
    await queue_cleanup(
        services.sessions,
        now=services.clock(),
        channel=services.settings.alert_channel,
        cleanup=policy.cleanup,
        billing=policy.billing,
    )


async def purge_retained(services: Services) -> None:
    inbox, outbox = await purge_old_rows(
        services.sessions, clock=services.clock, keep_days=services.settings.retention_days
    )
    log.info("retention purge", extra={"inbox_deleted": inbox, "outbox_deleted": outbox})
