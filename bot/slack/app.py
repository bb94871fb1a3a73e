"""The Bolt app, served on the service's own aiohttp application at ``/slack/events``."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncServerErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from bot.bodies import BodyError, read_body
from bot.services import Services
from bot.settings import Settings
from bot.slack import actions, cleanup, commands, home, ids
from bot.slack.groups import GroupDirectory
from bot.slack.guard import Identity, replay_guard
from bot.slack.operator import operator_middleware

log = logging.getLogger("reauthbot.slack")

BOLT = web.AppKey("bolt", AsyncApp)
SIGNING_KEY = web.AppKey("slack_signing_key", bytes)
SIGNATURE_AGE = 300  # seconds: Slack's own bound on a request's timestamp

# What Bolt raises when it reads a missing or mistyped field of a payload while routing it.
MALFORMED = (LookupError, TypeError, ValueError, AttributeError)


def build_client(settings: Settings) -> AsyncWebClient:
    """The one Slack client of the service (listeners and notifier alike)."""
    assert settings.slack_bot_token is not None
    return AsyncWebClient(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=settings.slack_api_url,
        timeout=10,
        # 429s are not retried here: the notifier reschedules the message after Retry-After
        # instead of holding a delivery slot while it sleeps.
        retry_handlers=[AsyncConnectionErrorRetryHandler(), AsyncServerErrorRetryHandler()],
    )


def build_bolt(services: Services, client: AsyncWebClient) -> AsyncApp:
    settings = services.settings
    secret = settings.slack_signing_secret
    bolt = AsyncApp(
        client=client,
        signing_secret=secret.get_secret_value() if secret else None,
        request_verification_enabled=not settings.socket_mode,
        logger=logging.getLogger("reauthbot.bolt"),
    )
    # Refusals that change nothing come first; the replay ledger records only what is served.
    bolt.use(Identity(client).middleware)
    bolt.use(refuse_unstorable_text)
    bolt.use(replay_guard(services))
    groups = GroupDirectory(client)
    # Who acts, and what they may do, for every listener below.
    bolt.use(operator_middleware(settings.policy.permissions, groups.members))
    actions.register(bolt, services)
    cleanup.register(bolt, services)
    home.register(bolt, services)
    commands.register(bolt, services, groups)

    @bolt.error
    async def on_error(error: Exception, response: BoltResponse | None) -> BoltResponse | None:
        if response is not None and isinstance(error, MALFORMED):
            # Nothing acknowledged yet, and every listener acknowledges first: Bolt failed
            # while matching the payload to a listener. Bolt would answer 500.
            log.warning("malformed Slack payload: %s: %s", type(error).__name__, error)
            return BoltResponse(status=400, body={"error": "malformed payload"})
        log.error("Slack listener failed: %s", error, exc_info=error)
        return None

    return bolt


# A lone surrogate ("\ud800" in JSON) is no character: it cannot be encoded as UTF-8 to be
# stored, logged or sent back.
_SURROGATE = re.compile("[\ud800-\udfff]")


def unstorable(value: object) -> str | None:
    """What in ``value`` (keys, strings, nested) no text column can hold: a NUL character or a
    lone surrogate; None when there is nothing of the kind."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "NUL character"
            if _SURROGATE.search(item):
                return "lone surrogate"
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return None


async def refuse_unstorable_text(
    body: dict[str, object], next: Callable[[], Awaitable[BoltResponse]]
) -> BoltResponse:
    """Answer 400 to a payload with a NUL character or a lone surrogate anywhere in it.

    Slack never sends either, and neither can be stored in a text column (PostgreSQL refuses
    NUL, UTF-8 has no lone surrogate): a user id or a note carrying one would fail the listener
    after its answer. Runs after the signature check.
    """
    if (what := unstorable(body)) is not None:
        log.warning("malformed Slack payload: a %s", what)
        return BoltResponse(status=400, body={"error": f"malformed payload: {what}"})
    return await next()


async def slack_events(request: web.Request) -> web.Response:
    """Events, interactivity and slash commands, verified and dispatched by Bolt.

    The signature is checked on the raw bytes before anything parses them: a stranger's
    body is never decoded (a JSON array nested a thousand deep would exhaust the parser's
    recursion) nor quoted in a log line.
    """
    bolt = request.app[BOLT]
    try:
        raw = await read_body(request)
    except BodyError as exc:
        return _refuse(exc.status, str(exc))
    timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
    signature = request.headers.get("X-Slack-Signature", "")
    if not signed(request.app[SIGNING_KEY], raw, timestamp, signature, now=time.time()):
        log.info("Slack request refused: missing, old or wrong signature")
        return _refuse(401, "invalid signature")
    try:
        text = raw.decode("utf-8")
        bolt_request = AsyncBoltRequest(
            body=text, query=request.query_string, headers=cast(Any, request.headers)
        )
        response = await bolt.async_dispatch(bolt_request)
    except (*MALFORMED, RecursionError) as exc:
        # Bolt reads payload fields while routing; a request with a missing or mistyped
        # field must get a clear 400, not a 500 (and changes nothing).
        log.warning("malformed Slack payload: %s", type(exc).__name__)
        return _refuse(400, "malformed payload")
    return await to_aiohttp_response(response)


def signed(key: bytes, raw: bytes, timestamp: str, signature: str, *, now: float) -> bool:
    """Whether Slack signed ``raw`` within the last five minutes (any malformed header: no).

    Slack's scheme: ``v0=`` and the hex HMAC-SHA256 of ``v0:<timestamp>:<body>``, computed
    here over the bytes as they came (the body need not even be UTF-8 to be refused).
    """
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        return False
    if abs(now - int(timestamp)) > SIGNATURE_AGE:
        return False
    mac = hmac.new(key, b"v0:" + timestamp.encode() + b":" + raw, hashlib.sha256)
    # compare_digest refuses text that is not ASCII rather than saying it differs.
    return signature.isascii() and hmac.compare_digest("v0=" + mac.hexdigest(), signature)


def _refuse(status: int, error: str) -> web.Response:
    return web.json_response({"error": error}, status=status)


def register(app: web.Application, bolt: AsyncApp, *, signing_secret: str | None) -> None:
    """Keep the Bolt app on ``app``; with a signing secret, serve it at ``/slack/events`` too.

    Socket Mode has no signing secret: Bolt checks no signatures there, so the route would act
    on anyone's unsigned requests, and Slack sends nothing to it anyway.
    """
    app[BOLT] = bolt
    if signing_secret is not None:
        app[SIGNING_KEY] = signing_secret.encode()
        app.router.add_post(ids.EVENTS_PATH, slack_events)
