"""What the Slack end-to-end tests share: signed requests, webhooks and waiting for posts."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from aiohttp.test_utils import TestClient
from slack_sdk.signature import SignatureVerifier
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.slack import ids
from storage.models import CaseEvent
from tests.conftest import (
    NYLAS_API_KEY,
    NYLAS_CLIENT_ID,
    NYLAS_CLIENT_SECRET,
    WEBHOOK_SECRET,
)
from tests.fakes.nylas import FakeNylas
from tests.fakes.slack import FakeSlack
from tests.waiting import eventually
from workflows.nylas import samples
from workflows.nylas.webhooks import sign

Sessions = async_sessionmaker[AsyncSession]
SIGNING_SECRET = "slack-signing-secret-77"
CHANNEL = "C0ALERTS"
NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


async def expire(app: TestClient, grant_id: str = "g-1", email: str = "ana@example.com") -> None:
    raw = json.dumps(
        samples.v3_notification("grant.expired", grant_id=grant_id, email=email, at=NOW)
    ).encode()
    response = await app.post(
        "/nylas/webhook", data=raw, headers={"X-Nylas-Signature": sign(WEBHOOK_SECRET, raw)}
    )
    assert response.status == 200


async def wait_posts(slack: FakeSlack, count: int) -> None:
    async def posted() -> bool:
        return len(slack.calls_to("chat.postMessage")) >= count

    await eventually(posted, within=10)


def signed(body: str, *, timestamp: int | None = None) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(SIGNING_SECRET).generate_signature(timestamp=ts, body=body)
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature,
    }


def click_payload(
    slack: FakeSlack, action_id: str, value: str, user: str, n: int = 1, *, select: bool = False
) -> dict[str, Any]:
    """A block_actions payload for a click on the first alert in the channel."""
    message_ts = min(ts for channel, ts in slack.messages if channel == CHANNEL)
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "team_id": "T0TEST"},
        "api_app_id": "A0APP",
        "token": "legacy",
        "team": {"id": "T0TEST", "domain": "acme"},
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": CHANNEL,
            "is_ephemeral": False,
        },
        "trigger_id": "123.456.abc",
        "channel": {"id": CHANNEL, "name": "alerts"},
        "response_url": slack.response_url(n),
        "actions": [
            {
                "action_id": action_id,
                "block_id": f"case-{value}",
                "value": value,
                "type": "button",
                "action_ts": str(time.time()),
            }
        ],
    }
    if select:
        payload["actions"] = [
            {
                "action_id": action_id,
                "block_id": "case-x",
                "type": "static_select",
                "selected_option": {"value": value},
                "action_ts": str(time.time()),
            }
        ]
    return payload


def click_body(
    slack: FakeSlack, action_id: str, value: str, user: str, n: int = 1, *, select: bool = False
) -> str:
    """The click as Slack posts it over HTTP: a form with the JSON payload."""
    payload = click_payload(slack, action_id, value, user, n, select=select)
    return urlencode({"payload": json.dumps(payload)})


async def click(app: TestClient, body: str, **kw: Any) -> int:
    response = await app.post(ids.EVENTS_PATH, data=body, headers=signed(body, **kw))
    return response.status


async def case_events(sessions: Sessions) -> list[tuple[str, str]]:
    async with sessions() as session:
        return [
            (e.actor, e.action)
            for e in (await session.exec(select(CaseEvent).order_by(CaseEvent.id))).all()
        ]  # type: ignore[arg-type]


def nylas_settings(fake: FakeNylas, version: str) -> dict[str, Any]:
    return {
        "nylas_api_version": version,
        "nylas_api_url": fake.url,
        "nylas_api_key": NYLAS_API_KEY,
        "nylas_client_id": NYLAS_CLIENT_ID,
        "nylas_client_secret": NYLAS_CLIENT_SECRET,
    }
