"""Structured logging: one line per record, plain ``key=value`` or JSON, scrubbed of secrets.

Fields are passed with ``extra=``: ``log.info("alert posted", extra={"case": 12})``.

A log line may quote what a stranger sent (a header, a payload field), so every record is
made safe before it is written: secrets are masked first, then each piece of text is clipped
(``MAX_MESSAGE``, ``MAX_FIELD``) and its control characters written as escapes, so that no
input can plant a line of its own or grow the log without bound. In the plain format, the
lines of a traceback are indented: every line that does not start with a time belongs to the
record above it.

A record may carry a block of lines to show below it, such as an alert's card in local mode:
``extra={logs.BLOCK: lines}``. Each line is made safe like a message and indented like a
traceback's (in JSON, they are the record's ``lines``), so the record stays one record.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_MASK = "***"
MAX_MESSAGE = 2000  # characters of a message kept
MAX_FIELD = 500  # characters of a field's text kept
BLOCK = "_block"  # the record attribute that holds its block of lines
# Line breaks of any kind, and every other control character, are written as escapes.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# A plain field value is quoted when it holds anything but these.
_BARE = re.compile(r"[^\s\"'=\\]+")


def _escape_control(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


def one_line(text: str, limit: int) -> str:
    """``text`` clipped to ``limit`` characters, with its control characters escaped."""
    if len(text) > limit:
        text = text[:limit] + f"…[{len(text) - limit} more]"
    return _CONTROL.sub(_escape_control, text)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class _Formatter(logging.Formatter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Longest first, so a secret that contains another is masked whole. Every secret
        # counts, however short: a short one is a weak secret, not one to print.
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, _MASK)
        return text

    def text(self, value: object, limit: int) -> str:
        """One piece of a line: masked first (a clipped secret would show its start)."""
        return one_line(self.scrub(str(value)), limit)

    def block(self, record: logging.LogRecord) -> list[str]:
        """The record's block of lines, each made one safe line."""
        return [self.text(row, MAX_MESSAGE) for row in getattr(record, BLOCK, None) or ()]

    def traceback(self, record: logging.LogRecord) -> str | None:
        if not record.exc_info:
            return None
        return self.scrub(self.formatException(record.exc_info))

    def format(self, record: logging.LogRecord) -> str:
        # The whole line once more: a secret may straddle two pieces.
        return self.scrub(self.render(record))

    def render(self, record: logging.LogRecord) -> str:
        raise NotImplementedError

    @staticmethod
    def _time(record: logging.LogRecord) -> str:
        return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class PlainFormatter(_Formatter):
    def render(self, record: logging.LogRecord) -> str:
        message = self.text(record.getMessage(), MAX_MESSAGE)
        parts = [self._time(record), record.levelname, self.text(record.name, 100), message]
        line = " ".join(parts)
        fields = " ".join(
            f"{self.text(k, 64)}={_plain(self.text(v, MAX_FIELD))}"
            for k, v in _fields(record).items()
        )
        if fields:
            line += " " + fields
        line += "".join(f"\n  {row}" for row in self.block(record))
        if (trace := self.traceback(record)) is not None:
            line += "".join(f"\n  {one_line(row, MAX_MESSAGE)}" for row in trace.splitlines())
        return line


class JsonFormatter(_Formatter):
    def render(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": self._time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": self.text(record.getMessage(), MAX_MESSAGE),
        }
        if block := self.block(record):
            data["lines"] = block
        for key, value in _fields(record).items():
            # A field named like the line's own keys ("level", "message"…) must not hide them.
            name = self.text(key, 64)
            if not (value is None or isinstance(value, int | float | bool)):
                value = self.text(value, MAX_FIELD)
            data[f"{name}_" if name in data else name] = value
        if (trace := self.traceback(record)) is not None:
            data["exception"] = "\n".join(one_line(row, MAX_MESSAGE) for row in trace.splitlines())
        return json.dumps(data, default=str, ensure_ascii=False)


def _plain(text: str) -> str:
    return text if _BARE.fullmatch(text) else json.dumps(text, ensure_ascii=False)


def configure(
    *,
    fmt: str = "plain",
    level: str = "INFO",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Send all logs to one stream in the chosen format, with ``secrets`` masked."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(secrets) if fmt == "json" else PlainFormatter(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # aiohttp's access log is one line per request: useful at DEBUG, noise otherwise.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # The Slack SDK says "A retry handler found" at INFO for every attempt it retries; an
    # outage of Slack is logged once, by the notifier.
    logging.getLogger("slack_sdk").setLevel(logging.WARNING)
    # Alembic narrates every readiness check; reauthbot logs the migration outcome itself.
    logging.getLogger("alembic").setLevel(logging.WARNING)
