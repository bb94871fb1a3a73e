"""Page on-call through the PagerDuty Events API v2, then acknowledge or resolve the page.

    pd = PagerDuty(http, routing_key=key)
    await pd.trigger("case-42", "ann@example.com must re-authenticate", source="reauthbot")
    await pd.resolve("case-42")

Every event is a JSON POST to ``{base_url}/v2/enqueue``; PagerDuty answers 202 once it has
accepted the event (the API is asynchronous: accepted, not yet applied). The dedup_key ties a
trigger, its acknowledge and its resolve to one alert, which makes sending an event twice
harmless: a second trigger for an open key joins the same alert, and an acknowledge or resolve
for an unknown or resolved key is dropped. So, unlike the Nylas client's POSTs, every event is
retried after a 429, a 5xx, a timeout or a network error, as PagerDuty's retry table asks.

Every error the client raises is a ``PagingError``::

    PagingError              base; .status (HTTP status, or None when there was no answer)
    ├── PagingRejected       a 4xx, usually 400 "invalid event": PagerDuty refused the event
    │                        itself and sending it again cannot help; .errors lists its reasons
    └── PagingUnavailable    429, 5xx, timeouts or network errors that outlasted the retries,
                             or a Retry-After longer than the client will wait; .retry_after
                             in seconds when PagerDuty asked for one

Arguments PagerDuty would refuse for sure (an unknown severity, an empty or over-long
dedup_key) raise ``ValueError`` before anything is sent. Each message is one sentence for an
operator. The routing key is a credential: it is never put in a message or a log record, and
any text PagerDuty echoes back is scrubbed of it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

log = logging.getLogger("reauthbot.paging")

DEFAULT_URL = "https://events.pagerduty.com"
SEVERITIES = ("critical", "error", "warning", "info")
MAX_SUMMARY = 1024
MAX_DEDUP_KEY = 255

# PagerDuty's error text is useful to an operator, but it is untrusted and unbounded.
_MAX_DETAIL = 300
_ELLIPSIS = "…"


class PagingError(Exception):
    """Base of every error the PagerDuty client raises."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class PagingRejected(PagingError):
    """PagerDuty refused the event itself (400 "invalid event", or another 4xx)."""

    def __init__(
        self, message: str, *, status: int | None = 400, errors: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, status=status)
        self.errors = errors


class PagingUnavailable(PagingError):
    """PagerDuty could not take the event (429, 5xx, timeout, network) after every retry."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each non-empty secret in text."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Return the seconds a Retry-After header asks for (delay or HTTP date), None if unusable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(seconds, 0.0)


def _error_details(body: bytes) -> tuple[str | None, tuple[str, ...]]:
    """Return (message, errors) from PagerDuty's error shape, when the body has it."""
    try:
        data = json.loads(body)
    except ValueError:
        return None, ()
    if not isinstance(data, dict):
        return None, ()
    message = data.get("message")
    errors = data.get("errors")
    return (
        message if isinstance(message, str) else None,
        tuple(e for e in errors if isinstance(e, str)) if isinstance(errors, list) else (),
    )


def decipher_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    what: str,
    attempts: int = 1,
    secrets: Iterable[str] = (),
) -> dict[str, Any]:
    """Return the decoded JSON object of a 2xx answer, or raise the PagingError that fits it.

    ``what`` names the event for messages (for example ``"trigger case-42"``); ``attempts`` is
    how many times it was sent; ``secrets`` are scrubbed from any text PagerDuty sent back.
    A 2xx whose body is not a JSON object gives ``{}``: PagerDuty has accepted the event, and
    the caller still knows the dedup_key it sent.
    """
    secrets = tuple(secrets)
    if 200 <= status < 300:
        try:
            data = json.loads(body)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    message, errors = _error_details(body)
    errors = tuple(redact(e, secrets)[:_MAX_DETAIL] for e in errors)
    # "(HTTP 400: Event object is invalid; Invalid routing key)" keeps it to one sentence.
    detail = "; ".join(part for part in (message, *errors) if part)
    code = f"HTTP {status}"
    if detail:
        code += ": " + redact(detail, secrets)[:_MAX_DETAIL].strip().rstrip(".")
    tries = f" after {attempts} attempts" if attempts > 1 else ""

    if status == 429 or status >= 500:
        verb = "rate-limited" if status == 429 else "failed to take"
        raise PagingUnavailable(
            f"PagerDuty {verb} the {what} event{tries} ({code}).",
            status=status,
            retry_after=parse_retry_after(headers.get("Retry-After")),
        )
    if 400 <= status < 500:
        raise PagingRejected(
            f"PagerDuty rejected the {what} event ({code}).", status=status, errors=errors
        )
    raise PagingError(
        f"PagerDuty answered the {what} event with unexpected HTTP {status}.", status=status
    )


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


