"""The application from ``create_app``, served over real HTTP on a loopback port."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot import logs
from bot.app import LOCAL_MODE_BANNER, wake_senders
from bot.loops import Worker
from bot.metrics import Metrics
from bot.notifier import Notifier, Posted, SinkError
from bot.runtime import RUNTIME
from bot.services import SERVICES
from bot.settings import load_settings
from storage import cases, outbox
from storage.engine import create_engine
from storage.migrate import head_revision
from storage.models import (
    Account,
    Case,
    CaseEvent,
    OutboxMessage,
    OutboxStatus,
)
from tests import builders
from tests.appclient import start_app
from tests.conftest import FrozenClock
from tests.waiting import eventually

Sessions = async_sessionmaker[AsyncSession]
ClientFactory = Callable[..., Awaitable[TestClient]]

HEAD = head_revision()


@pytest.fixture
async def make_client(engine: AsyncEngine) -> AsyncIterator[ClientFactory]:
    """Start apps; they are closed before the test database (``engine``) is disposed."""
    clients: list[TestClient] = []

    async def make(**kwargs: Any) -> TestClient:
        url = kwargs.pop("database_url", "sqlite+aiosqlite:///unused.db")
        client = await start_app(load_settings(_env_file=None, database_url=url), **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


async def open_case_with_alert(
    sessions: Sessions, now: datetime, email: str = "ana@example.com"
) -> int:
    return await builders.open_case_with_alert(sessions, now, channel="log", email=email)


async def outbox_statuses(sessions: Sessions) -> list[str]:
    async with sessions() as session:
        return [m.status for m in (await session.exec(select(OutboxMessage))).all()]


async def test_health_ready_and_metrics(make_client: ClientFactory, engine: AsyncEngine) -> None:
    client = await make_client(engine=engine)
    health = await client.get("/healthz")
    assert health.status == 200 and await health.json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert await ready.json() == {"status": "ready", "schema": HEAD}
    assert (await client.get("/readyz")).status == 200
    metrics = await client.get("/metrics")
    assert metrics.status == 200
    assert metrics.headers["Content-Type"].startswith("text/plain")
    text = await metrics.text()
    assert "reauthbot_database_up 1.0" in text
    assert 'reauthbot_http_requests_total{route="/readyz",status="200"} 2.0' in text
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert names and all(name.startswith("reauthbot_") for name in names)


async def test_not_ready_until_migrated(make_client: ClientFactory, blank_url: str) -> None:
    engine = create_engine(blank_url)
    client = await make_client(engine=engine, migrate=False)
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["reason"] == f"database schema at nothing, needs {HEAD}"
    await client.close()
    await engine.dispose()


async def test_startup_migrates_a_new_database(make_client: ClientFactory, blank_url: str) -> None:
    client = await make_client(database_url=blank_url)
    assert (await client.get("/readyz")).status == 200


async def test_not_ready_while_the_database_is_unreachable(make_client: ClientFactory) -> None:
    # Nothing listens on this port: startup keeps retrying the migration in the background.
    client = await make_client(database_url="postgresql+asyncpg://nobody@127.0.0.1:9/none")
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["reason"].startswith("database unreachable")
    assert (await client.get("/healthz")).status == 200
    assert "reauthbot_database_up 0.0" in await (await client.get("/metrics")).text()


async def test_local_mode_writes_each_alert_to_the_log(
    make_client: ClientFactory,
    engine: AsyncEngine,
    sessions: Sessions,
    caplog: pytest.LogCaptureFixture,
    clock: FrozenClock,
) -> None:
    caplog.set_level(logging.INFO)
    client = await make_client(engine=engine, clock=clock)
    assert LOCAL_MODE_BANNER in caplog.text
    case_id = await open_case_with_alert(sessions, clock(), email="ana+<!channel>@example.com")
    notify = client.app[RUNTIME].notify
    assert notify is not None
    notify.wake()

    async def sent() -> bool:
        return await outbox_statuses(sessions) == [OutboxStatus.SENT]

    await eventually(sent)
    alerts = [r for r in caplog.records if r.name == "reauthbot.alerts"]
    assert len(alerts) == 1
    # One record: the card's header, and the rest of the card below it as lines.
    assert alerts[0].getMessage() == "alert: Needs re-authentication: ana+<!channel>@example.com"
    card = getattr(alerts[0], logs.BLOCK)
    assert f"  Case      #{case_id}" in card
    assert "  Account   acc-1" in card and "  Provider  gmail (v2)" in card
    assert card[-1].startswith("Actions: [Acknowledge] [Send re-auth link] [Snooze: ")
    metrics = await (await client.get("/metrics")).text()
    assert 'reauthbot_notifier_messages_total{kind="post",outcome="sent",sink="log"} 1.0' in metrics
    assert 'reauthbot_open_cases{kind="reauth"} 1.0' in metrics
    # Sent rows are not counted at each scrape (the table only grows): none is pending.
    assert 'reauthbot_outbox_rows{status="pending"}' not in metrics


class ScriptedSink:
    """A sink that answers from a script of errors, then posts."""

    name = "scripted"

    def __init__(self, *errors: SinkError) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def deliver(
        self,
        message: OutboxMessage,
        case: Case | None,
        account: Account | None,
        incident: object = None,
        *,
        parent: Posted | None = None,
        link: object = None,
    ) -> Posted | None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return Posted(channel="C0ALERTS", ts="1700000000.000100")


async def run_notifier(sessions: Sessions, sink: ScriptedSink, clock: FrozenClock) -> None:
    await Notifier(sessions, sink, clock=clock, metrics=Metrics()).drain_once()


async def test_temporary_errors_are_retried_after_retry_after(
    sessions: Sessions, clock: FrozenClock
) -> None:
    case_id = await open_case_with_alert(sessions, clock())
    sink = ScriptedSink(SinkError("ratelimited", retry_after=7))
    await run_notifier(sessions, sink, clock)
    assert await outbox_statuses(sessions) == [OutboxStatus.PENDING]
    clock.advance(seconds=6)
    await run_notifier(sessions, sink, clock)
    assert sink.calls == 1  # not due yet
    clock.advance(seconds=1)
    await run_notifier(sessions, sink, clock)
    assert sink.calls == 2
    assert await outbox_statuses(sessions) == [OutboxStatus.SENT]
    async with sessions() as session:
        case = await cases.get_case(session, case_id=case_id)
    assert case is not None
    assert (case.slack_channel, case.slack_ts) == ("C0ALERTS", "1700000000.000100")


async def test_permanent_errors_are_recorded_on_the_case(
    sessions: Sessions, clock: FrozenClock
) -> None:
    case_id = await open_case_with_alert(sessions, clock())
    sink = ScriptedSink(SinkError("channel_not_found", permanent=True))
    await run_notifier(sessions, sink, clock)
    clock.advance(hours=1)
    await run_notifier(sessions, sink, clock)
    assert sink.calls == 1
    assert await outbox_statuses(sessions) == [OutboxStatus.FAILED]
    async with sessions() as session:
        case = await cases.get_case(session, case_id=case_id)
        events = (await session.exec(select(CaseEvent))).all()
    assert case is not None and case.last_error == "post failed: channel_not_found"
    assert [(e.action, e.details["error"]) for e in events] == [
        ("notify_failed", "channel_not_found")
    ]


async def test_a_message_whose_lease_ran_out_is_sent_by_the_next_notifier(
    sessions: Sessions, clock: FrozenClock
) -> None:
    await open_case_with_alert(sessions, clock())
    # A notifier claimed the message and died before sending it.
    async with sessions() as session, session.begin():
        assert (
            len(await outbox.claim(session, owner="dead", now=clock(), lease=timedelta(seconds=60)))
            == 1
        )
    sink = ScriptedSink()
    await run_notifier(sessions, sink, clock)
    assert sink.calls == 0
    clock.advance(seconds=61)
    await run_notifier(sessions, sink, clock)
    assert sink.calls == 1
    assert await outbox_statuses(sessions) == [OutboxStatus.SENT]


async def test_the_service_sweeps_escalations_at_the_policy_period(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    config = tmp_path / "policy.toml"
    config.write_text(
        '[[escalation.levels]]\nafter = "3s"\nmention = ["U0SUE"]\n'
        '[[escalation.levels]]\nafter = "10s"\ndm = ["U0LEAD"]\n'
    )
    settings = load_settings(_env_file=None, config_file=config)
    client = await start_app(settings, engine=engine, migrate=False, scheduled_jobs=False)
    try:
        scheduler = client.server.app[RUNTIME].scheduler
        assert scheduler is not None
        job = scheduler.get_job("escalation")
        assert job is not None and job.trigger.interval == timedelta(seconds=1.5)
    finally:
        await client.close()


async def test_what_exists_at_start_is_kept_out_of_full_collections(engine: AsyncEngine) -> None:
    gc.unfreeze()
    client = await start_app(load_settings(_env_file=None), engine=engine, migrate=False)
    try:
        assert gc.get_freeze_count() > 0
    finally:
        await client.close()
        gc.unfreeze()


async def test_the_service_s_sqlite_checkpoints_and_reads_stay_off_the_writers_path(
    tmp_path: Path,
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'service.db'}"
    client = await start_app(load_settings(_env_file=None, database_url=url))
    try:
        runtime, services = client.server.app[RUNTIME], client.server.app[SERVICES]
        assert runtime.checkpointer is not None
        async with services.engine.connect() as conn:
            assert (await conn.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar() == 0
        async with services.readers() as session:
            # Reads have connections of their own: they never hold up the writers' one.
            assert session.bind is not None and session.bind.pool is not services.engine.pool
        passes = runtime.checkpointer.passes

        async def checkpointed_again() -> bool:
            assert runtime.checkpointer is not None
            return runtime.checkpointer.passes > passes

        await eventually(checkpointed_again, within=5)
    finally:
        await client.close()


async def test_queuing_a_message_wakes_its_drain_without_anyone_asking(
    sessions: Sessions, clock: FrozenClock
) -> None:
    passes = {"notifier": 0, "pager": 0}

    def counting(name: str) -> Callable[[], Awaitable[int]]:
        async def step() -> int:
            passes[name] += 1
            return 0

        return step

    def seen(notifier: int, pager: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return passes == {"notifier": notifier, "pager": pager}

        return check

    # Without a wake they would look again only after an hour.
    slack = Worker("notifier", counting("notifier"), idle=3600)
    pager = Worker("pager", counting("pager"), idle=3600)
    stop = asyncio.Event()
    running = [asyncio.create_task(w.run(stop)) for w in (slack, pager)]
    stop_waking = outbox.on_queued(wake_senders(slack, pager))
    try:
        await eventually(seen(1, 1), within=1)  # the first look, at start
        async with sessions() as session, session.begin():
            await outbox.enqueue(session, channel="C1", kind="notice", now=clock())
        await eventually(seen(2, 1), within=1)  # a Slack message is none of the pager's business
        async with sessions() as session, session.begin():
            await outbox.enqueue_page(session, now=clock(), payload={})
        await eventually(seen(2, 2), within=1)
    finally:
        stop_waking()
        stop.set()
        await asyncio.gather(*running)
