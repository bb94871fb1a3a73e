"""The job table: which jobs the settings call for, and how one failing run is contained."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from pathlib import Path

import pytest
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.ext.asyncio import AsyncEngine

from bot import jobs
from bot.jobs import isolated
from bot.notifier import LogSink
from bot.services import Services, build_services
from bot.settings import load_settings
from tests.conftest import FrozenClock
from workflows.episodes import DATABASE


def test_the_table_follows_the_settings(tmp_path: Path) -> None:
    config = tmp_path / "policy.toml"
    config.write_text('[[escalation.levels]]\nafter = "3s"\nmention = ["U0SUE"]\n')
    plain = jobs.table(load_settings(_env_file=None))
    assert [job.name for job in plain] == [
        "retention",
        "snoozes",
        "stuck",
        "mutes",
        "cleanup",
        "reconcile",
        "webhook_watch",
    ]
    assert [job.name for job in plain if job.needs_nylas and job.at_start] == [
        "reconcile",
        "webhook_watch",
    ]
    full = jobs.table(load_settings(_env_file=None, config_file=config, digest_at="09:00"))
    assert {"escalation", "digest"} <= {job.name for job in full}
    tracked = jobs.table(load_settings(_env_file=None, public_url="https://reauth.example.test"))
    stalled = next(job for job in tracked if job.name == "stalled_links")
    assert isinstance(stalled.trigger, IntervalTrigger)
    assert stalled.trigger.interval == timedelta(minutes=10)


@pytest.fixture
def services(engine: AsyncEngine) -> Services:
    settings = load_settings(_env_file=None)
    return build_services(settings, engine=engine, sink=LogSink(), clock=FrozenClock())


async def test_jobs_that_need_nylas_are_left_out_without_it(services: Services) -> None:
    scheduler = AsyncIOScheduler(timezone="UTC")
    jobs.schedule(scheduler, services, jobs.table(services.settings))
    # The month-end clean-up is offered without Nylas; only its deletions need it.
    assert sorted(job.id for job in scheduler.get_jobs()) == [
        "cleanup",
        "mutes",
        "retention",
        "snoozes",
        "stuck",
    ]
    retention = scheduler.get_job("retention")
    assert retention is not None and retention.trigger.interval == timedelta(hours=6)


async def test_a_job_cancelled_by_shutdown_is_not_an_error(
    caplog: pytest.LogCaptureFixture, services: Services
) -> None:
    started = asyncio.Event()

    async def waits_on_nylas(services: Services) -> None:
        started.set()
        await asyncio.sleep(60)  # between retries, say

    job = asyncio.create_task(isolated(services, "reconcile", waits_on_nylas)())
    await started.wait()
    with caplog.at_level(logging.INFO):
        job.cancel()
        await job  # ends quietly: the scheduler has nothing to report

    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "stopped by shutdown" in caplog.text
    assert 'reauthbot_job_runs_total{job="reconcile",outcome="cancelled"} 1.0' in (
        services.metrics.render().decode()
    )


async def test_only_a_job_that_reads_the_database_ends_its_outage(services: Services) -> None:
    # Outside the month's last days the clean-up job reads nothing: that it succeeded says
    # nothing of the database, so a database outage stays open (one line, not one per hour).
    cleanup = next(job for job in jobs.table(services.settings) if job.name == "cleanup")
    assert not cleanup.reads_database
    services.episodes.failed(ConnectionResetError(104, "reset"), loop="ingest")
    assert services.episodes.failing(DATABASE)
    await jobs.isolated(services, "cleanup", cleanup.run, database=False)()
    assert services.episodes.failing(DATABASE)
    await jobs.isolated(services, "snoozes", jobs.end_due_snoozes)()
    assert not services.episodes.failing(DATABASE)
