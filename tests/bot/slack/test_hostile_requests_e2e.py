"""What a stranger can send to the public routes: never a 5xx, never a traceback, never a
line of their own in the log, and nothing changes."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlmodel import select

from bot.services import SERVICES
from storage.models import CaseEvent, InboxDelivery
from tests.bot.slack.support import Sessions, signed
from tests.conftest import WEBHOOK_SECRET
from tests.properties import rawhttp
from workflows.nylas.webhooks import sign

DEEP = b"[" * 1000 + b"]" * 1000
PATHS = ("/slack/events", "/nylas/webhook")


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def nothing_stored(sessions: Sessions) -> bool:
    async with sessions() as session:
        inbox = (await session.exec(select(InboxDelivery))).all()
        audit = (await session.exec(select(CaseEvent))).all()
    return not inbox and not audit


def requests_by_status(app: TestClient) -> dict[tuple[str, str], float]:
    metrics = app.server.app[SERVICES].metrics.render().decode()
    counts: dict[tuple[str, str], float] = {}
    for line in metrics.splitlines():
        if line.startswith("reauthbot_http_requests_total{"):
            labels, _, value = line.partition("} ")
            fields = dict(p.split("=", 1) for p in labels.split("{", 1)[1].split(","))
            counts[(fields["route"].strip('"'), fields["status"].strip('"'))] = float(value)
    return counts


async def test_a_deeply_nested_body_is_refused_signed_or_not(
    start: Any, sessions: Sessions, caplog: pytest.LogCaptureFixture
) -> None:
    app = await start()
    json_type = [(b"Content-Type", b"application/json")]
    unsigned = await rawhttp.post(app, "/slack/events", DEEP, json_type)
    assert unsigned.status == 401
    headers = [
        (k.encode(), v.encode()) for k, v in signed(DEEP.decode()).items() if k != "Content-Type"
    ]
    signed_answer = await rawhttp.post(app, "/slack/events", DEEP, headers + json_type)
    assert signed_answer.status == 400
    assert json.loads(signed_answer.body) == {"error": "malformed payload"}
    nylas = await rawhttp.post(
        app,
        "/nylas/webhook",
        DEEP,
        [(b"X-Nylas-Signature", sign(WEBHOOK_SECRET, DEEP).encode())],
    )
    assert nylas.status == 400
    assert errors(caplog) == []
    assert await nothing_stored(sessions)


async def test_an_unsigned_body_is_never_quoted_in_the_log(
    start: Any, sessions: Sessions, caplog: pytest.LogCaptureFixture
) -> None:
    app = await start()
    caplog.set_level(logging.DEBUG)
    planted = "\n2026-12-07T10:00:00.000+00:00 ERROR reauthbot.app forged line"
    payload = json.dumps({"type": "block_actions", "planted": planted, "pad": "x" * 500_000})
    body = "payload=" + payload
    headers = {
        "X-Slack-Request-Timestamp": str(int(time.time())),
        "X-Slack-Signature": "v0=" + "0" * 64,
        "Content-Type": "application/x-www-form-urlencoded",
    }
    response = await app.post("/slack/events", data=body, headers=headers)
    assert response.status == 401
    logged = "\n".join(r.getMessage() + str(r.__dict__) for r in caplog.records)
    assert "forged line" not in logged and "xxxxxxxxxx" not in logged
    assert await nothing_stored(sessions)


@pytest.mark.parametrize("path", PATHS)
async def test_a_body_that_never_arrives_is_408_in_bounded_time(
    start: Any, sessions: Sessions, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    app = await start(app_options={"read_timeout": 0.5})
    server = app.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    began = time.monotonic()
    writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123".encode())
    await writer.drain()
    async with asyncio.timeout(10):
        answer = await reader.readline()
    writer.close()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - began < 5
    assert errors(caplog) == []
    assert await nothing_stored(sessions)


@pytest.mark.parametrize("path", PATHS)
async def test_a_client_that_drops_mid_body_is_no_error(
    start: Any, sessions: Sessions, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    app = await start(app_options={"read_timeout": 5})
    server = app.server
    _reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123".encode())
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    await writer.wait_closed()

    async def counted() -> bool:
        return any(route == path for route, _ in requests_by_status(app))

    for _ in range(50):
        if await counted():
            break
        await asyncio.sleep(0.1)
    # Counted as the client's doing (499, as nginx does), not as a failure of ours.
    statuses = {status for route, status in requests_by_status(app) if route == path}
    assert statuses == {"499"}
    assert errors(caplog) == []
    assert await nothing_stored(sessions)


async def test_a_malformed_request_line_is_400_and_no_error(
    start: Any, caplog: pytest.LogCaptureFixture
) -> None:
    app = await start()
    server = app.server
    for raw in (b"GARBAGE\r\n\r\n", b"POST /slack/events HTTP/9.9\r\n\r\n", b"\x00\xff\r\n\r\n"):
        reader, writer = await asyncio.open_connection(server.host, server.port)
        writer.write(raw)
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await reader.read()
        writer.close()
        assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), answer[:40]
    assert errors(caplog) == []
    assert not any(status.startswith("5") for _, status in requests_by_status(app))


async def test_the_challenge_is_plain_capped_and_not_sniffed(start: Any) -> None:
    app = await start()
    response = await app.get("/nylas/webhook", params={"challenge": "<b>hi</b>"})
    assert response.status == 200 and await response.text() == "<b>hi</b>"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.content_type == "text/plain"
    long = await app.get("/nylas/webhook", params={"challenge": "x" * 257})
    assert long.status == 400
    assert "x" * 100 not in await long.text()
