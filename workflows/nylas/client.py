"""Async client for the parts of the Nylas API (v2 accounts, v3 grants) this bot uses."""

from __future__ import annotations

import asyncio
import base64
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import httpx

from storage.models import ApiVersion
from workflows.nylas.errors import (
    NylasBadResponse,
    NylasUnavailable,
    UnsupportedOperation,
    UnusableAccount,
    decipher_response,
    parse_delay,
    redact,
)

log = logging.getLogger("reauthbot.nylas")

API_VERSIONS = tuple(ApiVersion)

# Transient server failures worth another try; other 5xx (501, 505...) will not heal.
_RETRY_STATUSES = frozenset({500, 502, 503, 504})

# Downgrade, upgrade and revoke-all are POSTs that change state. After a timeout or a 5xx
# we cannot know whether Nylas acted, and replaying them is not harmless (a second
# revoke-all can kill a token issued in between), so a POST is retried only when Nylas
# surely did not process it: a 429, or a failure before the request was sent.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# A DELETE replayed after it did happen answers 404, which delete_account reports as
# NylasNotFound: the account is gone either way.
_REPLAYABLE_METHODS = frozenset({"GET", "DELETE"})

_V2_SCOPES = "email,calendar,contacts"

# The accounts table's column sizes: a longer value, a NUL or a lone surrogate would fail the
# whole page's transaction on PostgreSQL, so such a row is refused here, as webhooks are.
_TEXT_LIMITS = {
    "id": 255,
    "email": 320,
    "provider": 64,
    "sync_state": 64,
    "grant_status": 64,
    "billing_state": 32,
    "credential_id": 255,
}
# How much of an unusable id a log line shows.
_ID_SHOWN = 40


@dataclass(frozen=True, slots=True)
class RemoteAccount:
    """One v2 account or v3 grant as Nylas reports it, in a version-neutral shape."""

    id: str
    api_version: str
    email: str | None
    provider: str | None
    # v2: the account's sync_state as given; v3: the grant_status ("valid"/"invalid").
    sync_state: str | None
    # v2 only; None for v3.
    billing_state: str | None
    # v3 only (aware UTC); None for v2, whose management API has no timestamp.
    updated_at: datetime | None
    # v3 only: the connector credential the grant was authenticated through, when given.
    credential_id: str | None
    # Kept out of hash() so accounts can go in sets; equality still compares it.
    raw: dict[str, Any] = field(repr=False, hash=False)


@dataclass(frozen=True, slots=True)
class SkippedAccount:
    """A row of the account listing that could not be read, and why."""

    # The row's id as given when it is text (it may be long or hold odd characters): an
    # account listed under it still exists, whatever else is wrong with the row.
    id: str | None
    reason: str


def clip_id(value: str | None) -> str:
    """Show an id from Nylas in a log line: short, and escaped if it holds odd characters."""
    if value is None:
        return "(none)"
    shown = ascii(value[:_ID_SHOWN])[1:-1]
    return shown + "…" if len(value) > _ID_SHOWN else shown


def _unusable(data: dict[str, Any]) -> str | None:
    """Say what keeps a listed account out of the database, or None when nothing does."""
    for name, limit in _TEXT_LIMITS.items():
        value = data.get(name)
        if not isinstance(value, str):
            continue
        if len(value) > limit:
            return f"'{name}' is longer than {limit} characters ({len(value)})"
        # Printable: no NUL (PostgreSQL refuses it in text) and no lone surrogate (not UTF-8).
        if not value.isprintable():
            return f"'{name}' holds a control character or text that is not valid Unicode"
    return None


@dataclass(frozen=True, slots=True)
class WebhookDestination:
    """One webhook destination (v3) or webhook (v2) of the application, as Nylas reports it."""

    id: str
    api_version: str
    url: str
    # v3 status (active, failing, failed, pause) or v2 state (active, inactive, failed), as
    # given: a value Nylas adds later is kept, not mapped to one reauthbot knows.
    status: str
    triggers: tuple[str, ...]
    # v3 only: when the status last changed (aware UTC); None for v2 and when not given.
    status_updated_at: datetime | None = None
    description: str | None = None


