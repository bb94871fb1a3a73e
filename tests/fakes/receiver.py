"""A fake receiver of the outreach webhook served over real HTTP, for tests.

    async with FakeReceiver(secret=SECRET) as receiver:
        hook = OutreachWebhook(http, url=receiver.url + "/hooks/reauth", secret=SECRET)
        await hook.post({"id": "evt-1", "type": "reauth.requested", ...})
        assert receiver.deliveries[0].signature_valid

Any path takes a POST. The signature is checked here with its own few lines of HMAC rather
than with ``workflows.outreach.verify``, so a mistake in the service's signing cannot hide
behind the same mistake in the check: ``sha256=`` and the hex HMAC-SHA256, keyed with the
secret, of ``"<X-Reauthbot-Timestamp>.<raw body>"``, and a timestamp within ``tolerance``
seconds of the fake's clock. A good signature is answered 200, a missing or bad one 401.

Every request is recorded in ``deliveries``, with its headers, raw body, parsed JSON (None
if not JSON), whether the signature held, and the status answered. ``events()`` gives the
signed events once per ``id``, as a receiver that drops repeats would keep them.

Injected failures (``fail``) come before the signature check, like a proxy in front of the
receiver; a delayed request (``delay``) is answered when its delay ends or the fake closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from tests.fakes._loopback import LoopbackFake

DEFAULT_SECRET = "outreach-secret-7c2a"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One request as the receiver got it, and the status it answered."""

    path: str
    headers: CIMultiDict[str]
    body: bytes
    json: Any
    signature_valid: bool
    status: int


@dataclass(slots=True)
class _Rule:
    remaining: int | None
    status: int = 0
    retry_after: str | None = None
    seconds: float = 0.0

    def take(self) -> bool:
        if self.remaining is None:
            return True
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True


class FakeReceiver(LoopbackFake):
    """A local endpoint that checks outreach signatures and records every request."""

    def __init__(
        self,
        *,
        secret: str = DEFAULT_SECRET,
        tolerance: float = 300.0,
        clock: Callable[[], float] = time.time,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        self.secret = secret
        self.tolerance = tolerance
        self.deliveries: list[Delivery] = []
        self._clock = clock
        self._failures: list[_Rule] = []
        self._delays: list[_Rule] = []

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._receive)
        return app

    # -- looking and steering ----------------------------------------------------------

    def events(self) -> list[Any]:
        """Return the JSON of the well-signed deliveries answered 2xx, once per event id."""
        seen: set[Any] = set()
        kept = []
        for d in self.deliveries:
            if not (d.signature_valid and 200 <= d.status < 300 and isinstance(d.json, dict)):
                continue
            if d.json.get("id") in seen:
                continue
            seen.add(d.json.get("id"))
            kept.append(d.json)
        return kept

    def fail(
        self, status: int = 503, *, times: int | None = 1, retry_after: float | str | None = None
    ) -> None:
        """Answer the next `times` requests (None: all) with `status`, before any check.

        retry_after, when given, is sent as the Retry-After header. Rules are used in the
        order they were added.
        """
        header = None if retry_after is None else str(retry_after)
        self._failures.append(_Rule(times, status=status, retry_after=header))

    def delay(self, seconds: float, *, times: int | None = 1) -> None:
        """Hold the next `times` requests (None: all) for `seconds` before answering them."""
        self._delays.append(_Rule(times, seconds=seconds))

    def signature_holds(self, timestamp: str | None, body: bytes, signature: str | None) -> bool:
        """Check a signature the way a receiver would, independently of the service."""
        if not timestamp or not signature or not timestamp.isdigit():
            return False
        if abs(self._clock() - int(timestamp)) > self.tolerance:
            return False
        key = self.secret.encode()
        digest = hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(
            ("sha256=" + digest).encode(), signature.encode("utf-8", "replace")
        )

    # -- the endpoint ------------------------------------------------------------------

    async def _receive(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            parsed: Any = json.loads(raw)
        except ValueError:
            parsed = None
        valid = self.signature_holds(
            request.headers.get("X-Reauthbot-Timestamp"),
            raw,
            request.headers.get("X-Reauthbot-Signature"),
        )
        for rule in self._delays:
            if rule.take():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), rule.seconds)
        response = self._answer(valid)
        headers = CIMultiDict(request.headers)
        self.deliveries.append(Delivery(request.path, headers, raw, parsed, valid, response.status))
        return response

    def _answer(self, valid: bool) -> web.Response:
        for rule in self._failures:
            if rule.take():
                headers = {} if rule.retry_after is None else {"Retry-After": rule.retry_after}
                return web.json_response(
                    {"error": "injected failure"}, status=rule.status, headers=headers
                )
        if not valid:
            return web.json_response({"error": "bad signature"}, status=401)
        return web.json_response({"ok": True})
