"""A fake PagerDuty Events API v2 (alert events) served over real HTTP, for tests.

    async with FakePagerDuty(routing_key=KEY) as pd:
        client = PagerDuty(http, routing_key=KEY, base_url=pd.url)
        await client.trigger("case-1", "ann@example.com must re-authenticate", source="bot")
        assert pd.incident("case-1").status == "triggered"

Only ``POST /v2/enqueue`` is served. Every request is recorded in ``pd.events`` with the status
the fake answered. What PagerDuty documents, the fake follows:

- an accepted event is answered 202 ``{"status": "success", "message": "Event processed",
  "dedup_key": ...}``, including an acknowledge or resolve that finds nothing to act on;
- an event that breaks the schema is answered 400 ``{"status": "invalid event", "message":
  "Event object is invalid", "errors": [...]}``, listing every problem found: an
  event_action other than trigger/acknowledge/resolve; a trigger without a payload holding a
  non-blank summary and source and a severity among critical/error/warning/info; a summary
  over 1024 characters; a dedup_key over 255; an acknowledge or resolve without a dedup_key;
  a link without an href;
- a trigger without a dedup_key gets a new UUID; a trigger for a key with an open incident
  joins it (an acknowledged incident stays acknowledged); once the incident is resolved, a
  trigger opens a new one, and an acknowledge or resolve for the key is dropped.

Where PagerDuty does not document a behaviour, the fake picks one and says so here:

- only the configured routing key is accepted; any other, or none, is a 400 invalid event
  with the error "Invalid routing key". PagerDuty documents no check; public reports show a
  400 for a malformed key ("Length of 'routing_key' is incorrect (should be 32 characters)")
  and "Invalid routing key" for others, but a well-formed key of no integration may also be
  accepted and dropped. The fake does not check the key's 32-character format;
- the ``errors`` entries are worded by the fake; only the status and message are PagerDuty's;
- a body that is not a JSON object is answered with the error example of PagerDuty's OpenAPI
  description: 400 ``{"status": "Unrecognized object", "message": "Event object format is
  unrecognized", "errors": ["JSON parse error"]}``;
- one alert is one incident (PagerDuty may group several alerts into one incident);
  incidents are numbered from 1 in the order they open;
- an incident keeps the payload of the trigger that opened it; later events for it are only
  appended to ``incident.events``; acknowledgements never time out back to triggered;
- events are applied before the 202 is sent, so "accepted" means "applied" here;
- injected failures (``fail``) come before validation, like a throttle or a proxy in front of
  PagerDuty: the event is recorded but not applied. PagerDuty documents no body for 429 and
  5xx answers and no Retry-After header; the fake sends ``{"status": ..., "message": ...}``
  and a Retry-After only when told to;
- a delayed event (``delay``) is still applied when its delay ends, even if the client gave up
  waiting, as a request answered too late would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.fakes._loopback import LoopbackFake

DEFAULT_ROUTING_KEY = "R0UT1NGKEY0F32CHARACTERS00000000"
ACTIONS = ("trigger", "acknowledge", "resolve")
SEVERITIES = ("critical", "error", "warning", "info")
MAX_SUMMARY = 1024
MAX_DEDUP_KEY = 255

_FAILURE_BODIES = {
    429: {"status": "throttle event", "message": "Too many events; retry later."},
    500: {"status": "error", "message": "Internal server error."},
    502: {"status": "error", "message": "Bad gateway."},
    503: {"status": "error", "message": "Service unavailable."},
    504: {"status": "error", "message": "Gateway timeout."},
}


@dataclass(frozen=True, slots=True)
class Event:
    """One request to /v2/enqueue: its JSON (or raw text if not JSON) and the status answered."""

    body: Any
    status: int

    @property
    def action(self) -> str | None:
        value = self.body.get("event_action") if isinstance(self.body, dict) else None
        return value if isinstance(value, str) else None

    @property
    def dedup_key(self) -> str | None:
        value = self.body.get("dedup_key") if isinstance(self.body, dict) else None
        return value if isinstance(value, str) else None


@dataclass(slots=True)
class Incident:
    """One incident as the fake keeps it; status is triggered, acknowledged or resolved."""

    number: int
    dedup_key: str
    summary: str
    source: str
    severity: str
    custom_details: Any = None
    links: list[dict[str, Any]] = field(default_factory=list)
    status: str = "triggered"
    # Every accepted event applied to this incident, the opening trigger first.
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def triggers(self) -> int:
        return sum(1 for e in self.events if e.get("event_action") == "trigger")


@dataclass(slots=True)
class _Rule:
    remaining: int | None
    status: int = 0
    retry_after: str | None = None
    body: Any = None
    seconds: float = 0.0

    def take(self) -> bool:
        if self.remaining is None:
            return True
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True


def _invalid(errors: list[str]) -> web.Response:
    body = {"status": "invalid event", "message": "Event object is invalid", "errors": errors}
    return web.json_response(body, status=400)


class FakePagerDuty(LoopbackFake):
    """A local PagerDuty Events API v2 that keeps incidents by dedup_key in memory."""

    def __init__(
        self, *, routing_key: str = DEFAULT_ROUTING_KEY, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        super().__init__(host=host, port=port)
        self.routing_key = routing_key
        self.events: list[Event] = []
        self.incidents: list[Incident] = []
        self._latest: dict[str, Incident] = {}
        self._failures: list[_Rule] = []
        self._delays: list[_Rule] = []

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v2/enqueue", self._enqueue)
        return app

    # -- looking and steering ----------------------------------------------------------

    def incident(self, dedup_key: str) -> Incident | None:
        """Return the newest incident opened with dedup_key, open or resolved; None if none."""
        return self._latest.get(dedup_key)

    def open_incidents(self) -> list[Incident]:
        """Return the incidents not resolved, in the order they opened."""
        return [i for i in self.incidents if i.status != "resolved"]

    def events_for(self, dedup_key: str) -> list[Event]:
        """Return the recorded requests that named dedup_key, accepted or not."""
        return [e for e in self.events if e.dedup_key == dedup_key]

    def fail(
        self,
        status: int = 503,
        *,
        times: int | None = 1,
        retry_after: float | str | None = None,
        body: Any = None,
    ) -> None:
        """Answer the next `times` events (None: all) with `status`, before validating them.

        retry_after, when given, is sent as the Retry-After header. body defaults to
        ``{"status", "message"}`` (an invalid event for a 4xx); a dict or list is sent as
        JSON, a str as text. Rules are used in the order they were added.
        """
        header = None if retry_after is None else str(retry_after)
        self._failures.append(_Rule(times, status=status, retry_after=header, body=body))

    def delay(self, seconds: float, *, times: int | None = 1) -> None:
        """Hold the next `times` events (None: all) for `seconds` before handling them."""
        self._delays.append(_Rule(times, seconds=seconds))

    # -- the endpoint ------------------------------------------------------------------

    async def _enqueue(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body: Any
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        for rule in self._delays:
            if rule.take():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), rule.seconds)
        response = self._answer(body)
        self.events.append(Event(body, response.status))
        return response

    def _answer(self, body: Any) -> web.Response:
        for rule in self._failures:
            if rule.take():
                return self._failure(rule)
        if not isinstance(body, dict):
            unrecognized = {
                "status": "Unrecognized object",
                "message": "Event object format is unrecognized",
                "errors": ["JSON parse error"],
            }
            return web.json_response(unrecognized, status=400)
        errors = self._problems(body)
        if errors:
            return _invalid(errors)
        dedup_key = body.get("dedup_key") or str(uuid.uuid4())
        self._apply(body, dedup_key)
        answer = {"status": "success", "message": "Event processed", "dedup_key": dedup_key}
        return web.json_response(answer, status=202)

    def _failure(self, rule: _Rule) -> web.Response:
        headers = {} if rule.retry_after is None else {"Retry-After": rule.retry_after}
        if isinstance(rule.body, str):
            return web.Response(text=rule.body, status=rule.status, headers=headers)
        if rule.body is not None:
            return web.json_response(rule.body, status=rule.status, headers=headers)
        if 400 <= rule.status < 500 and rule.status != 429:
            body: dict[str, Any] = {
                "status": "invalid event",
                "message": "Event object is invalid",
                "errors": ["Injected failure"],
            }
        else:
            body = _FAILURE_BODIES.get(rule.status, {"status": "error", "message": "Failure."})
        return web.json_response(body, status=rule.status, headers=headers)

    def _problems(self, body: dict[str, Any]) -> list[str]:
        """Return what makes the event invalid, in PagerDuty's terms; empty if it is valid."""
        errors: list[str] = []
        if body.get("routing_key") != self.routing_key:
            errors.append("Invalid routing key")
        action = body.get("event_action")
        if action not in ACTIONS:
            errors.append("'event_action' must be one of trigger, acknowledge or resolve")
        dedup_key = body.get("dedup_key")
        if dedup_key is not None and (not isinstance(dedup_key, str) or not dedup_key):
            errors.append("'dedup_key' must be a non-empty string")
        elif isinstance(dedup_key, str) and len(dedup_key) > MAX_DEDUP_KEY:
            errors.append(f"'dedup_key' is longer than {MAX_DEDUP_KEY} characters")
        if action in ("acknowledge", "resolve") and dedup_key is None:
            errors.append(f"'dedup_key' is required for {action} events")
        if action == "trigger":
            errors.extend(self._payload_problems(body.get("payload")))
        links = body.get("links")
        if links is not None and (
            not isinstance(links, list)
            or not all(
                isinstance(link, dict) and isinstance(link.get("href"), str) for link in links
            )
        ):
            errors.append("'links' must be a list of objects, each with an 'href'")
        return errors

    @staticmethod
    def _payload_problems(payload: Any) -> list[str]:
        if not isinstance(payload, dict):
            return ["'payload' is missing or not an object"]
        errors = []
        for name in ("summary", "source"):
            value = payload.get(name)
            if not isinstance(value, str) or not value.strip():
                errors.append(f"'payload.{name}' is missing or blank")
        summary = payload.get("summary")
        if isinstance(summary, str) and len(summary) > MAX_SUMMARY:
            errors.append(f"'payload.summary' is longer than {MAX_SUMMARY} characters")
        if payload.get("severity") not in SEVERITIES:
            errors.append("'payload.severity' must be one of critical, error, warning or info")
        details = payload.get("custom_details")
        if details is not None and not isinstance(details, dict):
            errors.append("'payload.custom_details' must be an object")
        return errors

    def _apply(self, body: dict[str, Any], dedup_key: str) -> None:
        current = self._latest.get(dedup_key)
        if current is not None and current.status == "resolved":
            current = None
        action = body["event_action"]
        if action == "trigger" and current is None:
            payload = body["payload"]
            current = Incident(
                number=len(self.incidents) + 1,
                dedup_key=dedup_key,
                summary=payload["summary"],
                source=payload["source"],
                severity=payload["severity"],
                custom_details=payload.get("custom_details"),
                links=list(body.get("links") or []),
            )
            self.incidents.append(current)
            self._latest[dedup_key] = current
        if current is None:
            return  # acknowledge or resolve with nothing open: accepted and dropped
        current.events.append(body)
        if action == "acknowledge":
            current.status = "acknowledged"
        elif action == "resolve":
            current.status = "resolved"
