"""The Nylas webhook endpoint: verify, store in the inbox, then answer.

A delivery is answered 2xx only after it is stored, so Nylas retries anything we could not
keep: 503 when the database does not take it. Deliveries of triggers reauthbot does not act
on get 200 too, because Nylas disables endpoints that keep failing.
"""

from __future__ import annotations

import functools
import json
import logging

from aiohttp import web

from bot.bodies import BodyError, read_body
from bot.metrics import label_word
from bot.runtime import RUNTIME
from bot.services import SERVICES
from workflows.nylas import webhooks

log = logging.getLogger("reauthbot.webhook")

RETRY_AFTER_SECONDS = "30"
JSON = "application/json"


# Nylas' challenge is a short token; anything longer is not Nylas asking.
MAX_CHALLENGE = 256
NOSNIFF = {"X-Content-Type-Options": "nosniff"}


async def challenge(request: web.Request) -> web.Response:
    """Echo Nylas' challenge as plain text, which activates the webhook."""
    value = request.query.get("challenge")
    if value is None:
        return web.json_response({"status": "error", "message": "missing challenge"}, status=400)
    if len(value) > MAX_CHALLENGE:
        return _error(400, f"challenge is longer than {MAX_CHALLENGE} characters")
    # Echoed as given: a browser must not read it as HTML.
    return web.Response(text=value, content_type="text/plain", headers=NOSNIFF)


async def receive(request: web.Request) -> web.Response:
    services, runtime = request.app[SERVICES], request.app[RUNTIME]
    metrics = services.metrics

    def count(result: str) -> None:
        metrics.child(metrics.webhook_deliveries, result).inc()

    if (request.content_length or 0) > webhooks.MAX_BODY_BYTES:
        count("too_large")
        return _error(413, "body is larger than 1 MiB")
    try:
        raw = await read_body(request)
    except BodyError as exc:
        count("too_large" if exc.status == 413 else "unreadable")
        return _error(exc.status, str(exc))
    try:
        entries = _verified_entries(
            request, raw, services.webhook_secrets, services.webhook_versions
        )
    except webhooks.WebhookError as exc:
        count(label_word(type(exc).__name__))
        log.warning("webhook rejected: %s", exc, extra={"status": exc.status})
        return _error(exc.status, str(exc))
    if not entries:
        count("ignored")
        return web.json_response({"status": "ignored", "message": "trigger not acted on"})
    if runtime.inbox_writer is None:
        return _error(503, "the service is starting; retry", retry=True)
    try:
        stored = await runtime.inbox_writer.store(entries)  # TimeoutError if not in time
    except Exception as exc:
        count("unavailable")
        # The inbox writer reports the outage, once; here, each refused delivery at DEBUG.
        log.debug("cannot store a webhook delivery: %s", type(exc).__name__)
        return _error(503, "cannot store the delivery now; retry", retry=True)
    count("stored" if stored else "duplicate")
    if stored and runtime.ingest is not None:
        runtime.ingest.wake()
    # The answer's text, made once for each pair of counts (usually 1 and 0).
    return web.Response(text=_accepted(stored, len(entries) - stored), content_type=JSON)


@functools.lru_cache(maxsize=64)
def _accepted(stored: int, duplicates: int) -> str:
    return json.dumps({"status": "accepted", "stored": stored, "duplicates": duplicates})


def _verified_entries(
    request: web.Request, raw: bytes, secrets: dict[str, str], accepted: frozenset[str]
) -> list[webhooks.InboxEntry]:
    gzipped = request.headers.get("Content-Encoding", "").strip().lower() == "gzip"
    signature = request.headers.get("X-Nylas-Signature")
    try:
        # Nylas signs the bytes it sends; for compressed delivery, accept a signature of the
        # decompressed body too, as Nylas does not document which of the two it signs.
        version = webhooks.verify(raw, signature, secrets)
        body = webhooks.decompress(raw) if gzipped else raw
    except webhooks.BadSignature:
        if not gzipped:
            raise
        body = webhooks.decompress(raw)
        version = webhooks.verify(body, signature, secrets)
    webhooks.check_accepted(version, accepted)
    return webhooks.split(version, body)


def _error(status: int, message: str, *, retry: bool = False) -> web.Response:
    headers = {"Retry-After": RETRY_AFTER_SECONDS} if retry else None
    return web.json_response(
        {"status": "error", "message": message}, status=status, headers=headers
    )


def register(app: web.Application) -> None:
    app.router.add_get("/nylas/webhook", challenge)
    app.router.add_post("/nylas/webhook", receive)
