"""Checks on every Slack request beyond its signature, as Bolt middleware.

- ``Identity``: a request must come from the workspace and the app this service is; the
  signing secret alone does not say which team or app a payload claims to be from.
- ``refuse_replays``: a signed request stays valid for 5 minutes, so a copy sent again within
  them is served once (across replicas: the seen signatures are in the database).

Both run after Bolt's signature check and before any listener, and a refused request changes
nothing.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import ClientError
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.services import Services
from storage import slack_requests

log = logging.getLogger("reauthbot.slack.guard")

SIGNATURE_WINDOW = 5 * 60  # seconds: Bolt refuses requests stamped further from now
# Kept a little longer than the window, for clocks of replicas that disagree slightly.
REPLAY_MEMORY = SIGNATURE_WINDOW + 60
SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")
SHOWN = 40  # characters of a refused id that reach the log

Next = Callable[[], Awaitable[BoltResponse]]


@dataclass(frozen=True, slots=True)
class Own:
    team_id: str
    app_id: str


class Identity:
    """The app's own team id and app id, asked of Slack once and then kept.

    ``auth.test`` names the team and the bot; the app id comes from its ``app_id`` when Slack
    includes it, else from ``bots.info`` of the bot.
    """

    def __init__(self, client: AsyncWebClient) -> None:
        self._client = client
        self._own: Own | None = None
        self._lock = asyncio.Lock()

    async def own(self) -> Own:
        """The team and app this service is; raises SlackApiError or ClientError if unknown."""
        if self._own is not None:
            return self._own
        async with self._lock:
            if self._own is None:
                auth = await self._client.auth_test()
                app_id = auth.get("app_id")
                if not app_id:
                    bot = await self._client.bots_info(bot=str(auth["bot_id"]))
                    app_id = bot["bot"]["app_id"]
                self._own = Own(team_id=str(auth["team_id"]), app_id=str(app_id))
        return self._own

    async def middleware(
        self, req: AsyncBoltRequest, body: dict[str, Any], next: Next
    ) -> BoltResponse:
        """Answer 403 to a request whose team or app is not this service's own."""
        try:
            own = await self.own()
        except (SlackApiError, ClientError, TimeoutError, KeyError) as exc:
            # Not knowing who we are, no request can be told apart from a forged one.
            log.warning("cannot learn the app's own team and app ids: %s", type(exc).__name__)
            return BoltResponse(status=503, body="try again later")
        team, app = req.context.team_id, body.get("api_app_id")
        if team != own.team_id or app != own.app_id:
            log.info(
                "refused a Slack request from another team or app: team %s, app %s",
                _shown(team),
                _shown(app),
            )
            return BoltResponse(status=403, body="forbidden")
        return await next()


def _shown(value: object) -> str:
    """An id from a refused request, bounded and quoted, fit for one log line."""
    return repr(str(value)[:SHOWN]) if value is not None else "none"


def _header(req: AsyncBoltRequest, name: str) -> str | None:
    values = req.headers.get(name)
    return str(values[0]) if values else None


def replay_guard(
    services: Services, *, wall: Callable[[], float] = time.time
) -> Callable[..., Any]:
    """The middleware that serves each signed request once.

    ``wall`` is the clock Bolt checks signature timestamps against (the real one).
    """

    async def refuse_replays(req: AsyncBoltRequest, next: Next) -> BoltResponse:
        signature = _header(req, "x-slack-signature")
        stamp = _header(req, "x-slack-request-timestamp")
        if req.mode == "socket_mode" or signature is None or stamp is None:
            return await next()  # Socket Mode: no signature, and Slack's envelopes are acked
        if not SIGNATURE.fullmatch(signature) or not stamp.isdigit():
            return BoltResponse(status=401, body="invalid request")
        async with services.sessions() as session, session.begin():
            first = await slack_requests.first_sight(
                session,
                signature=signature,
                timestamp=int(stamp),
                oldest=int(wall()) - REPLAY_MEMORY,
            )
        if not first:
            log.info("ignored a Slack request served before (same signature)")
            return BoltResponse(status=200, body="")
        return await next()

    return refuse_replays
