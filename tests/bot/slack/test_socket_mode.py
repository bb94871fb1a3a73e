"""Socket Mode end to end: the service takes Slack traffic over a real WebSocket on loopback.

The service is started as ``reauthbot serve`` starts it, with an app-level token and no
signing secret; Slack is ``FakeSlack`` plus ``FakeSocketMode``. Nylas still reaches the
service over HTTP.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.settings import load_settings
from bot.slack import ids
from storage import cases
from tests.appclient import start_app
from tests.bot.slack.support import (
    CHANNEL,
    case_events,
    click_body,
    click_payload,
    expire,
    wait_posts,
)
from tests.conftest import WEBHOOK_SECRET
from tests.fakes.slack import FakeSlack
from tests.fakes.socket_mode import FakeSocketMode
from tests.waiting import eventually

Sessions = async_sessionmaker[AsyncSession]
BOT_TOKEN = "xoxb-socket-token"
APP_TOKEN = "xapp-1-A0APP-1-socket-token"


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(bot_token=BOT_TOKEN) as fake:
        yield fake


@pytest.fixture
async def socket_mode(slack: FakeSlack) -> AsyncIterator[FakeSocketMode]:
    async with FakeSocketMode(slack, app_token=APP_TOKEN) as fake:
        yield fake


@pytest.fixture
async def app(
    engine: AsyncEngine, slack: FakeSlack, socket_mode: FakeSocketMode
) -> AsyncIterator[TestClient]:
    settings = load_settings(
        _env_file=None,
        slack_bot_token=BOT_TOKEN,
        slack_app_token=APP_TOKEN,
        slack_alert_channel=CHANNEL,
        slack_api_url=slack.url,
        nylas_webhook_secret=WEBHOOK_SECRET,
    )
    assert settings.socket_mode and settings.slack_signing_secret is None
    client = await start_app(settings, engine=engine, scheduled_jobs=False, migrate=False)
    yield client
    await client.close()


async def alert_posted(slack: FakeSlack, sessions: Sessions) -> str:
    """Wait for case 1's alert and for its coordinates to be stored; return its ts."""
    await wait_posts(slack, 1)
    (ts,) = [ts for (channel, ts) in slack.messages if channel == CHANNEL]

    async def stored() -> bool:
        async with sessions() as session:
            case = await cases.get_case(session, case_id=1)
        return case is not None and (case.slack_channel, case.slack_ts) == (CHANNEL, ts)

    await eventually(stored)
    return ts


async def test_connects_with_the_app_token_and_closes_on_shutdown(
    app: TestClient, slack: FakeSlack, socket_mode: FakeSocketMode
) -> None:
    connection = await socket_mode.wait_connected()
    (opened,) = slack.calls_to("apps.connections.open")
    assert opened.headers["Authorization"] == f"Bearer {APP_TOKEN}"
    assert socket_mode.tickets == [connection.ticket]
    assert (await app.get("/readyz")).status == 200

    await app.close()
    await socket_mode.wait_closed(connection)
    assert len(socket_mode.connections) == 1  # no reconnection on the way down


async def test_nylas_webhooks_still_arrive_over_http(
    app: TestClient, slack: FakeSlack, socket_mode: FakeSocketMode, sessions: Sessions
) -> None:
    await socket_mode.wait_connected()
    await expire(app)
    await alert_posted(slack, sessions)
    (post,) = slack.calls_to("chat.postMessage")
    assert post.params["channel"] == CHANNEL
    assert "ana@example.com" in json.dumps(post.params["blocks"])
    assert post.headers["Authorization"] == f"Bearer {BOT_TOKEN}"


async def test_acknowledge_click_is_acked_and_acknowledges_the_case(
    app: TestClient, slack: FakeSlack, socket_mode: FakeSocketMode, sessions: Sessions
) -> None:
    await socket_mode.wait_connected()
    await expire(app)
    ts = await alert_posted(slack, sessions)

    # send_envelope fails unless the ack arrives within Slack's 3 s.
    ack = await socket_mode.send_envelope(
        "interactive", click_payload(slack, ids.ACK, "1", "U0ALICE")
    )
    (envelope,) = socket_mode.envelopes
    assert envelope["accepts_response_payload"] is False
    assert ack == {"envelope_id": envelope["envelope_id"]}

    async def updated() -> bool:
        return bool(slack.calls_to("chat.update"))

    await eventually(updated)
    (update,) = slack.calls_to("chat.update")
    assert (update.params["channel"], update.params["ts"]) == (CHANNEL, ts)
    assert "Acknowledged by <@U0ALICE>" in json.dumps(update.params["blocks"])
    async with sessions() as session:
        case = await cases.get_case(session, case_id=1)
    assert case is not None and case.acknowledged_at is not None
    assert ("slack:U0ALICE", "acknowledged") in await case_events(sessions)
    await wait_posts(slack, 2)  # the thread line, at Slack's pace of one post a second
    (line,) = slack.thread(CHANNEL, ts)
    assert line["text"] == "Acknowledged by <@U0ALICE>."
    assert socket_mode.acks == [ack] and socket_mode.stray_frames == []
    # The app token opened the connection and nothing else; Web API calls use the bot token.
    assert {c.method for c in slack.calls} >= {"chat.postMessage", "chat.update"}
    assert all(
        c.headers["Authorization"] == f"Bearer {BOT_TOKEN}"
        for c in slack.calls
        if c.method != "apps.connections.open"
    )


