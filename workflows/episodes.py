"""Failures that repeat, logged once per episode instead of once per attempt.

Every retrying part of the service (the inbox writer, the ingest and outbox drains, the
scheduled jobs, the migration retry, readiness and the metrics scrape) meets the same outage
at the same time: with the database down, each of them fails every second. They report to one
:class:`Episodes`, which groups failures by what failed (``DATABASE``, ``SLACK``, ``NYLAS``…,
or, for a failure it cannot place, the loop that saw it) and writes:

- on the first failure, one line: what failed, the one-line reason and the next retry;
- while it keeps failing, nothing per attempt, only a reminder every ``remind_every`` with
  the count so far;
- on the first success afterwards, one INFO line: "database reachable again after 12
  failures over 30s".

Each attempt's traceback is logged at DEBUG. A failure that names no known outage may be a
bug: its first line carries the traceback too, once per episode.

The lines carry these fields: ``episode`` (what failed), ``loop`` (the part that saw it
first), ``error`` (the reason), ``failures`` (how many so far), ``retry_at`` (the next
attempt, when known) and, on recovery, ``down_for`` (seconds).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import sqlalchemy.exc

from workflows.clock import Clock, system_clock
from workflows.nylas.errors import NylasError

log = logging.getLogger("reauthbot.episodes")

DATABASE = "database"
SLACK = "slack"
NYLAS = "nylas"
PAGERDUTY = "pagerduty"
OUTREACH = "outreach"

# How an outage of each is told: (while it fails, once it works again).
WORDS: dict[str, tuple[str, str]] = {
    DATABASE: ("database unreachable", "database reachable again"),
    SLACK: ("Slack not accepting messages", "Slack accepting messages again"),
    NYLAS: ("Nylas requests failing", "Nylas answering again"),
    PAGERDUTY: ("PagerDuty not accepting events", "PagerDuty accepting events again"),
    OUTREACH: ("end-user outreach failing", "end-user outreach working again"),
}
REMIND_EVERY = timedelta(minutes=5)
REASON_LIMIT = 300

# What a lost or refused database connection raises: SQLAlchemy's wrappers, and what a
# driver raises while connecting (a refused or reset socket, a connect that timed out).
DATABASE_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.DBAPIError,
    sqlalchemy.exc.TimeoutError,
    OSError,
    TimeoutError,
)


def reason(error: BaseException | str) -> str:
    """The one-line reason: the error's class and the first line of its text."""
    if isinstance(error, str):
        text = error
    else:
        first = str(error).strip().splitlines()
        text = f"{type(error).__name__}: {first[0]}" if first else type(error).__name__
    return text if len(text) <= REASON_LIMIT else text[:REASON_LIMIT] + "…"


def classify(error: BaseException) -> str | None:
    """What an exception says is away, or None when it names no known outage."""
    if isinstance(error, NylasError):
        return NYLAS
    if isinstance(error, DATABASE_ERRORS):
        return DATABASE
    return None


@dataclass
class _Episode:
    started: datetime
    reminded: datetime
    loop: str
    failures: int = 0
    loops: set[str] = field(default_factory=set)


class Episodes:
    """The outages in progress, one episode per thing that failed."""

    def __init__(
        self,
        *,
        clock: Clock = system_clock,
        remind_every: timedelta = REMIND_EVERY,
        logger: logging.Logger = log,
    ) -> None:
        self._clock = clock
        self._remind_every = remind_every
        self._log = logger
        self._open: dict[str, _Episode] = {}
        self._ended: dict[str, datetime] = {}  # when the last episode of each ended

    def now(self) -> datetime:
        """The time by the tracker's clock: what an attempt passes as ``began``."""
        return self._clock()

    def failing(self, what: str) -> bool:
        """True while an episode of ``what`` is open."""
        return what in self._open

    def failures(self, what: str) -> int:
        """How many failures the open episode of ``what`` counts (0 when none is open)."""
        episode = self._open.get(what)
        return 0 if episode is None else episode.failures

    def failed(
        self,
        error: BaseException | str,
        *,
        loop: str,
        what: str | None = None,
        retry_at: datetime | None = None,
        retry_in: float | None = None,
        began: datetime | None = None,
    ) -> str:
        """Count one failed attempt of ``loop``; return the episode it belongs to.

        ``what`` failed, or else what ``error`` says failed, or else the loop itself. The
        next attempt is at ``retry_at``, or ``retry_in`` seconds from now, when known. An
        attempt that ``began`` before the last episode of ``what`` ended (one that hung
        through the outage) is counted at DEBUG only: it starts no new episode.
        """
        known = classify(error) if isinstance(error, BaseException) else None
        what = what or known or loop
        trace = error if isinstance(error, BaseException) else None
        fields = {"episode": what, "loop": loop}
        self._log.debug("%s failed: %s", loop, reason(error), extra=fields, exc_info=trace)
        now = self._clock()
        if retry_at is None and retry_in is not None:
            retry_at = now + timedelta(seconds=retry_in)
        episode = self._open.get(what)
        ended = self._ended.get(what)
        if episode is None and began is not None and ended is not None and began < ended:
            return what
        if episode is None:
            episode = self._open[what] = _Episode(started=now, reminded=now, loop=loop)
            episode.failures, episode.loops = 1, {loop}
            # A failure no outage explains may be a bug: its traceback, once, is worth reading.
            bug = trace if what == loop else None
            self._write(what, episode, error, retry_at, first=True, exc_info=bug)
            return what
        episode.failures += 1
        episode.loops.add(loop)
        if now - episode.reminded >= self._remind_every:
            episode.reminded = now
            self._write(what, episode, error, retry_at, first=False)
        return what

    def succeeded(self, *what: str, began: datetime | None = None) -> None:
        """Close the episodes of ``what``, if open: each gets its one recovery line.

        An attempt that ``began`` before an episode started proves nothing about it (it may
        have got its answer just before the outage was seen) and closes none.
        """
        if not self._open:
            return
        for name in what:
            episode = self._open.get(name)
            if episode is None or (began is not None and began < episode.started):
                continue
            del self._open[name]
            now = self._clock()
            self._ended[name] = now
            down_for = (now - episode.started).total_seconds()
            self._log.info(
                "%s after %d failure%s over %s",
                _words(name)[1],
                episode.failures,
                "" if episode.failures == 1 else "s",
                _duration(down_for),
                extra={
                    "episode": name,
                    "failures": episode.failures,
                    "down_for": round(down_for, 1),
                },
            )

    def _write(
        self,
        what: str,
        episode: _Episode,
        error: BaseException | str,
        retry_at: datetime | None,
        *,
        first: bool,
        exc_info: BaseException | None = None,
    ) -> None:
        level = logging.ERROR if what == DATABASE or what not in WORDS else logging.WARNING
        failing = _words(what)[0]
        why = reason(error)
        if first:
            message = f"{failing}: {why}"
        else:
            since = (self._clock() - episode.started).total_seconds()
            count = f"{episode.failures} failures so far"
            message = f"{failing} for {_duration(since)}, {count}: {why}"
        if retry_at is not None:
            message += f"; next retry at {retry_at.strftime('%H:%M:%S')} UTC"
        fields: dict[str, object] = {
            "episode": what,
            "loop": episode.loop,
            "error": why,
            "failures": episode.failures,
        }
        if retry_at is not None:
            fields["retry_at"] = retry_at.isoformat(timespec="seconds")
        self._log.log(level, message, extra=fields, exc_info=exc_info)


def _words(what: str) -> tuple[str, str]:
    return WORDS.get(what, (f"{what} failing", f"{what} working again"))


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"
