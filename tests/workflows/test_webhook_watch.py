"""The webhook destination list (client) and the watch over it (workflow), against the fake."""

from __future__ import annotations

import base64
import logging
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import OutboxKind, OutboxMessage, WebhookAlert
from tests.conftest import NYLAS_CLIENT_ID, NYLAS_CLIENT_SECRET, Nylas
from workflows.nylas import NylasBadResponse, WebhookDestination
from workflows.webhook_watch import check_webhook_destinations, notice_key, watches

Sessions = async_sessionmaker[AsyncSession]
NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
CHANGED = int(datetime(2026, 11, 2, 8, 0, tzinfo=UTC).timestamp())
CHANNEL = "C0ALERTS"


async def alerts(sessions: Sessions) -> list[WebhookAlert]:
    async with sessions() as session:
        stmt = select(WebhookAlert).order_by(col(WebhookAlert.id))
        return list((await session.exec(stmt)).all())


async def queued(sessions: Sessions) -> list[tuple[str, str | None]]:
    async with sessions() as session:
        stmt = select(OutboxMessage).order_by(col(OutboxMessage.id))
        return [(m.kind, m.dedupe_key) for m in (await session.exec(stmt)).all()]


# --- the client ---------------------------------------------------------------------------


async def test_v3_destinations_are_parsed_and_a_malformed_row_is_skipped(
    nylas: Nylas, caplog: pytest.LogCaptureFixture
) -> None:
    nylas.fake.add_webhook(id="wh-1", status="failing", status_updated_at=CHANGED)
    nylas.fake.webhooks.append({"id": "wh-bad", "status": 7, "webhook_url": "https://x"})
    nylas.fake.webhooks.append("not an object")
    nylas.fake.add_webhook(
        id="wh-2", webhook_url="https://msgs.example.com/hook", trigger_types=["message.created"]
    )
    with caplog.at_level(logging.WARNING, logger="reauthbot.nylas"):
        found = await nylas.v3.list_webhook_destinations()

    assert [d.id for d in found] == ["wh-1", "wh-2"]
    assert found[0] == WebhookDestination(
        id="wh-1",
        api_version="v3",
        url="https://reauthbot.example.com/nylas/webhook",
        status="failing",
        triggers=("grant.created", "grant.updated", "grant.expired"),
        status_updated_at=datetime(2026, 11, 2, 8, 0, tzinfo=UTC),
        description="reauthbot",
    )
    assert [r.getMessage() for r in caplog.records] == [
        "skipped a malformed webhook destination: no text 'status'",
        "skipped a malformed webhook destination: not a JSON object",
    ]
    (call,) = nylas.fake.calls_to("GET", "/v3/webhooks")
    assert call.headers["Authorization"] == "Bearer " + nylas.fake.api_key


async def test_v2_webhooks_are_parsed_with_the_client_secret(
    nylas: Nylas, caplog: pytest.LogCaptureFixture
) -> None:
    nylas.fake.add_v2_webhook(id="w-1", state="inactive")
    nylas.fake.v2_webhooks.append({"id": "w-2", "callback_url": "https://x", "state": "active"})
    with caplog.at_level(logging.WARNING, logger="reauthbot.nylas"):
        (found,) = await nylas.v2.list_webhook_destinations()

    assert (found.id, found.api_version, found.status) == ("w-1", "v2", "inactive")
    assert found.triggers == ("account.invalid", "account.running", "account.stopped")
    assert found.status_updated_at is None
    assert "'triggers' is not a list of text" in caplog.text
    (call,) = nylas.fake.calls_to("GET", f"/a/{NYLAS_CLIENT_ID}/webhooks")
    token = base64.b64encode(f"{NYLAS_CLIENT_SECRET}:".encode()).decode()
    assert call.headers["Authorization"] == f"Basic {token}"


async def test_an_answer_that_is_not_a_list_is_a_bad_response(nylas: Nylas) -> None:
    nylas.fake.fail("GET", "/v3/webhooks", status=200, body={"request_id": "r", "data": {}})
    with pytest.raises(NylasBadResponse, match="without a list in 'data'"):
        await nylas.v3.list_webhook_destinations()
    nylas.fake.fail("GET", r"/a/.*/webhooks", status=200, body={"webhooks": []})
    with pytest.raises(NylasBadResponse, match="without a JSON list"):
        await nylas.v2.list_webhook_destinations()


def test_only_destinations_with_account_triggers_are_watched() -> None:
    def destination(version: str, *triggers: str) -> WebhookDestination:
        return WebhookDestination("d", version, "https://x", "failed", triggers)

    assert watches(destination("v3", "message.created", "grant.expired"))
    assert not watches(destination("v3", "message.created", "account.invalid"))
    assert watches(destination("v2", "account.invalid"))
    assert not watches(destination("v2", "message.created", "grant.expired"))


# --- the watch ----------------------------------------------------------------------------


