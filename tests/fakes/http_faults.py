"""An HTTP proxy in front of another fake that fails or holds the requests a test picks.

    async with FaultyProxy(nylas_fake.url) as proxy:
        # the first page of the listing goes through; the next ones fail
        proxy.fail(lambda r: r.path == "/v3/grants" and r.query.get("offset", "0") != "0")
        client = NylasClient(http, base_url=proxy.url, ...)

The fakes' own ``fail`` and ``delay`` match a method and a path; a rule here is any predicate
over the request (its query too), so "page 2 onwards" or "the third call" can be said.
Requests no rule picks are forwarded unchanged, and answered with the upstream's status,
headers and body. A failure is answered by the proxy itself and never reaches the upstream;
a hold waits, then forwards (so the upstream acts late, as a slow server would).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from tests.fakes._loopback import LoopbackFake

Match = Callable[[web.Request], bool]

# Hop-by-hop or recomputed when the body is sent again.
_DROPPED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "content-encoding"}
)


@dataclass(slots=True)
class _Rule:
    match: Match
    remaining: int | None
    status: int = 0
    headers: dict[str, str] | None = None
    body: Any = None
    seconds: float = 0.0

    def take(self, request: web.Request) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        if not self.match(request):
            return False
        if self.remaining is not None:
            self.remaining -= 1
        return True


class FaultyProxy(LoopbackFake):
    """Forwards to ``upstream`` (a root URL); ``fail`` and ``hold`` pick requests to spoil."""

    def __init__(self, upstream: str, *, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host=host, port=port)
        self.upstream = upstream.rstrip("/")
        self.failed = 0  # requests answered by a failure rule
        self._failures: list[_Rule] = []
        self._holds: list[_Rule] = []
        self._http: aiohttp.ClientSession | None = None

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        app.cleanup_ctx.append(self._client)
        return app

    async def _client(self, app: web.Application) -> Any:
        async with aiohttp.ClientSession(auto_decompress=False) as http:
            self._http = http
            yield
        self._http = None

    def fail(
        self,
        match: Match,
        *,
        status: int = 503,
        times: int | None = None,
        headers: dict[str, str] | None = None,
        body: Any = None,
    ) -> None:
        """Answer matching requests (the next ``times``; None: all) with ``status``.

        ``body`` defaults to ``{"error": "injected failure"}``; a str is sent as text.
        """
        rule = _Rule(match, times, status=status, headers=headers, body=body)
        self._failures.append(rule)

    def hold(self, match: Match, seconds: float, *, times: int | None = None) -> None:
        """Hold matching requests for ``seconds`` before forwarding them."""
        self._holds.append(_Rule(match, times, seconds=seconds))

    def clear(self) -> None:
        """Drop every rule: the upstream answers everything again."""
        self._failures.clear()
        self._holds.clear()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        for rule in self._holds:
            if rule.take(request):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), rule.seconds)
                break
        for rule in self._failures:
            if rule.take(request):
                self.failed += 1
                return _failure(rule)
        assert self._http is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROPPED_HEADERS}
        async with self._http.request(
            request.method,
            self.upstream + request.rel_url.path_qs,
            headers=headers,
            data=await request.read(),
            allow_redirects=False,
        ) as answer:
            body = await answer.read()
            back = {k: v for k, v in answer.headers.items() if k.lower() not in _DROPPED_HEADERS}
            if "Content-Encoding" in answer.headers:
                back["Content-Encoding"] = answer.headers["Content-Encoding"]
            return web.Response(status=answer.status, headers=back, body=body)


def _failure(rule: _Rule) -> web.Response:
    if isinstance(rule.body, str):
        return web.Response(text=rule.body, status=rule.status, headers=rule.headers)
    body = rule.body if rule.body is not None else {"error": "injected failure"}
    return web.json_response(body, status=rule.status, headers=rule.headers)
