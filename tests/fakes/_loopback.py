"""Serving a fake on a loopback port picked by the system."""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Self

from aiohttp import web


async def serve(
    app: web.Application, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Start ``app`` and return its runner and root URL (``http://host:port``)."""
    # A short shutdown timeout: a test that timed out must not wait for slow handlers.
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound_host, bound_port = runner.addresses[0][:2]
    return runner, f"http://{bound_host}:{bound_port}"


class LoopbackFake:
    """Base of the fakes: ``async with`` serves ``build_app()`` until the block ends.

    ``url`` is set once serving (``url_for`` shapes it from the root); ``_closing`` is set on
    the way out, so handlers that hold a request back let go at once.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.url = ""
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._closing = asyncio.Event()

    def build_app(self) -> web.Application:
        raise NotImplementedError

    def url_for(self, root: str) -> str:
        return root

    async def __aenter__(self) -> Self:
        self._closing = asyncio.Event()
        self._runner, root = await serve(self.build_app(), self._host, self._port)
        self.url = self.url_for(root)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
