"""Jobs that one replica at a time runs: two services on one database, one pass each interval."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from bot.jobs import reconcile_pass
from bot.services import SERVICES
from bot.settings import load_settings
from tests.appclient import start_app
from tests.conftest import NYLAS_API_KEY, FrozenClock
from tests.fakes.nylas import FakeNylas


async def test_two_replicas_reconcile_once_per_interval(
    engine: AsyncEngine, nylas_fake: FakeNylas
) -> None:
    nylas_fake.add_grant(id="g-1", email="ana@example.com", grant_status="invalid")
    clock = FrozenClock()
    settings = load_settings(
        _env_file=None,
        nylas_api_url=nylas_fake.url,
        nylas_api_key=NYLAS_API_KEY,
        poll_interval="15m",
    )
    apps: list[Any] = []
    try:
        for _ in range(2):
            apps.append(
                await start_app(
                    settings, engine=engine, scheduled_jobs=False, migrate=False, clock=clock
                )
            )
        first, second = (app.server.app[SERVICES] for app in apps)
        assert first.instance != second.instance

        def listings() -> int:
            return len(nylas_fake.calls_to("GET", r"/v3/grants"))

        def last_success(services: Any) -> float:
            return float(services.metrics.last_reconcile_success._value.get())

        started = clock.now.timestamp()
        await reconcile_pass(first)
        await reconcile_pass(second)  # the same interval: skipped
        assert listings() == 1
        # Only the replica that ran the pass moves its time of the last success; alert rules
        # take the newest across replicas.
        assert last_success(first) == started
        assert last_success(second) != started

        clock.advance(minutes=14)  # 0.9 of the interval has passed: the lease ran out
        await reconcile_pass(second)
        await reconcile_pass(first)
        assert listings() == 2
        assert last_success(second) == clock.now.timestamp()
        metrics = await (await apps[0].get("/metrics")).text()
        assert 'reauthbot_job_runs_total{job="reconcile",outcome="skipped"} 1.0' in metrics
    finally:
        for app in apps:
            await app.close()