class NylasClient:
    """Talk to one Nylas application, over API v2 or v3, through an injected httpx client."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        api_version: str,
        base_url: str,
        api_key: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        max_retries: int = 4,
        backoff_base: float = 0.5,
        max_backoff: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        page_size: int = 200,
    ) -> None:
        if api_version not in API_VERSIONS:
            raise ValueError(f"Nylas api_version must be 'v2' or 'v3', not {api_version!r}.")
        if api_version == ApiVersion.V2 and not (client_id and client_secret):
            raise ValueError("Nylas API v2 needs both client_id and client_secret.")
        if api_version == ApiVersion.V3 and not api_key:
            raise ValueError("Nylas API v3 needs an api_key.")
        if page_size < 1 or max_retries < 0:
            raise ValueError("Nylas page_size must be at least 1 and max_retries at least 0.")
        self._http = http
        self._api_version = api_version
        self._base_url = base_url.rstrip("/")
        self._client_id = client_id
        self._max_retries = max_retries
        self._backoff_base = backoff_base
        self._max_backoff = max_backoff
        self._sleep = sleep
        self._page_size = page_size
        if api_version == ApiVersion.V2:
            token = base64.b64encode(f"{client_secret}:".encode()).decode("ascii")
            self._headers = {"Authorization": f"Basic {token}", "Accept": "application/json"}
            self._secrets: tuple[str, ...] = tuple(s for s in (client_secret, token) if s)
        else:
            self._headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}
            self._secrets = tuple(s for s in (api_key,) if s)

    @property
    def api_version(self) -> str:
        """Return the Nylas API version this client speaks, "v2" or "v3"."""
        return self._api_version

    async def get_account(self, account_id: str) -> RemoteAccount:
        """Fetch one account (v2) or grant (v3)."""
        path = self._account_path(account_id)
        body = await self._request("GET", path)
        if self._api_version == ApiVersion.V3:
            body = body.get("data") if isinstance(body, dict) else None
        return self._parse_account(body, what=f"GET {path}")

    async def iter_accounts(
        self, *, skipped: Callable[[SkippedAccount], None] | None = None
    ) -> AsyncIterator[RemoteAccount]:
        """Yield every account or grant of the application, one page in memory at a time.

        A row that cannot be read or stored (no id, a 409-character email, a NUL) is logged,
        passed to ``skipped`` and left out: one bad row must not stop the listing.
        """
        path = (
            f"/a/{self._client_id}/accounts" if self._api_version == ApiVersion.V2 else "/v3/grants"
        )
        what = f"GET {path}"
        offset = 0
        while True:
            params = {"limit": self._page_size, "offset": offset}
            body = await self._request("GET", path, params=params)
            items, limit = self._page_items(body, what=what)
            for item in items:
                try:
                    remote = self._parse_account(item, what=what)
                except UnusableAccount as exc:
                    row_id = item.get("id") if isinstance(item, dict) else None
                    bad = SkippedAccount(
                        id=row_id if isinstance(row_id, str) else None, reason=exc.reason
                    )
                    log.warning(
                        "skipped an unusable account in the listing: %s",
                        bad.reason,
                        extra={"account": clip_id(bad.id), "path": path},
                    )
                    if skipped is not None:
                        skipped(bad)
                    continue
                yield remote
            # v3 echoes the limit it applied, so a short page is the last one. v2 documents no
            # maximum limit and may cap ours silently: only an empty page proves the end.
            if not items or (self._api_version == ApiVersion.V3 and len(items) < limit):
                return
            offset += len(items)

    async def verify_credentials(self) -> None:
        """Make one authorised call (list one account or grant); raise a NylasError if refused."""
        path = (
            f"/a/{self._client_id}/accounts" if self._api_version == ApiVersion.V2 else "/v3/grants"
        )
        body = await self._request("GET", path, params={"limit": 1, "offset": 0})
        self._page_items(body, what=f"GET {path}")

    async def list_webhook_destinations(self) -> list[WebhookDestination]:
        """List the application's webhook destinations, skipping (and logging) malformed ones."""
        if self._api_version == ApiVersion.V2:
            path = f"/a/{self._client_id}/webhooks"
            rows = await self._request("GET", path)
            if not isinstance(rows, list):
                raise NylasBadResponse(f"Nylas answered GET {path} without a JSON list.")
        else:
            path = "/v3/webhooks"
            body = await self._request("GET", path)
            rows = body.get("data") if isinstance(body, dict) else None
            if not isinstance(rows, list):
                raise NylasBadResponse(f"Nylas answered GET {path} without a list in 'data'.")
        found = []
        for index, row in enumerate(rows):
            try:
                found.append(self._parse_destination(row))
            except ValueError as exc:
                # One odd row must not hide the state of the others.
                log.warning(
                    "skipped a malformed webhook destination: %s",
                    exc,
                    extra={"path": path, "index": index},
                )
        return found

    async def downgrade(self, account_id: str) -> None:
        """Cancel a v2 account: Nylas stops syncing and billing it."""
        await self._account_action(account_id, "downgrade")

    async def upgrade(self, account_id: str) -> None:
        """Reactivate a cancelled v2 account: Nylas queues it for sync again."""
        await self._account_action(account_id, "upgrade")

    async def revoke_all(self, account_id: str, *, keep_access_token: str | None = None) -> None:
        """Revoke every access token of a v2 account, except keep_access_token if given."""
        body = None if keep_access_token is None else {"keep_access_token": keep_access_token}
        await self._account_action(account_id, "revoke-all", json=body)

    async def delete_account(self, account_id: str) -> None:
        """Delete a v2 account or v3 grant; a deleted v3 grant cannot be re-authenticated."""
        await self._request("DELETE", self._account_path(account_id))

    def reauth_url(
        self,
        *,
        email: str,
        redirect_uri: str,
        state: str | None = None,
        provider: str | None = None,
    ) -> str:
        """Build the hosted-auth URL that lets the owner of email re-authenticate."""
        if not self._client_id:
            raise ValueError("A Nylas client_id is needed to build a re-authentication URL.")
        params = {"client_id": self._client_id, "redirect_uri": redirect_uri}
        if self._api_version == ApiVersion.V3:
            path = "/v3/connect/auth"
            # With login_hint set to an existing grant's email, v3 re-authenticates that
            # grant instead of creating a new one.
            params |= {"response_type": "code", "login_hint": email, "access_type": "online"}
        else:
            path = "/oauth/authorize"
            params |= {"response_type": "code", "scopes": _V2_SCOPES, "login_hint": email}
        if state is not None:
            params["state"] = state
        if provider is not None:
            params["provider"] = provider
        return f"{self._base_url}{path}?{urlencode(params, quote_via=quote)}"

    def _account_path(self, account_id: str) -> str:
        escaped = quote(account_id, safe="")
        if self._api_version == ApiVersion.V2:
            return f"/a/{self._client_id}/accounts/{escaped}"
        return f"/v3/grants/{escaped}"

    async def _account_action(
        self, account_id: str, action: str, *, json: dict[str, Any] | None = None
    ) -> None:
        if self._api_version != ApiVersion.V2:
            raise UnsupportedOperation(
                f"Nylas API {self._api_version} has no {action}; it exists only in API v2."
            )
        path = f"{self._account_path(account_id)}/{action}"
        body = await self._request("POST", path, json=json)
        if isinstance(body, dict) and body.get("success") is False:
            raise NylasBadResponse(f"Nylas answered POST {path} with success=false.", status=200)

    def _page_items(self, body: Any, *, what: str) -> tuple[list[Any], int]:
        """Return a list page's items and the page size that means "more may follow"."""
        if self._api_version == ApiVersion.V2:
            if not isinstance(body, list):
                raise NylasBadResponse(f"Nylas answered {what} without a JSON list of accounts.")
            return body, self._page_size
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list):
            raise NylasBadResponse(f"Nylas answered {what} without a list of grants in 'data'.")
        # Nylas echoes the limit it applied; if it capped ours, a page of that size is full.
        echoed = body.get("limit")
        if isinstance(echoed, int) and not isinstance(echoed, bool) and echoed > 0:
            return data, min(echoed, self._page_size)
        return data, self._page_size

    def _parse_account(self, data: Any, *, what: str) -> RemoteAccount:
        """Read one account; raise UnusableAccount if it cannot be read or stored."""

        def bad(reason: str) -> UnusableAccount:
            return UnusableAccount(what, reason)

        if not isinstance(data, dict) or not isinstance(data.get("id"), str) or not data["id"]:
            raise bad("id is missing")
        for name in _TEXT_LIMITS:
            if not isinstance(data.get(name), str | None):
                raise bad(f"'{name}' is not text")
        reason = _unusable(data)
        if reason is not None:
            raise bad(reason)
        if self._api_version == ApiVersion.V2:
            return RemoteAccount(
                id=data["id"],
                api_version=ApiVersion.V2,
                email=data.get("email"),
                provider=data.get("provider"),
                sync_state=data.get("sync_state"),
                billing_state=data.get("billing_state"),
                updated_at=None,
                credential_id=None,
                raw=data,
            )
        updated = data.get("updated_at")
        if updated is not None and (isinstance(updated, bool) or not isinstance(updated, int)):
            raise bad("'updated_at' is not a number")
        try:
            updated_at = None if updated is None else datetime.fromtimestamp(updated, UTC)
        except (OverflowError, OSError, ValueError):
            raise bad("'updated_at' is out of range") from None
        return RemoteAccount(
            id=data["id"],
            api_version=ApiVersion.V3,
            email=data.get("email"),
            provider=data.get("provider"),
            sync_state=data.get("grant_status"),
            billing_state=None,
            updated_at=updated_at,
            credential_id=data.get("credential_id"),
            raw=data,
        )

    def _parse_destination(self, row: Any) -> WebhookDestination:
        """Read one row of a webhook list; ValueError says what is wrong with it."""
        if not isinstance(row, dict):
            raise ValueError("not a JSON object")
        v2 = self._api_version == ApiVersion.V2
        names = (
            ("callback_url", "state", "triggers")
            if v2
            else ("webhook_url", "status", "trigger_types")
        )
        url_name, status_name, triggers_name = names
        for name in ("id", url_name, status_name):
            if not isinstance(row.get(name), str) or not row[name]:
                raise ValueError(f"no text '{name}'")
        triggers = row.get(triggers_name)
        if not isinstance(triggers, list) or not all(isinstance(t, str) for t in triggers):
            raise ValueError(f"'{triggers_name}' is not a list of text")
        description = row.get("description")
        if not isinstance(description, str | None):
            raise ValueError("'description' is not text")
        changed = None if v2 else row.get("status_updated_at")
        if changed is not None and (isinstance(changed, bool) or not isinstance(changed, int)):
            raise ValueError("'status_updated_at' is not a number of seconds")
        try:
            since = None if changed is None else datetime.fromtimestamp(changed, UTC)
        except (OverflowError, OSError) as exc:
            raise ValueError("'status_updated_at' is out of range") from exc
        return WebhookDestination(
            id=row["id"],
            api_version=self._api_version,
            url=row[url_name],
            status=row[status_name],
            triggers=tuple(triggers),
            status_updated_at=since,
            description=description,
        )

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
    ) -> Any:
        """Send one API request with retries; return its JSON or raise a NylasError."""
        what = f"{method} {path}"
        replayable = method in _REPLAYABLE_METHODS
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    method, self._base_url + path, params=params, json=json, headers=self._headers
                )
            except httpx.TransportError as exc:
                if attempt < self._max_retries and (replayable or isinstance(exc, _NOT_SENT)):
                    await self._sleep(self._retry_delay(attempt, None))
                    attempt += 1
                    continue
                message = self._transport_message(what, exc, attempt + 1, replayable)
                raise NylasUnavailable(message) from exc
            status = response.status_code
            retryable = status == 429 or (replayable and status in _RETRY_STATUSES)
            if retryable and attempt < self._max_retries:
                await self._sleep(self._retry_delay(attempt, response))
                attempt += 1
                continue
            return decipher_response(
                status,
                response.headers,
                response.content,
                what=what,
                attempts=attempt + 1,
                secrets=self._secrets,
            )

    def _retry_delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            hinted = parse_delay(response.headers.get("Retry-After"))
            if hinted is None and self._api_version == ApiVersion.V2:
                # v2 documents X-RateLimit-Reset as seconds until the window resets.
                hinted = parse_delay(response.headers.get("X-RateLimit-Reset"))
            if hinted is not None:
                return min(hinted, self._max_backoff)
        # Up to 10% jitter keeps workers that failed together from retrying together.
        backoff = self._backoff_base * 2**attempt * (1 + random.random() / 10)
        return min(backoff, self._max_backoff)

    def _transport_message(
        self, what: str, exc: httpx.TransportError, attempts: int, replayable: bool
    ) -> str:
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, _NOT_SENT):
            if not replayable:
                return f"Nylas did not answer {what} in time, so it may or may not have acted."
            return f"Nylas did not answer {what} in time{tries}."
        detail = redact(str(exc), self._secrets) or type(exc).__name__
        return f"Could not reach Nylas for {what}{tries} ({detail})."
