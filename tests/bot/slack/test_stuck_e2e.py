"""The stuck-state watch end to end: the scheduled job → the outbox → an alert with its advice."""

from __future__ import annotations

import json
from typing import Any

from aiohttp.test_utils import TestClient

from bot.runtime import RUNTIME
from tests.bot.slack.support import CHANNEL, NOW, Sessions, wait_posts
from tests.conftest import FrozenClock
from tests.fakes.slack import FakeSlack
from workflows.events import AccountEvent
from workflows.lifecycle import apply_event


async def run_stuck_job(app: TestClient) -> None:
    """Run the scheduled job as the scheduler would (same wrapper, same clock)."""
    scheduler = app.server.app[RUNTIME].scheduler
    assert scheduler is not None
    job = scheduler.get_job("stuck")
    assert job is not None
    await job.func()


async def initializing(sessions: Sessions, account_id: str, email: str) -> None:
    event = AccountEvent(
        account_id=account_id,
        api_version="v2",
        event_type="account.connected",
        state="initializing",
        occurred_at=NOW,
        source="webhook",
        email=email,
    )
    async with sessions() as session, session.begin():
        await apply_event(session, event, now=NOW, route=lambda _: CHANNEL)


async def test_an_account_stuck_initializing_is_alerted_with_the_scopes_advice(
    start: Any, slack: FakeSlack, sessions: Sessions
) -> None:
    clock = FrozenClock(NOW)
    app = await start('[stuck]\ninitializing = "30m"\n', clock=clock)
    await initializing(sessions, "acc-1", "ana@example.com")

    clock.advance(minutes=20)
    await run_stuck_job(app)
    clock.advance(minutes=20)
    await run_stuck_job(app)
    await run_stuck_job(app)  # a second replica, or the next run: nothing more
    await wait_posts(slack, 1)

    (message,) = slack.messages.values()
    text = json.dumps(message["blocks"])
    assert "Stuck in a transient sync state" in text
    assert "email.send" in text and "Re-authenticate" in text
    assert len(slack.calls_to("chat.postMessage")) == 1
    metrics = await (await app.get("/metrics")).text()
    assert 'reauthbot_job_runs_total{job="stuck",outcome="ok"} 3.0' in metrics
