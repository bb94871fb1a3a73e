"""Failures that repeat are one episode: a line when it starts, reminders, a line when it ends."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy.exc

from tests.conftest import FrozenClock
from workflows.episodes import DATABASE, NYLAS, SLACK, Episodes, classify, reason
from workflows.nylas import NylasUnavailable

START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(START)


@pytest.fixture
def episodes(clock: FrozenClock) -> Episodes:
    return Episodes(clock=clock, remind_every=timedelta(minutes=5))


def refused() -> ConnectionRefusedError:
    return ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")


def lines(caplog: pytest.LogCaptureFixture, level: int = logging.INFO) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "reauthbot.episodes" and r.levelno >= level]


def test_an_outage_is_one_line_however_often_it_fails(
    episodes: Episodes, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="reauthbot.episodes")
    for n in range(120):
        loop = "ingest" if n % 2 else "notifier"
        assert episodes.failed(refused(), loop=loop, retry_in=1.0) == DATABASE
        clock.advance(seconds=0.5)

    (line,) = lines(caplog)
    assert line.levelno == logging.ERROR
    assert line.getMessage() == (
        "database unreachable: ConnectionRefusedError: [Errno 111] Connect call failed "
        "('127.0.0.1', 5432); next retry at 09:00:01 UTC"
    )
    assert (line.episode, line.loop, line.failures) == (DATABASE, "notifier", 1)  # type: ignore[attr-defined]
    assert line.retry_at == "2026-03-02T09:00:01+00:00"  # type: ignore[attr-defined]
    assert line.error.startswith("ConnectionRefusedError: ")  # type: ignore[attr-defined]
    assert line.exc_info is None
    # Each attempt, with its traceback, is there at DEBUG.
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) == 120 and all(r.exc_info for r in debug)
    assert episodes.failing(DATABASE) and episodes.failures(DATABASE) == 120


def test_recovery_is_one_info_line_with_the_count_and_the_time_down(
    episodes: Episodes, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(30):
        episodes.failed(refused(), loop="ingest", retry_in=1.0)
        clock.advance(seconds=1)
    episodes.succeeded(DATABASE, "ingest")
    episodes.succeeded(DATABASE, "ingest")  # nothing left to end

    _first, back = lines(caplog)
    assert back.levelno == logging.INFO
    assert back.getMessage() == "database reachable again after 30 failures over 30s"
    assert (back.episode, back.failures, back.down_for) == (DATABASE, 30, 30.0)  # type: ignore[attr-defined]
    assert not episodes.failing(DATABASE)
    # The next failure starts a new episode, with its own first line.
    episodes.failed(refused(), loop="ingest")
    assert len(lines(caplog)) == 3


def test_a_long_outage_is_reminded_every_few_minutes_with_the_count(
    episodes: Episodes, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(12 * 60):  # twelve minutes, a failure a second
        episodes.failed(NylasUnavailable("Nylas answered 503"), loop="reconcile job", retry_in=1)
        clock.advance(seconds=1)

    first, *reminders = lines(caplog)
    assert first.getMessage().startswith("Nylas requests failing: NylasUnavailable: Nylas")
    assert first.levelno == logging.WARNING
    assert [r.failures for r in reminders] == [301, 601]  # type: ignore[attr-defined]
    assert reminders[0].getMessage() == (
        "Nylas requests failing for 5min, 301 failures so far: NylasUnavailable: Nylas "
        "answered 503; next retry at 09:05:01 UTC"
    )


def test_outages_of_different_things_are_told_apart(
    episodes: Episodes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    episodes.failed(refused(), loop="ingest")
    episodes.failed("http_503", loop="slack", what=SLACK)
    episodes.failed("http_503", loop="slack", what=SLACK)
    episodes.succeeded(SLACK)

    messages = [r.getMessage() for r in lines(caplog)]
    assert messages == [
        "database unreachable: ConnectionRefusedError: [Errno 111] Connect call failed "
        "('127.0.0.1', 5432)",
        "Slack not accepting messages: http_503",
        "Slack accepting messages again after 2 failures over 0s",
    ]
    assert episodes.failing(DATABASE) and not episodes.failing(SLACK)


def test_a_failure_no_outage_explains_shows_its_traceback_once(
    episodes: Episodes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    for _ in range(3):
        try:
            {}["missing"]
        except KeyError as exc:
            assert episodes.failed(exc, loop="stuck job") == "stuck job"
    episodes.succeeded("stuck job")

    first, back = lines(caplog)
    assert first.getMessage() == "stuck job failing: KeyError: 'missing'"
    assert first.levelno == logging.ERROR and first.exc_info is not None
    assert back.getMessage() == "stuck job working again after 3 failures over 0s"


def test_what_is_away_is_read_from_the_exception() -> None:
    assert classify(NylasUnavailable("503")) == NYLAS
    assert classify(refused()) == DATABASE
    assert classify(TimeoutError()) == DATABASE
    lost = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed"))
    assert classify(lost) == DATABASE
    assert classify(ValueError("a bug")) is None
    # The reason is one line, however long the error's text.
    assert (
        reason(sqlalchemy.exc.InterfaceError("SELECT\n1", {}, Exception("x" * 1000))).count("\n")
        == 0
    )
    assert len(reason(ValueError("y" * 1000))) <= 301


def test_an_attempt_that_began_before_the_outage_was_seen_proves_no_recovery(
    episodes: Episodes, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    in_flight = episodes.now()  # a commit under way as the connections are cut
    clock.advance(seconds=0.1)
    episodes.failed(refused(), loop="ingest")
    clock.advance(seconds=0.1)
    episodes.succeeded(DATABASE, "inbox writer", began=in_flight)  # its answer came first
    assert episodes.failing(DATABASE)

    clock.advance(seconds=2)
    back = episodes.now()
    episodes.succeeded(DATABASE, began=back)
    # An attempt that hung through the outage and fails after it ended starts no episode.
    clock.advance(seconds=1)
    episodes.failed(TimeoutError(), loop="readiness", began=in_flight)

    assert [r.getMessage().split(":")[0] for r in lines(caplog)] == [
        "database unreachable",
        "database reachable again after 1 failure over 2s",
    ]
    assert not episodes.failing(DATABASE)
