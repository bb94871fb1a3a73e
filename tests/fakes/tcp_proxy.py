"""A loopback TCP proxy that a test can cut and restore, to stand in for a network outage.

    async with TcpProxy("127.0.0.1", 5432) as proxy:
        url = make_url(database_url).set(host=proxy.host, port=proxy.port)
        ...
        proxy.cut()        # every open connection is reset; new ones are reset at once
        proxy.restore()    # new connections are forwarded again

``cut(blackhole=True)`` leaves new connections hanging instead, as a partition that drops
packets does: the client's connect looks done, but nothing it sends gets an answer. On
``restore()`` the held connections are reset, as if the client's own timeout had run out,
so nothing written during the outage reaches the server afterwards.

Bytes are copied as they arrive, in both directions; ``connections`` counts every connection
accepted, forwarded or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from types import TracebackType
from typing import Self

_CHUNK = 64 * 1024
_CLOSE_WITHIN = 1.0  # seconds


class TcpProxy:
    """Forwards connections on an ephemeral loopback port to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._up = True
        self._blackhole = False
        self._restored = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
        self._restored.set()  # connections held by a blackhole are reset and let go
        self._reset_all()
        # Reset connections end by themselves; cancelling them instead makes asyncio log a
        # CancelledError for each (Python 3.11). Only what is still running is cancelled.
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=_CLOSE_WITHIN)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def cut(self, *, blackhole: bool = False) -> None:
        """Reset every open connection; refuse (or, with ``blackhole``, hold) new ones."""
        self._up = False
        self._blackhole = blackhole
        self._restored.clear()
        self._reset_all()

    def restore(self) -> None:
        """Forward new connections again; connections held by a blackhole are reset."""
        self._up = True
        self._restored.set()

    def _reset_all(self) -> None:
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            await self._serve(reader, writer)
        finally:
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._up:
            if self._blackhole:
                self._writers.add(writer)
                await self._restored.wait()
            _reset(writer)
            self._writers.discard(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            _reset(writer)
            return
        if not self._up:  # cut while connecting
            _reset(writer)
            _reset(up_writer)
            return
        self._writers.update((writer, up_writer))
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for end in (writer, up_writer):
                self._writers.discard(end)
                _reset(end)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close at once with a TCP reset (SO_LINGER 0), as a dropped route or firewall would."""
    if writer.transport.is_closing():
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