class PagerDuty:
    """Send alert events to one PagerDuty integration, through an injected httpx client."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        routing_key: str,
        base_url: str = DEFAULT_URL,
        retries: int = 3,
        backoff_base: float = 1.0,
        max_backoff: float = 60.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not routing_key:
            raise ValueError("A PagerDuty routing key is needed to send events.")
        if retries < 0 or backoff_base < 0 or max_backoff < 0:
            raise ValueError("PagerDuty retries and backoff times must not be negative.")
        self._http = http
        self._routing_key = routing_key
        self._url = base_url.rstrip("/") + "/v2/enqueue"
        self._retries = retries
        self._backoff_base = backoff_base
        self._max_backoff = max_backoff
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"PagerDuty(url={self._url!r})"

    async def trigger(
        self,
        dedup_key: str,
        summary: str,
        *,
        source: str,
        severity: str = "error",
        custom_details: dict[str, Any] | None = None,
        links: list[dict[str, Any]] | None = None,
    ) -> str:
        """Open an alert, or add to the open one with this dedup_key; return PagerDuty's key.

        A summary longer than PagerDuty's 1024 characters is cut, ending in "…".
        """
        _check_dedup_key(dedup_key)
        if severity not in SEVERITIES:
            raise ValueError(f"PagerDuty severity must be one of {SEVERITIES}, not {severity!r}.")
        if not summary.strip() or not source.strip():
            raise ValueError("A PagerDuty trigger needs a non-blank summary and source.")
        if len(summary) > MAX_SUMMARY:
            summary = summary[: MAX_SUMMARY - len(_ELLIPSIS)] + _ELLIPSIS
        payload: dict[str, Any] = {"summary": summary, "source": source, "severity": severity}
        if custom_details is not None:
            payload["custom_details"] = custom_details
        event: dict[str, Any] = {"event_action": "trigger", "dedup_key": dedup_key}
        event["payload"] = payload
        if links is not None:
            event["links"] = links
        answer = await self._send(event)
        answered = answer.get("dedup_key")
        return answered if isinstance(answered, str) and answered else dedup_key

    async def acknowledge(self, dedup_key: str) -> None:
        """Acknowledge the open alert with this dedup_key; PagerDuty drops it if there is none."""
        _check_dedup_key(dedup_key)
        await self._send({"event_action": "acknowledge", "dedup_key": dedup_key})

    async def resolve(self, dedup_key: str) -> None:
        """Resolve the open alert with this dedup_key; PagerDuty drops it if there is none."""
        _check_dedup_key(dedup_key)
        await self._send({"event_action": "resolve", "dedup_key": dedup_key})

    async def _send(self, event: dict[str, Any]) -> dict[str, Any]:
        """POST one event with retries; return PagerDuty's JSON answer or raise a PagingError."""
        what = f"{event['event_action']} {event['dedup_key']}"
        body = {"routing_key": self._routing_key, **event}
        secrets = (self._routing_key,)
        attempt = 0
        while True:
            try:
                response = await self._http.post(
                    self._url, json=body, headers={"Accept": "application/json"}
                )
            except httpx.TransportError as exc:
                if attempt < self._retries:
                    await self._wait(event, attempt, self._backoff(attempt), type(exc).__name__)
                    attempt += 1
                    continue
                raise PagingUnavailable(self._transport_message(what, exc, attempt + 1)) from exc
            status = response.status_code
            if _retryable(status) and attempt < self._retries:
                hinted = parse_retry_after(response.headers.get("Retry-After"))
                # Waiting less than PagerDuty asked for only earns another 429; waiting
                # longer than max_backoff would stall the caller, which can retry later.
                if hinted is None or hinted <= self._max_backoff:
                    delay = self._backoff(attempt) if hinted is None else hinted
                    await self._wait(event, attempt, delay, f"HTTP {status}")
                    attempt += 1
                    continue
            return decipher_response(
                status,
                response.headers,
                response.content,
                what=what,
                attempts=attempt + 1,
                secrets=secrets,
            )

    async def _wait(self, event: dict[str, Any], attempt: int, delay: float, reason: str) -> None:
        fields = {"action": event["event_action"], "dedup_key": event["dedup_key"]}
        fields |= {"reason": reason, "attempt": attempt + 1, "delay": round(delay, 3)}
        log.warning("pagerduty event will be retried", extra=fields)
        await self._sleep(delay)

    def _backoff(self, attempt: int) -> float:
        # Up to 10% jitter keeps workers that failed together from retrying together.
        backoff = self._backoff_base * 2**attempt * (1 + random.random() / 10)
        return min(backoff, self._max_backoff)

    def _transport_message(self, what: str, exc: httpx.TransportError, attempts: int) -> str:
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        if isinstance(exc, httpx.TimeoutException):
            return f"PagerDuty did not answer the {what} event in time{tries}."
        detail = redact(str(exc), (self._routing_key,)) or type(exc).__name__
        return f"Could not reach PagerDuty for the {what} event{tries} ({detail})."


def _check_dedup_key(dedup_key: str) -> None:
    if not dedup_key or len(dedup_key) > MAX_DEDUP_KEY:
        raise ValueError(f"A PagerDuty dedup_key must be 1 to {MAX_DEDUP_KEY} characters long.")
