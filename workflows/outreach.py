"""Reach the end user of a broken mailbox: an email through Nylas, or a signed webhook.

    mailer = NylasMailer(http, base_url=url, api_key=key, grant_id=support_grant)
    await mailer.send(to="ann@example.com", subject="Please reconnect your mailbox",
                      text=email_text(link=link, expires_at=expires, nudge=False))

    hook = OutreachWebhook(http, url="https://crm.example.com/hooks/reauth", secret=secret)
    await hook.post({"id": "evt-1", "type": REQUESTED, ...})

Each call is a single HTTP attempt: the outbox that calls them retries with backoff, so a
client that retried too would multiply the attempts and, for an email, the risk of sending it
twice. An email is sent from the support mailbox's grant with
``POST {base_url}/v3/grants/{grant_id}/messages/send``. A webhook event is POSTed as compact
JSON with ``X-Reauthbot-Timestamp`` (unix seconds) and ``X-Reauthbot-Signature``
(``sha256=`` and the hex HMAC-SHA256, keyed with the shared secret, of
``"<timestamp>.<raw body>"``); ``sign`` and ``verify`` are the two sides of that.

Every error the clients raise is an ``OutreachError``::

    OutreachError            base; .status (HTTP status, or None when there was no answer)
    ├── OutreachRejected     the receiver refused the request: a 4xx other than 408 and 429,
    │                        or another answer that is not a 2xx; sending again cannot help
    ├── OutreachUnavailable  429, 408, 5xx, or the connection failed before anything was
    │                        sent; .retry_after in seconds when the receiver asked for one
    └── OutreachUncertain    the request went out but no usable answer came back (a read
                             timeout, the connection dropped): it may have been delivered

Each message is one sentence for an operator. The Nylas API key and the webhook secret are
credentials: they are never put in a message or a log record, and any text the receiver
echoes back is scrubbed of them. ``email_text`` and an operator's template raise
``ValueError`` for a template that cannot be used.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import re
import string
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from workflows.paging import parse_retry_after, redact

REQUESTED = "reauth.requested"
NUDGE = "reauth.nudge"
COMPLETED = "reauth.completed"
EVENTS = (REQUESTED, NUDGE, COMPLETED)

TIMESTAMP_HEADER = "X-Reauthbot-Timestamp"
SIGNATURE_HEADER = "X-Reauthbot-Signature"
SIGNATURE_PREFIX = "sha256="
PLACEHOLDERS = ("link", "expires")

# The receiver's error text is useful to an operator, but it is untrusted and unbounded.
_MAX_DETAIL = 200
# Failures of these kinds happen before a byte of the request is sent.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_URL = re.compile(r"https?://[^\s<>\"']+")
_TRAILING = ".,;:!?)]}"
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n+")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


class OutreachError(Exception):
    """Base of every error the outreach clients raise."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class OutreachRejected(OutreachError):
    """The receiver refused the request itself; sending it again cannot help."""


class OutreachUnavailable(OutreachError):
    """The receiver could not take the request now (429, 408, 5xx, or unreachable)."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class OutreachUncertain(OutreachError):
    """The request was sent but no usable answer came: it may or may not have arrived."""


# -- the HTTP choke point ----------------------------------------------------------------


async def _post(
    http: httpx.AsyncClient,
    url: str,
    *,
    what: str,
    secrets: Iterable[str],
    **kwargs: Any,
) -> httpx.Response:
    """POST once; return a 2xx response or raise the OutreachError that fits."""
    try:
        response = await http.post(url, **kwargs)
    except _NOT_SENT as exc:
        raise OutreachUnavailable(f"Could not reach {what} ({type(exc).__name__}).") from exc
    except httpx.TimeoutException as exc:
        raise OutreachUncertain(f"{_capital(what)} did not answer in time.") from exc
    except httpx.TransportError as exc:
        raise OutreachUncertain(
            f"The connection to {what} failed after sending ({type(exc).__name__})."
        ) from exc
    decipher_response(
        response.status_code, response.headers, response.content, what=what, secrets=secrets
    )
    return response


def decipher_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    what: str,
    secrets: Iterable[str] = (),
) -> None:
    """Return for a 2xx answer; otherwise raise the OutreachError that fits it.

    ``what`` names the receiver for messages (for example ``"Nylas"``); ``secrets`` are
    scrubbed from any text the receiver sent back.
    """
    if 200 <= status < 300:
        return
    code = f"HTTP {status}"
    detail = _error_detail(body)
    if detail:
        code += ": " + redact(detail, tuple(secrets))[:_MAX_DETAIL].strip().rstrip(".")
    if status in (408, 429) or status >= 500:
        raise OutreachUnavailable(
            f"{_capital(what)} could not take the request now ({code}).",
            status=status,
            retry_after=parse_retry_after(headers.get("Retry-After")),
        )
    raise OutreachRejected(f"{_capital(what)} refused the request ({code}).", status=status)


def _error_detail(body: bytes) -> str | None:
    """Return the message of Nylas' v3 error shape, when the body has it."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) else None


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


# -- email through Nylas -----------------------------------------------------------------