async def test_a_failing_destination_is_alerted_once_then_resolved(
    nylas: Nylas, sessions: Sessions
) -> None:
    nylas.fake.add_webhook(id="wh-1", status="failing", status_updated_at=CHANGED)

    report = await check_webhook_destinations(sessions, nylas.v3, now=NOW, channel=CHANNEL)
    assert (report.opened, report.changed, report.resolved) == (1, 0, 0)
    again = await check_webhook_destinations(sessions, nylas.v3, now=NOW, channel=CHANNEL)
    assert (again.opened, again.changed, again.resolved) == (0, 0, 0)
    (alert,) = await alerts(sessions)
    assert (alert.destination_id, alert.status, alert.resolved_at) == ("wh-1", "failing", None)
    assert alert.since == datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
    key = notice_key(alert.id or 0)
    assert await queued(sessions) == [(OutboxKind.NOTICE, f"{key}:post")]

    nylas.fake.set_webhook_status("wh-1", "active")
    later = NOW + timedelta(hours=1)
    report = await check_webhook_destinations(sessions, nylas.v3, now=later, channel=CHANNEL)
    assert report.resolved == 1
    (alert,) = await alerts(sessions)
    assert (alert.resolved_at, alert.resolution) == (later, "active")
    assert await queued(sessions) == [
        (OutboxKind.NOTICE, f"{key}:post"),
        (OutboxKind.NOTICE_UPDATE, f"{key}:resolved"),
        (OutboxKind.NOTICE_THREAD, f"{key}:resolved:thread"),
    ]

    # A new episode after a resolved one is a new alert.
    nylas.fake.set_webhook_status("wh-1", "failed")
    report = await check_webhook_destinations(sessions, nylas.v3, now=later, channel=CHANNEL)
    assert report.opened == 1
    assert [(a.id, a.resolved_at is None) for a in await alerts(sessions)] == [
        (alert.id, False),
        ((alert.id or 0) + 1, True),
    ]


async def test_failing_then_failed_updates_the_same_alert(nylas: Nylas, sessions: Sessions) -> None:
    nylas.fake.add_webhook(id="wh-1", status="failing")
    await check_webhook_destinations(sessions, nylas.v3, now=NOW, channel=CHANNEL)
    nylas.fake.set_webhook_status("wh-1", "failed", at=CHANGED + 72 * 3600)
    report = await check_webhook_destinations(sessions, nylas.v3, now=NOW, channel=CHANNEL)

    assert (report.opened, report.changed) == (0, 1)
    (alert,) = await alerts(sessions)
    assert alert.status == "failed"
    assert alert.since == datetime(2026, 11, 5, 8, 0, tzinfo=UTC)
    assert [kind for kind, _ in await queued(sessions)] == [
        OutboxKind.NOTICE,
        OutboxKind.NOTICE_UPDATE,
    ]


async def test_a_destination_of_message_triggers_only_is_ignored(
    nylas: Nylas, sessions: Sessions
) -> None:
    nylas.fake.add_webhook(id="wh-msg", status="failed", trigger_types=["message.created"])
    report = await check_webhook_destinations(sessions, nylas.v3, now=NOW, channel=CHANNEL)

    assert [d.id for d in report.destinations] == ["wh-msg"]
    assert report.opened == 0
    assert await alerts(sessions) == []
    assert await queued(sessions) == []


async def test_an_inactive_v2_webhook_is_alerted_since_first_seen(
    nylas: Nylas, sessions: Sessions
) -> None:
    nylas.fake.add_v2_webhook(id="w-1", state="inactive")
    nylas.fake.add_v2_webhook(id="w-2", state="inactive", triggers=["message.created"])
    report = await check_webhook_destinations(sessions, nylas.v2, now=NOW, channel=CHANNEL)

    assert report.opened == 1
    (alert,) = await alerts(sessions)
    assert (alert.api_version, alert.destination_id, alert.since) == ("v2", "w-1", NOW)
    async with sessions() as session:
        (message,) = (await session.exec(select(OutboxMessage))).all()
    assert message.channel == CHANNEL
    assert message.payload["since_reported"] is False
    assert message.payload["url"] == "https://reauthbot.example.com/nylas/webhook"


async def test_a_deleted_destination_resolves_its_alert(nylas: Nylas, sessions: Sessions) -> None:
    nylas.fake.add_webhook(id="wh-1", status="failed")
    await check_webhook_destinations(sessions, nylas.v3, now=NOW, channel=CHANNEL)
    nylas.fake.webhooks.clear()
    report = await check_webhook_destinations(sessions, nylas.v3, now=NOW, channel=CHANNEL)

    assert report.resolved == 1
    (alert,) = await alerts(sessions)
    assert alert.resolution == "gone"


async def test_nylas_answering_5xx_is_reported_and_changes_nothing(
    nylas: Nylas, sessions: Sessions, caplog: pytest.LogCaptureFixture
) -> None:
    nylas.fake.add_webhook(id="wh-1", status="failing")
    await check_webhook_destinations(sessions, nylas.v3, now=NOW, channel=CHANNEL)
    before = (await alerts(sessions), await queued(sessions))
    nylas.fake.set_webhook_status("wh-1", "active")
    nylas.fake.fail("GET", "/v3/webhooks", status=503)
    caplog.clear()

    with caplog.at_level(logging.DEBUG, logger="reauthbot.webhook_watch"):
        report = await check_webhook_destinations(sessions, nylas.v3, now=NOW, channel=CHANNEL)

    # The scheduled job turns the error into a line of the Nylas outage (workflows.episodes).
    assert report.error is not None and "503" in report.error
    (record,) = [r for r in caplog.records if r.name == "reauthbot.webhook_watch"]
    assert record.levelno == logging.DEBUG
    assert record.getMessage().startswith("cannot list the Nylas webhook destinations")
    assert (await alerts(sessions), await queued(sessions)) == before