async def test_malformed_and_unknown_envelopes_change_nothing(
    app: TestClient, slack: FakeSlack, socket_mode: FakeSocketMode, sessions: Sessions
) -> None:
    connection = await socket_mode.wait_connected()
    await expire(app)
    await alert_posted(slack, sessions)
    events_before = await case_events(sessions)

    await socket_mode.send_frame("this is not JSON")
    await socket_mode.send_frame('{"envelope_id": "cut-short", "type": "interactive", "pay')
    await socket_mode.send_frame({"type": "interactive", "payload": {"type": "block_actions"}})
    unknown = [
        await socket_mode.post_envelope("interactive", {"type": "no_such_interaction"}),
        await socket_mode.post_envelope("no_such_type", {"type": "block_actions"}),
        await socket_mode.post_envelope("interactive", {"type": "block_actions"}),
        await socket_mode.post_envelope(
            "events_api",
            {"type": "event_callback", "event": {"type": "app_mention", "text": "hi"}},
        ),
    ]
    # A button that names no case is acknowledged (Slack shows no error); nothing else happens.
    ack = await socket_mode.send_envelope(
        "interactive", click_payload(slack, ids.ACK, "not-a-case", "U0ALICE")
    )
    assert ack == {"envelope_id": socket_mode.envelopes[-1]["envelope_id"]}

    async def told() -> bool:
        return len(slack.responses) == 1

    await eventually(told)
    assert slack.responses[0]["text"] == "This button does not name a case."

    # The same connection still carries a real click, and only that click changes anything.
    await socket_mode.send_envelope("interactive", click_payload(slack, ids.ACK, "1", "U0BOB"))

    async def acked() -> bool:
        return ("slack:U0BOB", "acknowledged") in await case_events(sessions)

    await eventually(acked)
    assert await case_events(sessions) == [*events_before, ("slack:U0BOB", "acknowledged")]
    assert [socket_mode.ack_of(e["envelope_id"]) for e in unknown] == [None] * len(unknown)
    assert socket_mode.connections == [connection] and connection.open
    assert len(slack.calls_to("apps.connections.open")) == 1


async def test_events_route_is_not_served(
    app: TestClient, slack: FakeSlack, socket_mode: FakeSocketMode, sessions: Sessions
) -> None:
    # Bolt checks no signatures in Socket Mode, so an HTTP route would act on forged clicks.
    await socket_mode.wait_connected()
    await expire(app)
    await alert_posted(slack, sessions)
    events_before = await case_events(sessions)
    body = click_body(slack, ids.ACK, "1", "U0MALLORY")
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    response = await app.post(ids.EVENTS_PATH, data=body, headers=headers)
    assert response.status == 404
    assert await case_events(sessions) == events_before
    assert (await app.get("/healthz")).status == 200


async def test_reconnects_when_slack_asks_to_refresh(
    app: TestClient, slack: FakeSlack, socket_mode: FakeSocketMode, sessions: Sessions
) -> None:
    first = await socket_mode.wait_connected()
    asked = await socket_mode.send_disconnect("refresh_requested")
    assert asked is first
    second = await socket_mode.wait_connected(2)
    await socket_mode.wait_closed(first)  # the client drops the old connection itself
    assert socket_mode.tickets == [first.ticket, second.ticket]
    assert [c.headers["Authorization"] for c in slack.calls_to("apps.connections.open")] == [
        f"Bearer {APP_TOKEN}"
    ] * 2

    await expire(app)
    await alert_posted(slack, sessions)
    await socket_mode.send_envelope("interactive", click_payload(slack, ids.ACK, "1", "U0ALICE"))

    async def acked() -> bool:
        return ("slack:U0ALICE", "acknowledged") in await case_events(sessions)

    await eventually(acked)
    assert len(second.received) == 1 and first.received == []


async def test_a_refused_app_token_does_not_stop_webhooks(
    engine: AsyncEngine, slack: FakeSlack, socket_mode: FakeSocketMode, sessions: Sessions
) -> None:
    settings = load_settings(
        _env_file=None,
        slack_bot_token=BOT_TOKEN,
        slack_app_token="xapp-1-A0APP-1-wrong",
        slack_alert_channel=CHANNEL,
        slack_api_url=slack.url,
        nylas_webhook_secret=WEBHOOK_SECRET,
    )
    app = await start_app(settings, engine=engine, scheduled_jobs=False, migrate=False)
    try:

        async def refused() -> bool:
            return bool(slack.calls_to("apps.connections.open"))

        await eventually(refused)
        assert socket_mode.connections == []
        assert (await app.get("/readyz")).status == 200
        await expire(app)
        await alert_posted(slack, sessions)
    finally:
        await app.close()
