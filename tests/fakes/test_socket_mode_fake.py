"""The fake Socket Mode endpoint, driven by slack-sdk's own aiohttp SocketModeClient."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from tests.fakes.slack import FakeSlack
from tests.fakes.socket_mode import FakeSocketMode

BOT_TOKEN = "xoxb-test-token"
APP_TOKEN = "xapp-1-A0APP-1-fake"


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(bot_token=BOT_TOKEN) as fake:
        yield fake


@pytest.fixture
async def socket_mode(slack: FakeSlack) -> AsyncIterator[FakeSocketMode]:
    async with FakeSocketMode(slack, app_token=APP_TOKEN) as fake:
        yield fake


@pytest.fixture
async def client(slack: FakeSlack) -> AsyncIterator[SocketModeClient]:
    """A Socket Mode client that answers every request it gets, echoing its envelope type."""
    web = AsyncWebClient(base_url=slack.url)
    client = SocketModeClient(app_token=APP_TOKEN, web_client=web, ping_interval=30)

    async def answer(client: SocketModeClient, request: SocketModeRequest) -> None:
        payload = {"type": request.type} if request.accepts_response_payload else None
        await client.send_socket_mode_response(SocketModeResponse(request.envelope_id, payload))

    client.socket_mode_request_listeners.append(answer)  # type: ignore[arg-type]
    yield client
    await client.close()


async def test_hello_then_envelopes_are_acked_by_id(
    slack: FakeSlack, socket_mode: FakeSocketMode, client: SocketModeClient
) -> None:
    await client.connect()
    connection = await socket_mode.wait_connected()
    (opened,) = slack.calls_to("apps.connections.open")
    assert opened.headers["Authorization"] == f"Bearer {APP_TOKEN}"
    assert client.wss_uri == f"{socket_mode.url}?ticket={connection.ticket}&app_id=A0APP"

    ack = await socket_mode.send_envelope("interactive", {"type": "block_actions"})
    assert ack == {"envelope_id": socket_mode.envelopes[0]["envelope_id"]}
    answered = await socket_mode.send_envelope("slash_commands", {"command": "/reauth"})
    assert answered["payload"] == {"type": "slash_commands"}
    event = await socket_mode.post_envelope("events_api", {"type": "event_callback"})
    assert (event["retry_attempt"], event["retry_reason"]) == (0, "")
    await socket_mode.wait_ack(event["envelope_id"])
    assert len(socket_mode.acks) == 3 and socket_mode.stray_frames == []


async def test_hello_frame_has_slacks_shape(slack: FakeSlack, socket_mode: FakeSocketMode) -> None:
    async with aiohttp.ClientSession() as http:
        url = (await AsyncWebClient(base_url=slack.url).apps_connections_open(app_token=APP_TOKEN))[
            "url"
        ]
        async with http.ws_connect(url) as ws:
            hello = json.loads(await ws.receive_str())
            assert hello["type"] == "hello"
            assert hello["num_connections"] == 1
            assert hello["connection_info"] == {"app_id": slack.app_id}
            await ws.send_str("not an ack")
            await ws.send_str(json.dumps({"envelope_id": "nobody-asked"}))
            await socket_mode.wait_ack("nobody-asked")
        # A ticket opens one connection only.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url)
        assert refused.value.status == 401
    assert socket_mode.stray_frames == ["not an ack"]


async def test_only_the_app_token_opens_a_connection(
    slack: FakeSlack, socket_mode: FakeSocketMode
) -> None:
    web = AsyncWebClient(base_url=slack.url)
    with pytest.raises(SlackApiError) as refused:
        await web.apps_connections_open(app_token=BOT_TOKEN)
    assert refused.value.response["error"] == "invalid_auth"
    assert socket_mode.tickets == []


async def test_refresh_requested_moves_the_client_to_a_new_connection(
    socket_mode: FakeSocketMode, client: SocketModeClient
) -> None:
    await client.connect()
    first = await socket_mode.wait_connected()
    await socket_mode.send_disconnect()
    second = await socket_mode.wait_connected(2)
    await socket_mode.wait_closed(first)
    assert second.ticket != first.ticket
    await socket_mode.send_envelope("interactive", {"type": "block_actions"})
    assert len(second.received) == 1


async def test_an_unanswered_envelope_times_out(socket_mode: FakeSocketMode) -> None:
    async with aiohttp.ClientSession() as http:
        web = AsyncWebClient(base_url=socket_mode.slack.url)
        url = (await web.apps_connections_open(app_token=APP_TOKEN))["url"]
        async with http.ws_connect(url):
            await socket_mode.wait_connected()
            with pytest.raises(TimeoutError):
                await socket_mode.send_envelope("interactive", {}, within=0.05)