class NylasMailer:
    """Send email from one Nylas v3 grant (the support mailbox), one attempt per call."""

    def __init__(
        self, http: httpx.AsyncClient, *, base_url: str, api_key: str, grant_id: str
    ) -> None:
        if not api_key or not grant_id:
            raise ValueError("Sending outreach email needs a Nylas API key and a grant id.")
        self._http = http
        self._api_key = api_key
        grant = quote(grant_id, safe="")
        self._url = f"{base_url.rstrip('/')}/v3/grants/{grant}/messages/send"

    def __repr__(self) -> str:
        return f"NylasMailer(url={self._url!r})"

    async def send(self, *, to: str, subject: str, text: str) -> str:
        """Send one email with text as its HTML body; return the id Nylas gave the message."""
        body = {"to": [{"email": to}], "subject": subject, "body": text_to_html(text)}
        headers = {"Authorization": f"Bearer {self._api_key}", "Accept": "application/json"}
        response = await _post(
            self._http,
            self._url,
            what="Nylas",
            secrets=(self._api_key,),
            json=body,
            headers=headers,
        )
        try:
            answer = response.json()
        except ValueError:
            answer = None
        data = answer.get("data") if isinstance(answer, dict) else None
        message_id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(message_id, str) or not message_id:
            # Nylas said yes, yet the answer cannot be read: the email probably left.
            raise OutreachUncertain(
                f"Nylas accepted the email but its answer has no message id "
                f"(HTTP {response.status_code}).",
                status=response.status_code,
            )
        return message_id


def text_to_html(text: str) -> str:
    """Turn plain text into HTML: paragraphs, line breaks, and http(s) links as anchors."""
    paragraphs = _PARAGRAPH_BREAK.split(text.replace("\r\n", "\n").strip())
    return "\n".join(
        "<p>" + "<br>\n".join(_linkify(line) for line in p.split("\n")) + "</p>"
        for p in paragraphs
        if p.strip()
    )


def _linkify(line: str) -> str:
    out: list[str] = []
    position = 0
    for match in _URL.finditer(line):
        url = match.group().rstrip(_TRAILING)
        end = match.start() + len(url)
        out.append(html.escape(line[position : match.start()], quote=False))
        out.append(f'<a href="{html.escape(url)}">{html.escape(url, quote=False)}</a>')
        position = end
    out.append(html.escape(line[position:], quote=False))
    return "".join(out)


# -- the text of the email ---------------------------------------------------------------


def email_text(*, link: str, expires_at: datetime, nudge: bool, template: str | None = None) -> str:
    """Return the plain text of the email asking the end user to reconnect their mailbox.

    ``template`` (the text of an operator's template file) replaces the default; it must
    use ``{link}`` and may use ``{expires}``. A nudge's default text opens with a reminder.
    """
    expires = format_expiry(expires_at)
    if template is not None:
        return render_template(template, link=link, expires=expires)
    lines = ["Hello,", ""]
    if nudge:
        lines = ["This is a reminder: your mailbox still needs to be reconnected.", "", *lines]
    lines += [
        "Your mailbox is no longer connected, so mail stops syncing. "
        "Please reconnect it by opening this link:",
        "",
        link,
        "",
        f"The link works until {expires}. If you did not expect this email, you can ignore it.",
    ]
    return "\n".join(lines)


def format_expiry(when: datetime) -> str:
    """Return a date and time for an email, in UTC: ``9 December 2026, 14:05 UTC``."""
    when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    return f"{when.day} {when:%B %Y, %H:%M} UTC"


class _Placeholders(dict[str, str]):
    def __missing__(self, key: str) -> str:
        known = ", ".join("{" + name + "}" for name in PLACEHOLDERS)
        raise ValueError(f"The email template uses {{{key}}}, which is unknown; use {known}.")


def check_template(template: str) -> None:
    """Raise ValueError if the template cannot be used: bad braces, unknown names, no link."""
    render_template(template, link="https://example.com/", expires="1 January 2030, 00:00 UTC")


def render_template(template: str, *, link: str, expires: str) -> str:
    """Fill an operator's template; raise ValueError naming what is wrong with it."""
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ValueError(f"The email template is not valid: {exc}.") from exc
    if "link" not in fields:
        raise ValueError("The email template must contain {link}, where the link goes.")
    try:
        return template.format_map(_Placeholders(link=link, expires=expires))
    except (AttributeError, IndexError, KeyError, TypeError) as exc:
        raise ValueError(f"The email template cannot be filled in: {exc}.") from exc


# -- the signed webhook ------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Return the X-Reauthbot-Signature value for a body sent at timestamp."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return SIGNATURE_PREFIX + mac.hexdigest()


def verify(
    secret: str,
    timestamp: str | None,
    body: bytes,
    signature: str | None,
    *,
    now: float,
    tolerance: float = 300.0,
) -> bool:
    """Tell whether the headers sign this body, with a timestamp within tolerance of now."""
    if timestamp is None or signature is None or not _TIMESTAMP.fullmatch(timestamp):
        return False
    if abs(now - int(timestamp)) > tolerance or not signature.isascii():
        return False
    expected = sign(secret, int(timestamp), body)
    return hmac.compare_digest(expected.encode(), signature.encode())


class OutreachWebhook:
    """POST signed outreach events to one URL, one attempt per call."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        url: str,
        secret: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not url or not secret:
            raise ValueError("The outreach webhook needs a URL and a signing secret.")
        self._http = http
        self._url = url
        self._secret = secret
        self._clock = clock

    def __repr__(self) -> str:
        return "OutreachWebhook()"  # the URL may hold a token of the receiver's

    async def post(self, event: Mapping[str, Any]) -> None:
        """Send one event; return once the receiver answered 2xx."""
        body = json.dumps(event, separators=(",", ":")).encode()
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }
        await _post(
            self._http,
            self._url,
            what="the outreach webhook",
            secrets=(self._secret,),
            content=body,
            headers=headers,
        )
