"""Errors raised by the Nylas client, and the pure mapping from an HTTP answer to them.

Every error the client raises is a ``NylasError``; catch that to handle "Nylas did not do
what we asked" in one place::

    NylasError                base; .status (HTTP status or None), .request_id (or None)
    ├── NylasAuthError        401/403: Nylas refused the app's API key or client secret
    ├── NylasNotFound         404: no such account, grant or endpoint
    ├── NylasRateLimited      429 that outlasted the retries; .retry_after in seconds or None
    ├── NylasUnavailable      5xx, timeouts or connection errors that outlasted the retries
    ├── NylasRequestError     any other 4xx: Nylas says the request itself is wrong
    ├── NylasBadResponse      the body is not the JSON shape the API documents
    │   └── UnusableAccount   one account in it cannot be read or stored; .reason says why
    └── UnsupportedOperation  the operation does not exist in the configured API version

Each message is one sentence meant for an operator. Messages never contain the API key or
the client secret: ``decipher_response`` scrubs any text Nylas echoes back with ``redact``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# Nylas' own error text is useful to an operator, but it is untrusted and unbounded.
_MAX_DETAIL = 200


class NylasError(Exception):
    """Base of every error the Nylas client raises."""

    def __init__(
        self, message: str, *, status: int | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.request_id = request_id


class NylasAuthError(NylasError):
    """Nylas refused the application's credentials (401/403)."""


class NylasNotFound(NylasError):
    """The account, grant or endpoint does not exist (404)."""


class NylasRateLimited(NylasError):
    """Nylas kept answering 429 after every retry."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = 429,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, request_id=request_id)
        self.retry_after = retry_after


class NylasUnavailable(NylasError):
    """Nylas failed (5xx), timed out or could not be reached, after every retry."""


class NylasRequestError(NylasError):
    """Nylas rejected the request as invalid (a 4xx other than 401/403/404/429)."""


class NylasBadResponse(NylasError):
    """Nylas answered with a body that is not the documented JSON shape."""


class UnusableAccount(NylasBadResponse):
    """One account in Nylas' answer has no id, or text that does not fit the database."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"Nylas answered {what} with an account whose {reason}.")
        self.reason = reason


class UnsupportedOperation(NylasError):
    """The operation does not exist in the configured Nylas API version."""


def redact(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each non-empty secret in text."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return text


def parse_delay(value: str | None) -> float | None:
    """Parse a header holding a number of seconds; None when absent or not a number."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        # Retry-After may also be an HTTP date; Nylas documents seconds, so fall back to
        # our own backoff rather than guess at clocks.
        return None
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(seconds, 0.0)


def _error_details(body: bytes) -> tuple[str | None, str | None]:
    """Return (request_id, message) from a v3 or v2 error body, when there are any."""
    try:
        data = json.loads(body)
    except ValueError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    request_id = data.get("request_id")
    error = data.get("error")
    # v3: {"request_id", "error": {"type", "message"}}; v2: {"type", "message"}.
    message = error.get("message") if isinstance(error, dict) else data.get("message")
    return (
        request_id if isinstance(request_id, str) else None,
        message if isinstance(message, str) else None,
    )


def decipher_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    what: str,
    attempts: int = 1,
    secrets: Sequence[str] = (),
) -> Any:
    """Return the decoded JSON of a 2xx answer, or raise the NylasError that fits it.

    ``what`` names the request for messages (for example ``"GET /v3/grants"``); ``attempts``
    is how many times it was sent; ``secrets`` are scrubbed from any text Nylas sent back.
    """
    if 200 <= status < 300:
        if not body.strip():
            return None
        try:
            return json.loads(body)
        except ValueError:
            raise NylasBadResponse(
                f"Nylas answered {what} with HTTP {status} but the body is not JSON.",
                status=status,
            ) from None

    request_id, detail = _error_details(body)
    # "(HTTP 404: grant not found)" keeps every message to one sentence.
    code = f"HTTP {status}"
    if detail:
        code += ": " + redact(detail, secrets)[:_MAX_DETAIL].strip().rstrip(".")
    tries = f" after {attempts} attempts" if attempts > 1 else ""

    if status in (401, 403):
        raise NylasAuthError(
            f"Nylas refused the app's credentials for {what} ({code}); "
            "check the configured API key or client secret.",
            status=status,
            request_id=request_id,
        )
    if status == 404:
        raise NylasNotFound(
            f"Nylas found nothing at {what} ({code}).", status=status, request_id=request_id
        )
    if status == 429:
        retry_after = parse_delay(headers.get("Retry-After"))
        if retry_after is None:
            retry_after = parse_delay(headers.get("X-RateLimit-Reset"))
        raise NylasRateLimited(
            f"Nylas rate-limited {what}{tries} ({code}).",
            status=status,
            request_id=request_id,
            retry_after=retry_after,
        )
    if status >= 500:
        raise NylasUnavailable(
            f"Nylas failed to answer {what}{tries} ({code}).",
            status=status,
            request_id=request_id,
        )
    if 400 <= status < 500:
        raise NylasRequestError(
            f"Nylas rejected {what} as invalid ({code}).", status=status, request_id=request_id
        )
    raise NylasBadResponse(
        f"Nylas answered {what} with unexpected HTTP {status}.",
        status=status,
        request_id=request_id,
    )
