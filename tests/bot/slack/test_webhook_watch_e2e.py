"""The webhook destination watch end to end: fake Nylas → scheduled job → outbox → fake Slack."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select

from bot.runtime import RUNTIME
from bot.settings import load_settings
from bot.slack.notices import notice_blocks
from storage.models import OutboxMessage, OutboxStatus
from tests.appclient import start_app
from tests.bot.slack.support import CHANNEL, NOW, Sessions, nylas_settings, wait_posts
from tests.bot.slack.test_blocks import HOSTILE, mentions
from tests.bot.slack.test_digest_e2e import validate_message
from tests.conftest import NYLAS_API_KEY, FrozenClock
from tests.fakes.nylas import FakeNylas
from tests.fakes.slack import FakeSlack
from tests.waiting import eventually

CHANGED = int(NOW.timestamp()) - 3600


async def run_watch_job(app: TestClient) -> None:
    """Run the scheduled job as the scheduler would (same wrapper, same clock)."""
    scheduler = app.server.app[RUNTIME].scheduler
    assert scheduler is not None
    job = scheduler.get_job("webhook_watch")
    assert job is not None
    await job.func()


async def outbox_settled(sessions: Sessions) -> None:
    async def settled() -> bool:
        async with sessions() as session:
            stmt = select(OutboxMessage).where(col(OutboxMessage.status) == OutboxStatus.PENDING)
            return not (await session.exec(stmt)).all()

    await eventually(settled, within=10)


def alerts_in(slack: FakeSlack) -> list[tuple[str, dict[str, Any]]]:
    """Parent messages in the alert channel whose header names a webhook destination."""
    return [
        (ts, m)
        for (channel, ts), m in slack.messages.items()
        if channel == CHANNEL and m.get("thread_ts") in (None, ts) and m.get("blocks")
        if "webhook destination" in m["blocks"][0]["text"]["text"]
    ]


async def test_a_failing_destination_gets_one_alert_resolved_in_place_across_restarts(
    start: Any, slack: FakeSlack, sessions: Sessions, nylas_fake: FakeNylas
) -> None:
    nylas_fake.add_webhook(
        id="wh-<!channel>",
        webhook_url="https://hooks.example.com/nylas/webhook?a=1&b=<@U0BOSS>",
        status="failing",
        status_updated_at=CHANGED,
    )
    nylas_fake.add_webhook(id="wh-msg", status="failed", trigger_types=["message.created"])
    app = await start(clock=FrozenClock(NOW), **nylas_settings(nylas_fake, "v3"))

    await run_watch_job(app)
    await wait_posts(slack, 1)
    await run_watch_job(app)  # the next interval: still failing, nothing new
    await outbox_settled(sessions)

    ((ts, alert),) = alerts_in(slack)
    assert len(slack.calls_to("chat.postMessage")) == 1
    validate_message(alert["blocks"])
    text = json.dumps(alert["blocks"])
    assert "`wh-&lt;!channel&gt;`" in text
    assert "https://hooks.example.com/nylas/webhook?a=1&amp;b=&lt;@U0BOSS&gt;" in text
    assert "*failing*" in text and "(as Nylas reports it)" in text
    assert "answers `200` within 10 seconds" in text and "Nylas Dashboard" in text
    assert "does not resend" in text and "reconciliation poll" in text
    assert alert["text"] == (
        "Nylas webhook destination wh-&lt;!channel&gt; is failing: account events are not delivered"
    )

    # A new app over the same database neither forgets nor repeats the alert.
    await app.close()
    app = await start(clock=FrozenClock(NOW), **nylas_settings(nylas_fake, "v3"))
    await run_watch_job(app)
    await outbox_settled(sessions)
    assert len(slack.calls_to("chat.postMessage")) == 1

    nylas_fake.set_webhook_status("wh-<!channel>", "active")
    await run_watch_job(app)
    await wait_posts(slack, 2)  # the thread line
    await outbox_settled(sessions)

    (update,) = slack.calls_to("chat.update")
    assert (update.params["channel"], update.params["ts"]) == (CHANNEL, ts)
    ((same_ts, resolved),) = alerts_in(slack)
    assert same_ts == ts
    validate_message(resolved["blocks"])
    assert resolved["blocks"][0]["text"]["text"] == (
        "Resolved: Nylas webhook destination active again"
    )
    assert "is active again" in json.dumps(resolved["blocks"])
    (line,) = slack.thread(CHANNEL, ts)
    assert line["text"] == "Resolved: webhook destination wh-&lt;!channel&gt; is active again."

    await app.close()
    app = await start(clock=FrozenClock(NOW), **nylas_settings(nylas_fake, "v3"))
    await run_watch_job(app)
    await outbox_settled(sessions)
    assert len(slack.calls_to("chat.postMessage")) == 2
    assert len(slack.calls_to("chat.update")) == 1
    metrics = await (await app.get("/metrics")).text()
    assert 'reauthbot_job_runs_total{job="webhook_watch",outcome="ok"} 1.0' in metrics


async def test_an_inactive_v2_webhook_is_alerted_since_first_seen(
    start: Any, slack: FakeSlack, sessions: Sessions, nylas_fake: FakeNylas
) -> None:
    nylas_fake.add_v2_webhook(id="w-1", state="inactive")
    app = await start(clock=FrozenClock(NOW), **nylas_settings(nylas_fake, "v2"))
    await run_watch_job(app)
    await wait_posts(slack, 1)
    await outbox_settled(sessions)

    ((_, alert),) = alerts_in(slack)
    text = json.dumps(alert["blocks"])
    assert "`w-1`" in text and "*inactive*" in text
    assert "(when reauthbot first saw it)" in text
    assert "Nylas API v2" in text


async def test_the_watch_runs_at_start_and_every_poll_interval(
    start: Any, nylas_fake: FakeNylas
) -> None:
    clock = FrozenClock(NOW)
    app = await start(clock=clock, poll_interval="10m", **nylas_settings(nylas_fake, "v3"))
    scheduler = app.server.app[RUNTIME].scheduler
    assert scheduler is not None
    job = scheduler.get_job("webhook_watch")
    assert job is not None
    assert job.next_run_time == NOW
    assert job.trigger.interval.total_seconds() == 600


async def test_without_nylas_credentials_the_watch_is_off(start: Any) -> None:
    app = await start()
    scheduler = app.server.app[RUNTIME].scheduler
    assert scheduler is not None
    assert scheduler.get_job("webhook_watch") is None


async def test_in_local_mode_the_alert_goes_to_the_log(
    engine: AsyncEngine,
    sessions: Sessions,
    nylas_fake: FakeNylas,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    nylas_fake.add_webhook(id="wh-1", status="failed", status_updated_at=CHANGED)
    settings = load_settings(
        _env_file=None, nylas_api_url=nylas_fake.url, nylas_api_key=NYLAS_API_KEY
    )
    app = await start_app(
        settings, engine=engine, scheduled_jobs=False, migrate=False, clock=FrozenClock(NOW)
    )
    try:
        await run_watch_job(app)
        await outbox_settled(sessions)
    finally:
        await app.close()
    (record,) = [r for r in caplog.records if r.name == "reauthbot.alerts"]
    assert record.getMessage().startswith(
        "webhook alert: Nylas webhook destination wh-1 "
        "(https://reauthbot.example.com/nylas/webhook) is failed since 2026-11-02T08:30:00Z"
    )


def test_hostile_destination_fields_cannot_ping() -> None:
    payload = {
        "about": "webhook_destination",
        "destination_id": HOSTILE + "`",
        "url": HOSTILE * 40,
        "status": HOSTILE,
        "api_version": "v3",
        "since": NOW.isoformat(),
        "since_reported": True,
        "resolved_at": None,
    }
    for resolved in (None, NOW.isoformat()):
        blocks = notice_blocks({**payload, "resolved_at": resolved, "resolution": "gone"})
        validate_message(blocks)
        assert mentions(blocks) == []
