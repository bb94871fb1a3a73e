"""Log lines are structured and never carry a secret, even when code logs one by mistake."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from bot import logs

SECRET = "xoxb-123-SECRET"


# The libraries whose level ``configure`` sets: other tests in the same process read them.
QUIETED = ("aiohttp.access", "apscheduler", "httpx", "slack_sdk", "alembic")


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    buffer = io.StringIO()
    levels = {name: logging.getLogger(name).level for name in QUIETED}
    yield buffer
    logs.configure(fmt="plain", level="WARNING", stream=io.StringIO())
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_the_slack_sdk_says_nothing_per_retried_request_at_info(stream: io.StringIO) -> None:
    # It logs "A retry handler found" at INFO for every attempt it repeats: a Slack outage
    # would be a line per attempt.
    logs.configure(fmt="plain", level="INFO", stream=stream)
    logging.getLogger("slack_sdk.web.async_base_client").info("A retry handler found")
    logging.getLogger("slack_sdk.web.async_base_client").warning("a warning still shows")
    assert stream.getvalue().count("\n") == 1 and "a warning still shows" in stream.getvalue()


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


TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 "


@pytest.mark.parametrize(
    "planted",
    [
        "\n2026-12-07T10:00:00.000+00:00 ERROR reauthbot.app forged",
        "\r\n2026-12-07T10:00:00.000+00:00 ERROR x",
        "a\u2028b\u2029c\x85d\x1be[31m",
        "no-space\nat-all",
    ],
)
@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_no_input_plants_a_line_of_its_own(stream: io.StringIO, fmt: str, planted: str) -> None:
    logs.configure(fmt=fmt, level="INFO", stream=stream)
    log = logging.getLogger("reauthbot.test")
    log.info("got %s", planted, extra={"value": planted, planted: 1})
    try:
        raise ValueError(planted)
    except ValueError:
        log.exception("failed on %s", planted)
    rows = stream.getvalue().split("\n")
    assert rows[-1] == ""
    for row in rows[:-1]:
        if fmt == "json":
            json.loads(row)
        else:  # a record's first line starts with its time; a traceback's lines are indented
            assert re.match(TIME, row) or row.startswith("  "), row
    assert all(c not in stream.getvalue() for c in "\r\u2028\u2029\x85\x1b")
    starts = [row for row in rows if re.match(TIME, row) or row.startswith("{")]
    assert len(starts) == 2


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_a_huge_message_is_clipped(stream: io.StringIO, fmt: str) -> None:
    logs.configure(fmt=fmt, level="INFO", stream=stream)
    logging.getLogger("reauthbot.test").info("body %s", "x" * 1_000_000, extra={"f": "y" * 10**5})
    assert len(stream.getvalue()) < logs.MAX_MESSAGE + logs.MAX_FIELD + 300


def test_short_secrets_are_masked_and_clipping_never_shows_part_of_one(
    stream: io.StringIO,
) -> None:
    short, long = "k9Z", "s" * 30 + "SECRETTAIL"
    logs.configure(fmt="plain", level="INFO", secrets=[short, long], stream=stream)
    # The long secret straddles the point where the message is clipped.
    message = "x" * (logs.MAX_MESSAGE - 10) + long
    logging.getLogger("reauthbot.test").info(message, extra={"key": f"value {short}"})
    text = stream.getvalue()
    assert short not in text and "sssssssss" not in text and "SECRETTAIL" not in text


@pytest.mark.parametrize("fmt", ["plain", "json"])
def test_a_block_of_lines_stays_one_record(stream: io.StringIO, fmt: str) -> None:
    logs.configure(fmt=fmt, level="INFO", secrets=[SECRET], stream=stream)
    planted = "ana@example.com\n2026-12-07T10:00:00.000+00:00 ERROR reauthbot.app forged"
    block = ["  Account   g-1", f"  Email     {planted}", f"token {SECRET}"]
    logging.getLogger("reauthbot.alerts").warning("alert: x", extra={"case": 7, logs.BLOCK: block})
    text = stream.getvalue()
    assert SECRET not in text
    rows = text.split("\n")[:-1]
    if fmt == "json":
        (row,) = rows
        record = json.loads(row)
        assert record["case"] == 7
        assert record["lines"][0] == "  Account   g-1"
        assert record["lines"][1].endswith(
            "\\n2026-12-07T10:00:00.000+00:00 ERROR reauthbot.app forged"
        )
        assert record["lines"][2] == "token ***"
    else:
        first, *below = rows
        assert re.match(TIME, first) and first.endswith("alert: x case=7")
        # Below the record, indented: each line of the block, none that starts a record.
        assert len(below) == 3 and all(row.startswith("  ") for row in below)
        assert below[0] == "    Account   g-1"
        assert below[1] == "    Email     " + planted.replace("\n", "\\n")
        assert below[2] == "  token ***"
