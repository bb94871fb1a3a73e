"""Send one HTTP/1.1 request as raw bytes, so headers can hold what no client would send."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from aiohttp.test_utils import TestClient


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def post(
    client: TestClient, path: str, body: bytes, headers: list[tuple[bytes, bytes]]
) -> Answer:
    """POST ``body`` to the app with exactly these header lines; read the whole answer."""
    server = client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        head = [
            b"POST " + path.encode() + b" HTTP/1.1",
            b"Host: " + f"{server.host}:{server.port}".encode(),
            b"Connection: close",
            b"Content-Length: " + str(len(body)).encode(),
            *(name + b": " + value for name, value in headers),
        ]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await writer.drain()
        async with asyncio.timeout(10):
            raw = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, _, rest = raw.partition(b"\r\n")
    _, _, payload = rest.partition(b"\r\n\r\n")
    return Answer(int(status_line.split()[1]), payload)
