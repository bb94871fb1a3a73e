"""Serve ``create_app`` on a loopback port the way ``reauthbot serve`` does."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from bot.app import SERVER_OPTIONS, create_app
from bot.settings import Settings


async def start_app(settings: Settings, **kwargs: Any) -> TestClient:
    """Start the app with the production server options (no access log, as ``run`` serves
    it); close the client when done."""
    server = TestServer(create_app(settings, **kwargs))
    await server.start_server(access_log=None, **SERVER_OPTIONS)
    client = TestClient(server)
    await client.start_server()
    return client
