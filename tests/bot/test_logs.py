"""Log lines are structured and never carry a secret, even when code logs one by mistake."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from bot import logs

SECRET = "xoxb-123-SECRET"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    yield buffer
    logs.configure(fmt="plain", level="WARNING", stream=io.StringIO())


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_secrets_are_masked_in_messages_fields_and_tracebacks(
    stream: io.StringIO, fmt: str
) -> None:
    logs.configure(fmt=fmt, level="INFO", secrets=[SECRET], stream=stream)
    log = logging.getLogger("reauthbot.test")
    log.info("token is %s", SECRET, extra={"header": f"Bearer {SECRET}"})
    try:
        raise RuntimeError(f"rejected {SECRET}")
    except RuntimeError:
        log.exception("failed")
    text = stream.getvalue()
    assert SECRET not in text
    assert text.count("***") >= 3


def test_json_lines_carry_fields(stream: io.StringIO) -> None:
    logs.configure(fmt="json", level="INFO", stream=stream)
    logging.getLogger("reauthbot.test").warning("alert", extra={"case": 7, "email": "a@b.c"})
    record = json.loads(stream.getvalue())
    assert record["level"] == "warning"
    assert record["logger"] == "reauthbot.test"
    assert (record["message"], record["case"], record["email"]) == ("alert", 7, "a@b.c")


def test_a_field_named_like_a_json_key_does_not_hide_it(stream: io.StringIO) -> None:
    logs.configure(fmt="json", level="INFO", stream=stream)
    logging.getLogger("reauthbot.test").info("escalated", extra={"level": 2, "time": "soon"})
    record = json.loads(stream.getvalue())
    assert (record["level"], record["level_"], record["time_"]) == ("info", 2, "soon")


def test_plain_lines_carry_fields(stream: io.StringIO) -> None:
    logs.configure(fmt="plain", level="INFO", stream=stream)
    logging.getLogger("reauthbot.test").info("retrying", extra={"reason": "rate limited", "n": 2})
    line = stream.getvalue().strip()
    assert line.endswith('INFO reauthbot.test retrying reason="rate limited" n=2')
