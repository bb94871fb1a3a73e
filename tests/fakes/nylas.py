"""A fake Nylas API (v2 accounts, v3 grants) served over real HTTP, for tests and benchmarks.

    async with FakeNylas(client_id="cid", client_secret="csecret", api_key="nyk_test") as fake:
        fake.add_grant(id="g1", email="ann@example.com", grant_status="invalid")
        ...  # point a client at fake.url, then look at fake.calls and fake.grants

Auth is checked like the real API: Basic with the client secret as username and an empty
password on ``/a/{client_id}/...``, ``Bearer <api key>`` on ``/v3/...``; anything else gets
401 in that version's error shape. Where Nylas does not document a behaviour, the fake
picks one and says so here:

- the secret is only valid for its own application, so a wrong client_id in the path is 401;
- v2 lists default to limit 100, capped at 1000; v3 lists default to 10, capped at 200;
  a capped v3 list echoes the limit it applied, like Nylas does;
- lists are in insertion order (Nylas sorts grants by created_at, newest first);
- v2 DELETE answers ``{"success": true}``;
- query parameters the fake does not implement (filters, sorting) are refused with 400
  rather than silently ignored;
- ``POST /v3/grants/{id}/messages/send`` sends from any grant the fake holds, whatever its
  grant_status; a body whose ``to`` is not a non-empty list of objects with an ``email`` is
  400, and a sent message is kept in ``sent_messages`` (the answer's ``date`` is now);
- webhook lists (``GET /v3/webhooks``, ``GET /a/{client_id}/webhooks``) come whole, in
  insertion order, with no pagination; ``webhooks`` and ``v2_webhooks`` hold the rows as
  sent, so a test may put a malformed row among them.

Run standalone for benchmarks: ``python -m tests.fakes.nylas --port 0 --grants 100000``
prints its URL on stdout and serves until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import re
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from tests.fakes._loopback import LoopbackFake

_JSON_BODY = web.RequestKey("json_body", object)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_V2_LIMITS = (100, 1000)  # (default, cap)
_V3_LIMITS = (10, 200)
_ERROR_TYPES = {400: "invalid_request_error", 401: "unauthorized", 404: "not_found_error"}


@dataclass(frozen=True, slots=True)
class Call:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    json: Any
    at: float = field(default_factory=time.monotonic)  # when it arrived, to check pacing


@dataclass(slots=True)
class _Rule:
    method: str
    path: re.Pattern[str]
    remaining: int | None
    status: int = 0
    headers: dict[str, str] | None = None
    body: Any = None
    seconds: float = 0.0

    def take(self, method: str, path: str) -> bool:
        if self.method not in ("*", method) or not self.path.fullmatch(path):
            return False
        if self.remaining is not None:
            if self.remaining <= 0:
                return False
            self.remaining -= 1
        return True


def _error(
    path: str, status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """Build an error response in the shape of the API version the path belongs to."""
    error_type = _ERROR_TYPES.get(status, "api_error")
    if path.startswith("/v3/"):
        if status == 429:
            error_type = "nylas_rate_limit_exceeded"
        body: dict[str, Any] = {
            "request_id": str(uuid.uuid4()),
            "error": {"type": error_type, "message": message},
        }
    else:
        body = {"type": error_type, "message": message}
    return web.json_response(body, status=status, headers=headers)


class FakeNylas(LoopbackFake):
    """A local Nylas API server holding v2 accounts and v3 grants in memory."""

    def __init__(
        self,
        *,
        client_id: str = "cid",
        client_secret: str = "csecret",
        api_key: str = "nyk_test",
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        self.client_id = client_id
        self.client_secret = client_secret
        self.api_key = api_key
        self.calls: list[Call] = []
        self.revocations: list[tuple[str, str | None]] = []
        # Messages sent through a grant: id, grant_id, to (emails), subject, body.
        self.sent_messages: list[dict[str, Any]] = []
        self.v2_accounts: dict[str, dict[str, Any]] = {}
        self.grants: dict[str, dict[str, Any]] = {}
        # Lists keep the order for offset pagination; slicing them is O(page).
        self._v2_order: list[str] = []
        self._grant_order: list[str] = []
        # Webhook destinations (v3) and webhooks (v2), as the list endpoints send them.
        self.webhooks: list[Any] = []
        self.v2_webhooks: list[Any] = []
        self._upgrade_results: dict[str, str] = {}
        self._failures: list[_Rule] = []
        self._delays: list[_Rule] = []

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/a/{client_id}/accounts", self._v2_list)
        app.router.add_get("/a/{client_id}/accounts/{id}", self._v2_get)
        app.router.add_delete("/a/{client_id}/accounts/{id}", self._v2_delete)
        app.router.add_post("/a/{client_id}/accounts/{id}/{action}", self._v2_action)
        app.router.add_get("/a/{client_id}/webhooks", self._v2_webhooks)
        app.router.add_get("/v3/webhooks", self._v3_webhooks)
        app.router.add_get("/v3/grants", self._v3_list)
        app.router.add_get("/v3/grants/{id}", self._v3_get)
        app.router.add_delete("/v3/grants/{id}", self._v3_delete)
        app.router.add_post("/v3/grants/{id}/messages/send", self._v3_send)
        return app

    # -- state -------------------------------------------------------------------------

    def add_v2_account(
        self,
        *,
        id: str,
        email: str,
        provider: str = "gmail",
        sync_state: str = "running",
        billing_state: str = "paid",
        upgrade_result: str = "running",
        **extra: Any,
    ) -> dict[str, Any]:
        """Add a v2 account; upgrade_result is the sync_state an upgrade will leave it in."""
        if id in self.v2_accounts:
            raise ValueError(f"v2 account {id!r} already exists in the fake")
        account = {
            "id": id,
            "account_id": id,
            "billing_state": billing_state,
            "email": email,
            "provider": provider,
            "sync_state": sync_state,
            "trial": False,
            "authentication_type": "password",
            **extra,
        }
        self.v2_accounts[id] = account
        self._v2_order.append(id)
        self._upgrade_results[id] = upgrade_result
        return account

    def add_grant(
        self,
        *,
        id: str,
        email: str,
        provider: str = "google",
        grant_status: str = "valid",
        created_at: int | None = None,
        updated_at: int | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Add a v3 grant; timestamps default to now."""
        if id in self.grants:
            raise ValueError(f"grant {id!r} already exists in the fake")
        now = int(time.time())
        grant = {
            "id": id,
            "provider": provider,
            "grant_status": grant_status,
            "email": email,
            "scope": ["https://www.googleapis.com/auth/gmail.readonly"],
            "created_at": now if created_at is None else created_at,
            "updated_at": now if updated_at is None else updated_at,
            **extra,
        }
        self.grants[id] = grant
        self._grant_order.append(id)
        return grant

    def add_many_v2(
        self, n: int, *, id_prefix: str = "acct-", sync_states: Sequence[str] = ("running",)
    ) -> None:
        """Add n v2 accounts named id_prefix + index, cycling through sync_states."""
        for i in range(n):
            self.add_v2_account(
                id=f"{id_prefix}{i}",
                email=f"user{i}@example.com",
                sync_state=sync_states[i % len(sync_states)],
            )

    def add_many_grants(
        self, n: int, *, id_prefix: str = "grant-", grant_statuses: Sequence[str] = ("valid",)
    ) -> None:
        """Add n v3 grants named id_prefix + index, cycling through grant_statuses."""
        now = int(time.time())
        for i in range(n):
            status = grant_statuses[i % len(grant_statuses)]
            self.add_grant(
                id=f"{id_prefix}{i}",
                email=f"user{i}@example.com",
                grant_status=status,
                created_at=now,
                updated_at=now,
            )

    def set_sync_state(self, id: str, state: str) -> None:
        """Change a v2 account's sync_state, as Nylas would on its own."""
        self.v2_accounts[id]["sync_state"] = state

    def set_grant_status(self, id: str, status: str) -> None:
        """Change a grant's grant_status (and updated_at), as Nylas would on its own."""
        self.grants[id].update(grant_status=status, updated_at=int(time.time()))

    def add_webhook(
        self,
        *,
        id: str,
        webhook_url: str = "https://reauthbot.example.com/nylas/webhook",
        trigger_types: Sequence[str] = ("grant.created", "grant.updated", "grant.expired"),
        status: str = "active",
        status_updated_at: int | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Add a v3 webhook destination; timestamps default to now."""
        now = int(time.time())
        destination = {
            "id": id,
            "description": "reauthbot",
            "trigger_types": list(trigger_types),
            "webhook_url": webhook_url,
            "status": status,
            "notification_email_addresses": ["ops@example.com"],
            "status_updated_at": now if status_updated_at is None else status_updated_at,
            "created_at": now,
            "updated_at": now,
            **extra,
        }
        self.webhooks.append(destination)
        return destination

    def add_v2_webhook(
        self,
        *,
        id: str,
        callback_url: str = "https://reauthbot.example.com/nylas/webhook",
        triggers: Sequence[str] = ("account.invalid", "account.running", "account.stopped"),
        state: str = "active",
        **extra: Any,
    ) -> dict[str, Any]:
        """Add a v2 webhook."""
        webhook = {
            "id": id,
            "application_id": self.client_id,
            "callback_url": callback_url,
            "state": state,
            "triggers": list(triggers),
            "version": "2.0",
            **extra,
        }
        self.v2_webhooks.append(webhook)
        return webhook

    def set_webhook_status(self, id: str, status: str, *, at: int | None = None) -> None:
        """Change a v3 destination's status (and status_updated_at), as Nylas would."""
        for row in self.webhooks:
            if isinstance(row, dict) and row.get("id") == id:
                row.update(status=status, status_updated_at=int(time.time()) if at is None else at)
                return
        raise KeyError(id)

    def set_v2_webhook_state(self, id: str, state: str) -> None:
        """Change a v2 webhook's state, as Nylas would."""
        for row in self.v2_webhooks:
            if isinstance(row, dict) and row.get("id") == id:
                row["state"] = state
                return
        raise KeyError(id)

    def fail(
        self,
        method: str,
        path_regex: str,
        status: int = 503,
        times: int | None = 1,
        headers: dict[str, str] | None = None,
        body: Any = None,
    ) -> None:
        """Answer the next `times` matching requests (None: all) with `status`.

        Injected failures come before the auth check, like a proxy in front of Nylas.
        method may be "*"; path_regex must match the whole path. body defaults to the API's
        error shape; a dict or list is sent as JSON, a str as text.
        """
        self._failures.append(
            _Rule(method, re.compile(path_regex), times, status=status, headers=headers, body=body)
        )

    def recover(self) -> None:
        """Lift every failure injected with ``fail``: requests are answered again."""
        self._failures.clear()

    def delay(self, path_regex: str, seconds: float, *, times: int | None = None) -> None:
        """Hold matching requests for `seconds` before handling them (None: every time)."""
        self._delays.append(_Rule("*", re.compile(path_regex), times, seconds=seconds))

    def calls_to(self, method: str, path_regex: str) -> list[Call]:
        """Return the recorded calls whose method and whole path match."""
        pattern = re.compile(path_regex)
        return [c for c in self.calls if c.method == method and pattern.fullmatch(c.path)]

    # -- plumbing ----------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        raw = await request.read()
        payload: Any = None
        if raw:
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode("utf-8", "replace")
        path = request.path
        request[_JSON_BODY] = payload
        self.calls.append(
            Call(request.method, path, dict(request.query), CIMultiDict(request.headers), payload)
        )
        for rule in self._delays:
            if rule.take(request.method, path):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), rule.seconds)
        for rule in self._failures:
            if rule.take(request.method, path):
                return self._failure_response(path, rule)
        refusal = self._check_auth(request)
        if refusal is not None:
            return refusal
        if isinstance(payload, str):
            return _error(path, 400, "The request body is not valid JSON.")
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return _error(path, 404, "Not found.")
        except web.HTTPMethodNotAllowed:
            return _error(path, 405, "Method not allowed.")

    def _failure_response(self, path: str, rule: _Rule) -> web.StreamResponse:
        if rule.body is None:
            return _error(path, rule.status, "Injected failure.", rule.headers)
        if isinstance(rule.body, str | bytes):
            return web.Response(body=rule.body, status=rule.status, headers=rule.headers)
        return web.json_response(rule.body, status=rule.status, headers=rule.headers)

    def _check_auth(self, request: web.Request) -> web.StreamResponse | None:
        path = request.path
        header = request.headers.get("Authorization", "")
        if path.startswith("/v3/"):
            if header != f"Bearer {self.api_key}":
                return _error(path, 401, "Unauthorized.")
            return None
        if path.startswith("/a/"):
            scheme, _, token = header.partition(" ")
            try:
                decoded = base64.b64decode(token, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            if scheme != "Basic" or decoded != f"{self.client_secret}:":
                return _error(path, 401, "Could not verify the application credentials.")
            if path.split("/")[2] != self.client_id:
                return _error(path, 401, "The credentials do not belong to this application.")
        return None

    @staticmethod
    def _page(request: web.Request, limits: tuple[int, int]) -> tuple[int, int] | web.Response:
        """Return (limit, offset) from the query, or a 400 response."""
        unknown = set(request.query) - {"limit", "offset"}
        if unknown:
            message = f"The fake does not implement query parameter {sorted(unknown)[0]!r}."
            return _error(request.path, 400, message)
        default, cap = limits
        try:
            limit = int(request.query.get("limit", default))
            offset = int(request.query.get("offset", 0))
        except ValueError:
            return _error(request.path, 400, "limit and offset must be integers.")
        if limit < 1 or offset < 0:
            return _error(request.path, 400, "limit must be positive and offset not negative.")
        return min(limit, cap), offset

    # -- v2 ----------------------------------------------------------------------------

    async def _v2_list(self, request: web.Request) -> web.StreamResponse:
        page = self._page(request, _V2_LIMITS)
        if isinstance(page, web.Response):
            return page
        limit, offset = page
        ids = self._v2_order[offset : offset + limit]
        return web.json_response([self.v2_accounts[i] for i in ids])

    def _v2_account(self, request: web.Request) -> dict[str, Any] | None:
        return self.v2_accounts.get(request.match_info["id"])

    async def _v2_get(self, request: web.Request) -> web.StreamResponse:
        account = self._v2_account(request)
        if account is None:
            return _error(request.path, 404, "Couldn't find account.")
        return web.json_response(account)

    async def _v2_delete(self, request: web.Request) -> web.StreamResponse:
        account = self._v2_account(request)
        if account is None:
            return _error(request.path, 404, "Couldn't find account.")
        del self.v2_accounts[account["id"]]
        self._v2_order.remove(account["id"])
        return web.json_response({"success": True})

    async def _v2_action(self, request: web.Request) -> web.StreamResponse:
        action = request.match_info["action"]
        if action not in ("downgrade", "upgrade", "revoke-all"):
            return _error(request.path, 404, "Not found.")
        account = self._v2_account(request)
        if account is None:
            return _error(request.path, 404, "Couldn't find account.")
        if action == "downgrade":
            account.update(billing_state="cancelled", sync_state="stopped")
        elif action == "upgrade":
            state = self._upgrade_results.get(account["id"], "running")
            account.update(billing_state="paid", sync_state=state)
        else:
            body = request.get(_JSON_BODY)
            keep = body.get("keep_access_token") if isinstance(body, dict) else None
            self.revocations.append((account["id"], keep))
        return web.json_response({"success": True})

    async def _v2_webhooks(self, request: web.Request) -> web.StreamResponse:
        refusal = self._no_query(request)
        return refusal or web.json_response(self.v2_webhooks)

    # -- v3 ----------------------------------------------------------------------------

    async def _v3_webhooks(self, request: web.Request) -> web.StreamResponse:
        refusal = self._no_query(request)
        body = {"request_id": str(uuid.uuid4()), "data": self.webhooks}
        return refusal or web.json_response(body)

    @staticmethod
    def _no_query(request: web.Request) -> web.Response | None:
        if request.query:
            message = f"The fake does not implement query parameter {sorted(request.query)[0]!r}."
            return _error(request.path, 400, message)
        return None

    async def _v3_list(self, request: web.Request) -> web.StreamResponse:
        page = self._page(request, _V3_LIMITS)
        if isinstance(page, web.Response):
            return page
        limit, offset = page
        data = [self.grants[i] for i in self._grant_order[offset : offset + limit]]
        body = {"request_id": str(uuid.uuid4()), "data": data, "limit": limit, "offset": offset}
        return web.json_response(body)

    async def _v3_get(self, request: web.Request) -> web.StreamResponse:
        grant = self.grants.get(request.match_info["id"])
        if grant is None:
            return _error(request.path, 404, "Grant not found.")
        return web.json_response({"request_id": str(uuid.uuid4()), "data": grant})

    async def _v3_delete(self, request: web.Request) -> web.StreamResponse:
        grant = self.grants.pop(request.match_info["id"], None)
        if grant is None:
            return _error(request.path, 404, "Grant not found.")
        self._grant_order.remove(grant["id"])
        return web.json_response({"request_id": str(uuid.uuid4())})

    async def _v3_send(self, request: web.Request) -> web.StreamResponse:
        grant_id = request.match_info["id"]
        if grant_id not in self.grants:
            return _error(request.path, 404, "Grant not found.")
        body = request.get(_JSON_BODY)
        to = body.get("to") if isinstance(body, dict) else None
        if (
            not isinstance(to, list)
            or not to
            or not all(isinstance(r, dict) and isinstance(r.get("email"), str) for r in to)
        ):
            return _error(request.path, 400, "to must be a non-empty list of recipients.")
        assert isinstance(body, dict)
        message = {
            "id": uuid.uuid4().hex,
            "grant_id": grant_id,
            "to": [r["email"] for r in to],
            "subject": body.get("subject"),
            "body": body.get("body"),
        }
        self.sent_messages.append(message)
        data = {
            "id": message["id"],
            "grant_id": grant_id,
            "subject": message["subject"],
            "to": to,
            "body": message["body"],
            "date": int(time.time()),
        }
        answer = {"request_id": str(uuid.uuid4()), "grant_id": grant_id, "data": data}
        return web.json_response(answer)


def _mix(good: str, bad: str, every: int) -> tuple[str, ...]:
    """Return states to cycle through so that every Nth one is bad (none when every is 0)."""
    return (good,) * (every - 1) + (bad,) if every > 0 else (good,)


async def _serve(args: argparse.Namespace) -> None:
    fake = FakeNylas(
        client_id=args.client_id,
        client_secret=args.client_secret,
        api_key=args.api_key,
        host=args.host,
        port=args.port,
    )
    fake.add_many_v2(
        args.v2_accounts, sync_states=_mix("running", "invalid-credentials", args.invalid_every)
    )
    fake.add_many_grants(args.grants, grant_statuses=_mix("valid", "invalid", args.invalid_every))
    async with fake:
        print(fake.url, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    """Serve a fake Nylas API until interrupted; print its URL on stdout first."""
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.nylas", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--grants", type=int, default=0, help="v3 grants to generate")
    parser.add_argument("--v2-accounts", type=int, default=0, help="v2 accounts to generate")
    parser.add_argument(
        "--invalid-every", type=int, default=0, help="make every Nth account invalid (0: none)"
    )
    parser.add_argument("--client-id", default="cid")
    parser.add_argument("--client-secret", default="csecret")
    parser.add_argument("--api-key", default="nyk_test")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
