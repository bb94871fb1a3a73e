"""From a signed Nylas webhook to a Slack alert, and a signed button click acting on it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient
from slack_sdk.signature import SignatureVerifier
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.settings import load_settings
from bot.slack import ids
from storage import cases
from storage.models import CaseEvent
from tests.appclient import start_app
from tests.conftest import WEBHOOK_SECRET
from tests.fakes.slack import FakeSlack
from tests.waiting import eventually
from workflows.nylas import samples
from workflows.nylas.webhooks import sign

Sessions = async_sessionmaker[AsyncSession]
SIGNING_SECRET = "slack-signing-secret-77"
CHANNEL = "C0ALERTS"
NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(bot_token="xoxb-e2e-token") as fake:
        yield fake


@pytest.fixture
async def start(
    engine: AsyncEngine, slack: FakeSlack, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[TestClient]]]:
    clients: list[TestClient] = []

    async def make(policy: str = "") -> TestClient:
        config = tmp_path / "policy.toml"
        config.write_text(policy)
        settings = load_settings(
            _env_file=None,
            slack_bot_token="xoxb-e2e-token",
            slack_signing_secret=SIGNING_SECRET,
            slack_alert_channel=CHANNEL,
            slack_api_url=slack.url,
            nylas_webhook_secret=WEBHOOK_SECRET,
            config_file=config,
        )
        client = await start_app(settings, engine=engine, scheduled_jobs=False, migrate=False)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


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


def click_body(slack: FakeSlack, action_id: str, value: str, user: str, n: int = 1) -> str:
    message_ts = slack.calls_to("chat.postMessage")[0].params.get("ts", "1700000000.000100")
    payload = {
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


async def test_webhook_to_alert_to_acknowledge(
    start: Any, slack: FakeSlack, sessions: Sessions
) -> None:
    app = await start()
    await expire(app)
    await wait_posts(slack, 1)
    (post,) = slack.calls_to("chat.postMessage")
    assert post.params["channel"] == CHANNEL
    assert "ana@example.com" in json.dumps(post.params["blocks"])
    (ts,) = [key[1] for key in slack.messages]
    async with sessions() as session:
        case = await cases.get_case(session, case_id=1)
    assert case is not None and (case.slack_channel, case.slack_ts) == (CHANNEL, ts)

    assert await click(app, click_body(slack, ids.ACK, "1", "U0ALICE")) == 200
    await wait_posts(slack, 2)  # the thread line

    async def updated() -> bool:
        return bool(slack.calls_to("chat.update"))

    await eventually(updated, within=10)
    (update,) = slack.calls_to("chat.update")
    assert (update.params["channel"], update.params["ts"]) == (CHANNEL, ts)
    assert "Acknowledged by <@U0ALICE>" in json.dumps(update.params["blocks"])
    assert ids.ACK not in json.dumps(update.params["blocks"])
    (line,) = slack.thread(CHANNEL, ts)
    assert line["text"] == "Acknowledged by <@U0ALICE>."
    assert ("slack:U0ALICE", "acknowledged") in await case_events(sessions)
    assert len(slack.calls_to("chat.postMessage")) == 2  # the parent was posted once


async def test_double_click_changes_once(start: Any, slack: FakeSlack, sessions: Sessions) -> None:
    app = await start()
    await expire(app)
    await wait_posts(slack, 1)
    statuses = await asyncio.gather(
        click(app, click_body(slack, ids.ACK, "1", "U0ALICE", n=1)),
        click(app, click_body(slack, ids.ACK, "1", "U0BOB", n=2)),
    )
    assert statuses == [200, 200]

    async def answered() -> bool:
        return len(slack.responses) == 1

    await eventually(answered)
    assert "already acknowledged by" in slack.responses[0]["text"]
    assert slack.responses[0]["response_type"] == "ephemeral"
    acks = [e for e in await case_events(sessions) if e[1] == "acknowledged"]
    assert len(acks) == 1


async def test_refused_click_changes_nothing(
    start: Any, slack: FakeSlack, sessions: Sessions
) -> None:
    slack.add_user_group("S0ONCALL", ["U0ALICE"])
    app = await start('[permissions]\nack = ["S0ONCALL", "U0LEAD"]\n')
    await expire(app)
    await wait_posts(slack, 1)
    assert await click(app, click_body(slack, ids.ACK, "1", "U0MALLORY")) == 200

    async def answered() -> bool:
        return len(slack.responses) == 1

    await eventually(answered)
    assert slack.responses[0]["text"] == "You are not allowed to ack cases."
    async with sessions() as session:
        case = await cases.get_case(session, case_id=1)
    assert case is not None and case.acknowledged_at is None
    assert ("slack:U0MALLORY", "refused") in await case_events(sessions)
    assert slack.calls_to("chat.update") == []
    # A member of the listed group may.
    assert await click(app, click_body(slack, ids.ACK, "1", "U0ALICE", n=2)) == 200

    async def acked() -> bool:
        return ("slack:U0ALICE", "acknowledged") in await case_events(sessions)

    await eventually(acked)


async def test_click_on_a_resolved_case_is_explained(
    start: Any, slack: FakeSlack, sessions: Sessions
) -> None:
    app = await start()
    await expire(app)
    await wait_posts(slack, 1)
    raw = json.dumps(
        samples.v3_notification(
            "grant.updated",
            grant_id="g-1",
            email="ana@example.com",
            at=NOW.replace(hour=10),
            reauthenticated=True,
        )
    ).encode()
    await app.post(
        "/nylas/webhook", data=raw, headers={"X-Nylas-Signature": sign(WEBHOOK_SECRET, raw)}
    )

    async def resolved() -> bool:
        return any(
            "Resolved" in json.dumps(c.params.get("blocks")) for c in slack.calls_to("chat.update")
        )

    await eventually(resolved, within=10)
    final = slack.calls_to("chat.update")[-1].params["blocks"]
    assert not [b for b in final if b["type"] == "actions"]  # no buttons on a resolved case
    assert await click(app, click_body(slack, ids.ACK, "1", "U0ALICE")) == 200

    async def answered() -> bool:
        return len(slack.responses) == 1

    await eventually(answered)
    assert slack.responses[0]["text"].startswith("Case #1 is already resolved")


@pytest.mark.parametrize(
    ("mangle", "status"),
    [
        (lambda body, headers: (body, {**headers, "X-Slack-Signature": "v0=" + "0" * 64}), 401),
        (lambda body, headers: (body + "&x=1", headers), 401),
        (lambda body, headers: (body, signed(body, timestamp=int(time.time()) - 301)), 401),
        (lambda body, headers: (body, {"Content-Type": headers["Content-Type"]}), 401),
    ],
    ids=["bad signature", "body changed", "replayed after 5 minutes", "unsigned"],
)
async def test_unsigned_or_replayed_clicks_are_rejected(
    start: Any, slack: FakeSlack, sessions: Sessions, mangle: Any, status: int
) -> None:
    app = await start()
    await expire(app)
    await wait_posts(slack, 1)
    body = click_body(slack, ids.ACK, "1", "U0ALICE")
    sent_body, headers = mangle(body, signed(body))
    response = await app.post(ids.EVENTS_PATH, data=sent_body, headers=headers)
    assert response.status == status
    assert [e for e in await case_events(sessions) if e[1] == "acknowledged"] == []
