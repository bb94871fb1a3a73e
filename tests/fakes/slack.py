"""A fake Slack Web API served over real HTTP, for tests that use the real slack-sdk client.

    async with FakeSlack(bot_token="xoxb-test-token") as slack:
        client = AsyncWebClient(token="xoxb-test-token", base_url=slack.url)
        await client.chat_postMessage(channel="C1", text="hi")
        assert slack.calls_to("chat.postMessage")[0].params["text"] == "hi"

Methods: ``auth.test``, ``bots.info``, ``chat.postMessage``, ``chat.update``,
``chat.postEphemeral``, ``views.open``, ``views.push``, ``views.update``, ``views.publish``,
``usergroups.users.list``, ``users.info``, ``conversations.info``, ``conversations.history``;
anything else answers ``unknown_method``. ``POST /response/<n>`` stands in for response_url.

Requests are read the way slack-sdk sends them: ``chat.*`` and ``views.*`` as a JSON body,
read methods as GET with a query string, most other writes (``auth.test``,
``reactions.add``...) as POST with the arguments in the query string and an empty body,
and ``api_call(data=...)`` as a form body. All sources are merged into ``Call.params``;
``blocks``, ``attachments``, ``metadata`` and ``view`` sent as JSON-encoded strings (the
form-body convention, also allowed inside a JSON body) are decoded.

Other fakes add methods with ``serve_method``, each authenticated by its own token:
``tests/fakes/socket_mode.py`` adds ``apps.connections.open`` (app-level token).

Answers have Slack's shapes: HTTP 200 with ``{"ok": false, "error": ...}`` for API errors,
429 with ``Retry-After`` and ``{"ok": false, "error": "ratelimited"}`` for rate limits.
Where Slack does not document a behaviour, the fake picks one and says so here:

- only ``Authorization: Bearer <bot token>`` authenticates; Slack also takes a ``token``
  form field, which the fake refuses so that a client not sending the header is noticed;
- injected failures (``fail``) come before the auth check, like a proxy in front of Slack;
- ts values are the wall-clock time (``wall_clock``) in microseconds, moved on by at least
  100 µs from the previous one, shared by every message and ephemeral, so they are unique and
  strictly increasing, as Slack's are within a channel;
- stored messages keep ``blocks`` exactly as sent (``[]`` when none): Slack adds
  ``block_id``s and turns a text-only message into a ``rich_text`` block, the fake doesn't;
- ``chat.update`` keeps the old blocks when ``blocks`` is omitted and clears them on
  ``blocks=[]`` (documented); it also keeps the old text when ``text`` is omitted (not
  documented), and adds ``edited`` only when the text changes (block-only edits show none);
- ``thread_ts`` is not checked: a reply is filed under whatever thread_ts was sent, so a
  reply to a reply shows up under ``slack.thread(channel, reply_ts)``, not the parent's;
- every channel exists; ``conversations.info`` makes up a public channel the bot is in;
- trigger_ids are not checked beyond being present (Slack: valid for 3 s, used once);
- response_urls accept any number of POSTs (Slack: 5 within 30 minutes) and answer
  ``ok`` as text; they don't change ``messages`` (no replace_original emulation);
- ``rate_limit_per_channel`` is a token bucket per channel for ``chat.postMessage`` only;
  only accepted posts use a token, and Retry-After is the wait rounded up, at least 1;
- ``conversations.history`` lists a channel's messages newest first, leaving out thread
  replies that were not broadcast; ``metadata`` is returned only with
  ``include_all_metadata``; the cursor is an opaque offset;
- ``answer_late`` carries a call out and then holds the answer back, which is what a client
  sees when Slack accepted a message but the response was lost (a timeout or a crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web
from multidict import CIMultiDict

from tests.fakes._loopback import LoopbackFake

Params = dict[str, Any]

_FIRST_TS_MICROS = 1_700_000_000_000_100
_TS_STEP_MICROS = 100
_MAX_MESSAGE_BLOCKS = 50
# Arguments Slack takes as JSON-encoded strings, and the error for one that isn't JSON.
_JSON_ARGS = {
    "blocks": "invalid_blocks_format",
    "attachments": "invalid_attachments",
    "metadata": "invalid_metadata_format",
    "view": "invalid_arguments",
}
_SERVER_ERRORS = {500: "internal_error", 503: "service_unavailable"}
_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


@dataclass(frozen=True, slots=True)
class Call:
    """One Web API request as the fake received it (params merged from query and body)."""

    method: str
    params: Params
    headers: CIMultiDict[str]
    http_method: str = "POST"
    content_type: str = ""


@dataclass(slots=True)
class _Failure:
    method: str
    remaining: int | None
    status: int
    error: str
    retry_after: int | None

    def take(self, method: str) -> bool:
        if self.method not in ("*", method):
            return False
        if self.remaining is not None:
            if self.remaining <= 0:
                return False
            self.remaining -= 1
        return True


class _ApiError(Exception):
    """Raised by a method handler to answer HTTP 200 ``{"ok": false, "error": ...}``."""

    def __init__(self, error: str, *messages: str) -> None:
        super().__init__(error)
        self.error = error
        self.messages = messages


class _RateLimited(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after)
        self.retry_after = retry_after


class FakeSlack(LoopbackFake):
    """A local Slack Web API server holding messages, views, users and user groups."""

    def __init__(
        self,
        *,
        bot_token: str = "xoxb-test-token",
        team_id: str = "T0TEST",
        bot_user_id: str = "U0BOT",
        bot_id: str = "B0BOT",
        app_id: str = "A0APP",
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(host=host, port=port)
        self._root = ""
        self.bot_token = bot_token
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.app_id = app_id
        self.calls: list[Call] = []
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}
        self.ephemerals: list[Params] = []
        self.open_views: dict[str, dict[str, Any]] = {}  # view id -> view, modals and homes
        self.home_tabs: dict[str, dict[str, Any]] = {}  # user id -> published home view
        self.users: dict[str, dict[str, Any]] = {}
        self.user_groups: dict[str, list[str]] = {}
        self._method_tokens: dict[str, str] = {}  # methods served with another token
        self.ratelimited_count = 0
        self._clock = clock
        self._wall_clock = wall_clock
        self._ts_micros = _FIRST_TS_MICROS - _TS_STEP_MICROS
        self._view_count = 0
        self._threads: dict[tuple[str, str], list[str]] = {}
        self._view_log: list[tuple[str, Params]] = []
        self._response_log: list[tuple[str, Any]] = []
        self._failures: list[_Failure] = []
        self._late: list[_Failure] = []  # reuses the method/remaining matching; status unused
        self._late_seconds: dict[int, float] = {}
        self._post_rate: float | None = None
        self._post_burst = 1
        self._buckets: dict[str, tuple[float, float]] = {}  # channel -> (tokens, when)
        self._methods: dict[str, Callable[[Params], Params]] = {
            "auth.test": self._auth_test,
            "bots.info": self._bots_info,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "views.open": self._views_open,
            "views.push": self._views_push,
            "views.update": self._views_update,
            "views.publish": self._views_publish,
            "usergroups.users.list": self._usergroups_users_list,
            "users.info": self._users_info,
            "conversations.info": self._conversations_info,
            "conversations.history": self._conversations_history,
        }

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/{method}", self._api, allow_head=False)
        app.router.add_post("/api/{method}", self._api)
        app.router.add_post("/response/{n}", self._response)
        return app

    def url_for(self, root: str) -> str:
        self._root = root
        return f"{root}/api/"

    # -- state and inspection ----------------------------------------------------------

    def add_user(
        self,
        user_id: str,
        *,
        name: str | None = None,
        real_name: str | None = None,
        tz: str = "UTC",
        email: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Add a user for users.info; tz_offset and tz_label are derived from tz (now)."""
        name = name or user_id.lower()
        real_name = real_name or name
        now = datetime.now(ZoneInfo(tz))
        offset = now.utcoffset()
        profile: dict[str, Any] = {"real_name": real_name, "display_name": name}
        if email is not None:
            profile["email"] = email
        user = {
            "id": user_id,
            "team_id": self.team_id,
            "name": name,
            "real_name": real_name,
            "deleted": False,
            "is_bot": False,
            "tz": tz,
            "tz_label": now.tzname(),
            "tz_offset": int(offset.total_seconds()) if offset is not None else 0,
            "profile": profile,
            **extra,
        }
        self.users[user_id] = user
        return user

    def add_user_group(self, usergroup_id: str, users: list[str]) -> None:
        """Add (or replace) a user group for usergroups.users.list."""
        self.user_groups[usergroup_id] = list(users)

    def fail(
        self,
        method: str,
        *,
        error: str | None = None,
        status: int = 200,
        retry_after: int | None = None,
        times: int | None = 1,
    ) -> None:
        """Answer the next `times` calls to `method` ("*": any; times None: all) with an error.

        status 200 needs `error` and answers ``ok: false``; 429 defaults to error
        "ratelimited" and Retry-After 1; 5xx defaults to Slack's internal_error /
        service_unavailable. Rules are tried in the order they were added.
        """
        if error is None:
            if status == 200:
                raise ValueError("an ok:false failure needs an error code")
            error = "ratelimited" if status == 429 else _SERVER_ERRORS.get(status, "fatal_error")
        if status == 429 and retry_after is None:
            retry_after = 1
        self._failures.append(_Failure(method, times, status, error, retry_after))

    def recover(self) -> None:
        """Lift every failure injected with ``fail``: calls succeed again."""
        self._failures.clear()

    def answer_late(self, method: str, seconds: float, *, times: int | None = 1) -> None:
        """Carry out the next `times` calls to `method`, then wait `seconds` before answering."""
        rule = _Failure(method, times, 200, "", None)
        self._late.append(rule)
        self._late_seconds[id(rule)] = seconds

    def rate_limit_per_channel(self, per_second: float = 1.0, *, burst: int = 1) -> None:
        """Limit chat.postMessage to `per_second` per channel, allowing `burst` at once."""
        if per_second <= 0 or burst < 1:
            raise ValueError("per_second must be positive and burst at least 1")
        self._post_rate = per_second
        self._post_burst = burst
        self._buckets.clear()

    def calls_to(self, method: str) -> list[Call]:
        """Return the recorded calls to one Web API method, e.g. "chat.postMessage"."""
        return [c for c in self.calls if c.method == method]

    def thread(self, channel: str, ts: str) -> list[dict[str, Any]]:
        """Return the replies filed under thread_ts `ts` in `channel`, oldest first."""
        return [self.messages[(channel, t)] for t in self._threads.get((channel, ts), [])]

    def response_url(self, n: int | str = 1) -> str:
        """Return a response_url on the fake; POSTs to it land in `responses`."""
        return f"{self._root}/response/{n}"

    @property
    def responses(self) -> list[Any]:
        """JSON bodies POSTed to any response_url, in arrival order."""
        return [body for _, body in self._response_log]

    def responses_to(self, n: int | str) -> list[Any]:
        """JSON bodies POSTed to response_url(n)."""
        return [body for key, body in self._response_log if key == str(n)]

    @property
    def views(self) -> list[Params]:
        """Accepted views.open/push/update/publish arguments, in arrival order."""
        return [params for _, params in self._view_log]

    @property
    def views_opened(self) -> list[Params]:
        """Accepted views.open arguments, in arrival order."""
        return self._views_by("views.open")

    @property
    def views_pushed(self) -> list[Params]:
        """Accepted views.push arguments, in arrival order."""
        return self._views_by("views.push")

    @property
    def views_updated(self) -> list[Params]:
        """Accepted views.update arguments, in arrival order."""
        return self._views_by("views.update")

    @property
    def views_published(self) -> list[Params]:
        """Accepted views.publish arguments, in arrival order."""
        return self._views_by("views.publish")

    def _views_by(self, method: str) -> list[Params]:
        return [params for m, params in self._view_log if m == method]

    # -- methods served by other fakes -------------------------------------------------

    def serve_method(self, method: str, handler: Callable[[Params], Params], *, token: str) -> None:
        """Answer `method` with `handler`, accepting only ``Authorization: Bearer <token>``.

        The handler gets the merged params and returns the answer's fields besides
        ``"ok": true``; calls are recorded, and ``fail`` applies, as for built-in methods.
        """
        self._methods[method] = handler
        self._method_tokens[method] = token

    # -- plumbing ----------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        problem: _ApiError | None = None
        try:
            params = await _read_params(request)
        except _ApiError as exc:
            params, problem = dict(request.query), exc
        else:
            try:
                params = _decode_json_args(params)
            except _ApiError as exc:
                problem = exc
        self.calls.append(
            Call(
                method,
                params,
                CIMultiDict(request.headers),
                request.method,
                request.content_type if "Content-Type" in request.headers else "",
            )
        )
        for failure in self._failures:
            if failure.take(method):
                return self._failure_response(failure)
        try:
            handler = self._methods.get(method)
            if handler is None:
                raise _ApiError("unknown_method")
            self._check_auth(request)
            if problem is not None:
                raise problem
            body = handler(params)
            await self._hold_answer(method)
        except _ApiError as exc:
            answer: Params = {"ok": False, "error": exc.error}
            if exc.messages:
                answer["response_metadata"] = {"messages": list(exc.messages)}
            return web.json_response(answer)
        except _RateLimited as exc:
            return self._ratelimited(exc.retry_after)
        return web.json_response({"ok": True, **body})

    async def _response(self, request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except ValueError:
            return web.Response(status=400, text="invalid_payload")
        self._response_log.append((request.match_info["n"], body))
        return web.Response(text="ok")

    async def _hold_answer(self, method: str) -> None:
        for rule in self._late:
            if rule.take(method):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), self._late_seconds[id(rule)])
                return

    def _check_auth(self, request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        if not header:
            raise _ApiError("not_authed")
        token = self._method_tokens.get(request.match_info["method"], self.bot_token)
        if header != f"Bearer {token}":
            raise _ApiError("invalid_auth")

    def _failure_response(self, failure: _Failure) -> web.Response:
        if failure.status == 429:
            return self._ratelimited(failure.retry_after or 1, failure.error)
        headers = {}
        if failure.retry_after is not None:
            headers["Retry-After"] = str(failure.retry_after)
        body = {"ok": False, "error": failure.error}
        return web.json_response(body, status=failure.status, headers=headers)

    def _ratelimited(self, retry_after: int, error: str = "ratelimited") -> web.Response:
        self.ratelimited_count += 1
        headers = {"Retry-After": str(retry_after)}
        return web.json_response({"ok": False, "error": error}, status=429, headers=headers)

    def _take_post_slot(self, channel: str) -> None:
        """Use one of the channel's tokens, or raise _RateLimited with the wait."""
        if self._post_rate is None:
            return
        now = self._clock()
        tokens, then = self._buckets.get(channel, (float(self._post_burst), now))
        tokens = min(float(self._post_burst), tokens + (now - then) * self._post_rate)
        if tokens < 1 - 1e-9:  # tolerate float error when exactly one interval has passed
            self._buckets[channel] = (tokens, now)
            raise _RateLimited(max(1, math.ceil((1 - tokens) / self._post_rate)))
        self._buckets[channel] = (tokens - 1, now)

    def _next_ts(self) -> str:
        now = int(self._wall_clock() * 1_000_000)
        self._ts_micros = max(now, self._ts_micros + _TS_STEP_MICROS)
        seconds, micros = divmod(self._ts_micros, 1_000_000)
        return f"{seconds}.{micros:06d}"

    # -- methods -----------------------------------------------------------------------

    def _auth_test(self, params: Params) -> Params:
        return {
            "url": "https://reauthbot-test.slack.com/",
            "team": "reauthbot test",
            "user": "reauthbot",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _bots_info(self, params: Params) -> Params:
        bot_id = _required_argument(params, "bot")
        if bot_id != self.bot_id:
            raise _ApiError("bot_not_found")
        return {
            "bot": {
                "id": self.bot_id,
                "deleted": False,
                "name": "reauthbot",
                "app_id": self.app_id,
                "user_id": self.bot_user_id,
            }
        }

    def _chat_post_message(self, params: Params) -> Params:
        channel = _required(params, "channel", "channel_not_found")
        blocks = _message_blocks(params)
        text = params.get("text") or ""
        if not text and not blocks and not params.get("attachments"):
            raise _ApiError("no_text")
        self._take_post_slot(channel)
        ts = self._next_ts()
        message: dict[str, Any] = {
            "type": "message",
            "ts": ts,
            "text": text,
            "blocks": blocks or [],
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "team": self.team_id,
        }
        for key in ("attachments", "metadata"):
            if key in params:
                message[key] = params[key]
        thread_ts = params.get("thread_ts")
        if thread_ts:
            message["thread_ts"] = thread_ts
            if _flag(params.get("reply_broadcast")):
                message["subtype"] = "thread_broadcast"
            parent = self.messages.get((channel, thread_ts))
            if parent is not None:
                message["parent_user_id"] = parent["user"]
                replies = parent.setdefault("reply_users", [])
                if self.bot_user_id not in replies:
                    replies.append(self.bot_user_id)
                parent.update(
                    thread_ts=thread_ts,
                    reply_count=parent.get("reply_count", 0) + 1,
                    reply_users_count=len(replies),
                    latest_reply=ts,
                )
            self._threads.setdefault((channel, thread_ts), []).append(ts)
        self.messages[(channel, ts)] = message
        return {"channel": channel, "ts": ts, "message": copy.deepcopy(message)}

    def _chat_update(self, params: Params) -> Params:
        channel = _required(params, "channel", "channel_not_found")
        ts = _required(params, "ts", "message_not_found")
        message = self.messages.get((channel, ts))
        if message is None:
            raise _ApiError("message_not_found")
        if not any(key in params for key in ("text", "blocks", "attachments")):
            raise _ApiError("no_text")
        blocks = _message_blocks(params)
        if "text" in params and params["text"] != message["text"]:
            message["text"] = params["text"]
            message["edited"] = {"user": self.bot_user_id, "ts": self._next_ts()}
        if blocks is not None:
            message["blocks"] = blocks
        if "attachments" in params:
            message["attachments"] = params["attachments"]
        body = {"channel": channel, "ts": ts, "text": message["text"]}
        return {**body, "message": copy.deepcopy(message)}

    def _chat_post_ephemeral(self, params: Params) -> Params:
        _required(params, "channel", "channel_not_found")
        _required(params, "user", "user_not_found")
        blocks = _message_blocks(params)
        if not params.get("text") and not blocks and not params.get("attachments"):
            raise _ApiError("no_text")
        self.ephemerals.append(params)
        return {"message_ts": self._next_ts()}

    def _views_open(self, params: Params, method: str = "views.open") -> Params:
        _required_argument(params, "trigger_id")
        view = self._create_view(_view_argument(params, "modal"))
        self._view_log.append((method, params))
        return {"view": copy.deepcopy(view)}

    def _views_push(self, params: Params) -> Params:
        # The fake keeps no view stack: a pushed modal is its own root.
        return self._views_open(params, "views.push")

    def _views_update(self, params: Params) -> Params:
        new = _view_argument(params, None)
        view_id, external_id = params.get("view_id"), params.get("external_id")
        if view_id:
            current = self.open_views.get(view_id)
        elif external_id:
            found = [v for v in self.open_views.values() if v["external_id"] == external_id]
            current = found[0] if found else None
        else:
            raise _ApiError(
                "invalid_arguments", "[ERROR] either view_id or external_id is required"
            )
        if current is None:
            raise _ApiError("not_found")
        self._check_hash(current, params)
        keep = {k: current[k] for k in ("id", "team_id", "root_view_id", "app_id", "bot_id")}
        current.clear()
        current.update(self._view_defaults(new), **keep, hash=self._view_hash())
        self._view_log.append(("views.update", params))
        return {"view": copy.deepcopy(current)}

    def _views_publish(self, params: Params) -> Params:
        user_id = _required_argument(params, "user_id")
        new = _view_argument(params, "home")
        current = self.home_tabs.get(user_id)
        if current is None:
            view = self._create_view(new)
        else:
            self._check_hash(current, params)
            view = {**self._view_defaults(new), "id": current["id"], "hash": self._view_hash()}
            view["root_view_id"] = current["id"]
            self.open_views[view["id"]] = view
        self.home_tabs[user_id] = view
        self._view_log.append(("views.publish", params))
        return {"view": copy.deepcopy(view)}

    def _usergroups_users_list(self, params: Params) -> Params:
        group = self.user_groups.get(params.get("usergroup", ""))
        if group is None:
            raise _ApiError("no_such_subteam")
        return {"users": list(group)}

    def _users_info(self, params: Params) -> Params:
        user = self.users.get(params.get("user", ""))
        if user is None:
            raise _ApiError("user_not_found")
        return {"user": copy.deepcopy(user)}

    def _conversations_info(self, params: Params) -> Params:
        channel = _required(params, "channel", "channel_not_found")
        return {
            "channel": {
                "id": channel,
                "name": channel.lower(),
                "is_channel": True,
                "is_private": False,
                "is_archived": False,
                "is_member": True,
                "created": _FIRST_TS_MICROS // 1_000_000,
            }
        }

    def _conversations_history(self, params: Params) -> Params:
        channel = _required(params, "channel", "channel_not_found")
        inclusive = _flag(params.get("inclusive"))
        oldest = _number(params.get("oldest") or 0, "invalid_ts_oldest")
        latest = _number(params.get("latest") or math.inf, "invalid_ts_latest")
        limit = min(max(int(_number(params.get("limit") or 100, "invalid_limit")), 1), 999)
        offset = int(_number(params.get("cursor") or 0, "invalid_cursor"))

        def within(ts: float) -> bool:
            if inclusive:
                return oldest <= ts <= latest
            return oldest < ts < latest

        listed = [
            message
            for (where, ts), message in self.messages.items()
            if where == channel
            and within(float(ts))
            and (
                message.get("thread_ts") in (None, ts)
                or message.get("subtype") == "thread_broadcast"
            )
        ]
        listed.sort(key=lambda message: float(message["ts"]), reverse=True)
        page = listed[offset : offset + limit]
        with_metadata = _flag(params.get("include_all_metadata"))
        shown = [
            {k: v for k, v in copy.deepcopy(m).items() if with_metadata or k != "metadata"}
            for m in page
        ]
        has_more = offset + limit < len(listed)
        return {
            "messages": shown,
            "has_more": has_more,
            "pin_count": 0,
            "response_metadata": {"next_cursor": str(offset + limit) if has_more else ""},
        }

    # -- views -------------------------------------------------------------------------

    def _create_view(self, given: dict[str, Any]) -> dict[str, Any]:
        external_id = given.get("external_id") or ""
        if external_id and any(v["external_id"] == external_id for v in self.open_views.values()):
            raise _ApiError("duplicate_external_id")
        self._view_count += 1
        view_id = f"V{self._view_count:08d}"
        view = {
            **self._view_defaults(given),
            "id": view_id,
            "root_view_id": view_id,
            "hash": self._view_hash(),
        }
        self.open_views[view_id] = view
        return view

    def _view_defaults(self, given: dict[str, Any]) -> dict[str, Any]:
        return {
            "team_id": self.team_id,
            "blocks": [],
            "private_metadata": "",
            "callback_id": "",
            "external_id": "",
            "state": {"values": {}},
            "clear_on_close": False,
            "notify_on_close": False,
            "previous_view_id": None,
            "app_id": self.app_id,
            "bot_id": self.bot_id,
            **copy.deepcopy(given),
        }

    def _view_hash(self) -> str:
        self._view_count += 1
        return f"{_FIRST_TS_MICROS // 1_000_000}.{self._view_count:08x}"

    @staticmethod
    def _check_hash(current: dict[str, Any], params: Params) -> None:
        given = params.get("hash")
        if given and given != current["hash"]:
            raise _ApiError("hash_conflict")


async def _read_params(request: web.Request) -> Params:
    """Merge the query string and the body (JSON object or form) into one dict."""
    params: Params = dict(request.query)
    raw = await request.read()
    if not raw:
        return params
    if "Content-Type" not in request.headers:
        raise _ApiError("missing_post_type")
    if request.content_type == "application/json":
        try:
            body = json.loads(raw)
        except ValueError:
            raise _ApiError("invalid_json") from None
        if not isinstance(body, dict):
            raise _ApiError("invalid_json")
        params.update(body)
    elif request.content_type in _FORM_TYPES:
        form = await request.post()
        params.update({k: v for k, v in form.items() if isinstance(v, str)})
    else:
        raise _ApiError("invalid_post_type")
    return params


def _decode_json_args(params: Params) -> Params:
    """Return params with JSON-encoded string arguments (blocks, view...) decoded."""
    decoded = dict(params)
    for name, error in _JSON_ARGS.items():
        value = decoded.get(name)
        if isinstance(value, str):
            try:
                decoded[name] = json.loads(value)
            except ValueError:
                raise _ApiError(error) from None
    return decoded


def _required(params: Params, name: str, error: str) -> str:
    value = params.get(name)
    if not value or not isinstance(value, str):
        raise _ApiError(error)
    return value


def _required_argument(params: Params, name: str) -> str:
    value = params.get(name)
    if not value or not isinstance(value, str):
        raise _ApiError("invalid_arguments", f"[ERROR] missing required field: {name}")
    return value


def _message_blocks(params: Params) -> list[dict[str, Any]] | None:
    """Return the message's blocks (None when the argument is absent), checked for shape."""
    if "blocks" not in params:
        return None
    blocks = params["blocks"]
    if not isinstance(blocks, list) or len(blocks) > _MAX_MESSAGE_BLOCKS:
        raise _ApiError("invalid_blocks")
    if not all(isinstance(b, dict) and isinstance(b.get("type"), str) for b in blocks):
        raise _ApiError("invalid_blocks")
    return blocks


def _view_argument(params: Params, kind: str | None) -> dict[str, Any]:
    """Return the view argument, checked to be an object of type `kind` (None: any)."""
    view = params.get("view")
    if not isinstance(view, dict):
        raise _ApiError("invalid_arguments", "[ERROR] missing required field: view")
    if kind is not None and view.get("type") != kind:
        raise _ApiError("invalid_arguments", f"[ERROR] view.type must be {kind!r}")
    return view


def _number(value: Any, error: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _ApiError(error) from None


def _flag(value: Any) -> bool:
    """Read a boolean argument: JSON true, or "1"/"true" from a form or query string."""
    return value is True or str(value).lower() in ("1", "true")
