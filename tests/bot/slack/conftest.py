"""Fixtures of the Slack end-to-end tests: a fake Slack and the app started against it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.settings import load_settings
from tests.appclient import start_app
from tests.bot.slack.support import CHANNEL, SIGNING_SECRET
from tests.conftest import WEBHOOK_SECRET
from tests.fakes.slack import FakeSlack


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(bot_token="xoxb-e2e-token") as fake:
        yield fake


@pytest.fixture
async def start(
    engine: AsyncEngine, slack: FakeSlack, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[TestClient]]]:
    clients: list[TestClient] = []

    async def make(
        policy: str = "",
        *,
        clock: Any = None,
        app_options: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> TestClient:
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
            **overrides,
        )
        client = await start_app(
            settings,
            engine=engine,
            scheduled_jobs=False,
            migrate=False,
            clock=clock,
            **(app_options or {}),
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
