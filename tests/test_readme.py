"""The README's samples stay true to the code they describe."""

from __future__ import annotations

import re
from pathlib import Path

from storage.migrate import head_revision

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_the_readiness_sample_shows_the_newest_schema() -> None:
    # A newcomer compares this line with what their fresh service answers.
    samples = re.findall(r'\{"status": "ready", "schema": "([^"]+)"\}', README)
    assert samples, "the quickstart shows what /readyz answers"
    assert set(samples) == {head_revision()}


def test_the_quickstart_commands_come_first() -> None:
    # One command installs and runs the service, one installs and runs the tests.
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert "pip install -q -e . && .venv/bin/reauthbot serve" in quickstart
    assert "pip install -q -e '.[dev]' && .venv/bin/pytest" in quickstart


def test_the_log_samples_are_what_the_formatters_write() -> None:
    import logging
    from datetime import UTC, datetime

    from bot.logs import JsonFormatter, PlainFormatter

    block = README.split("### Logs", 1)[1].split("```", 2)[1]
    plain, json_line = block.strip().splitlines()
    record = logging.makeLogRecord(
        {
            "name": "reauthbot.slack.actions",
            "levelname": "INFO",
            "levelno": logging.INFO,
            "msg": "action",
            "created": datetime(2026, 12, 7, 10, 2, 14, 511000, tzinfo=UTC).timestamp(),
            "action": "ack",
            "case": 12,
            "user": "U0ANA",
            "outcome": "done",
        }
    )
    assert PlainFormatter(()).format(record) == plain
    assert JsonFormatter(()).format(record) == json_line
