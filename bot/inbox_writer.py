"""Group commit for webhook deliveries.

Every delivery must be durable before Nylas gets its 2xx, and a commit costs an fsync. Rather
than one transaction per request, requests hand their entries to one writer, which stores
everything waiting in a single transaction and then answers each request. Under load many
deliveries share a commit; an idle service commits each one at once. On SQLite the writer's
commits run back to back on a worker thread for as long as requests keep arriving
(``storage.inbox.store_while_waiting``): the queue of waiting requests is shared with it.

The writer also paces the service's other writers, which must make room for it: ``paced``
wraps a background step (ingest, notifier) so that it rests while deliveries arrive, and
``step_aside`` tells a long transaction to commit early while deliveries wait for SQLite's
one write lock.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from storage import inbox
from storage.engine import is_sqlite
from workflows.clock import Clock
from workflows.episodes import DATABASE, Episodes
from workflows.nylas.webhooks import InboxEntry

log = logging.getLogger("reauthbot.inbox_writer")

MAX_BATCH = 500
# A request not stored within this many seconds is answered with TimeoutError (the webhook
# then answers 503, and Nylas retries).
STORE_TIMEOUT = 5.0
EXPIRY_CHECK_EVERY = 0.25
BUSY_WINDOW = 0.5
# Deliveries arrive faster than the service can both acknowledge and process them from this
# many a second, counted over BUSY_WINDOW: acknowledging one costs about 0.15 ms of the
# loop, processing one about 1 ms. Below it (a storm of a few hundred a second) processing
# must keep up; above it, acknowledging comes first and the backlog waits in the inbox. How
# many requests share a commit says little on SQLite: after each of the ingest worker's
# transactions, a commit carries a dozen even at 300 a second.
SATURATED_RATE = 1000.0
# While webhook deliveries arrive, background work rests twice as long as it worked, so
# acknowledging deliveries keeps about two thirds of the CPU; when they arrive faster than
# they can be acknowledged at that (many wait for each commit), eight times as long. A step
# that found a backlog rests less (see ``paced``): processing must keep up with arrival.
REST_UNDER_LOAD = 2.0
REST_SATURATED = 8.0
# The rest follows the step's wall time, which is mostly CPU; but a step that waited (for a
# database that stopped answering, say) did not use what it took, and resting eight times a
# minute's wait left the inbox unprocessed for many minutes after the database came back.
REST_MAX = 2.0


class Load(enum.Enum):
    """How hard webhook deliveries are arriving, for background work to make room."""

    IDLE = "idle"
    BUSY = "busy"  # some arrived within BUSY_WINDOW
    SATURATED = "saturated"  # at SATURATED_RATE deliveries a second or more


@dataclass
class _Request:
    entries: Sequence[InboxEntry]
    done: asyncio.Future[int]
    deadline: float  # time.monotonic()
    given_up: bool = False  # answered with TimeoutError before a commit took it


class InboxWriter:
    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Clock,
        timeout: float = STORE_TIMEOUT,
        saturated_rate: float = SATURATED_RATE,
        episodes: Episodes | None = None,
    ) -> None:
        self._engine = engine
        self._episodes = episodes or Episodes()
        self._clock = clock
        self._timeout = timeout
        self._saturated_rate = saturated_rate
        # Appended to on the event loop, taken from by the writer (a worker thread on SQLite).
        self._waiting: deque[_Request] = deque()
        self._committing: list[_Request] = []
        self._began: datetime | None = None  # when the batch being committed was taken
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake = asyncio.Event()
        self._last_store = -1e9
        # (time.monotonic(), requests) of the commits within BUSY_WINDOW; appended to by the
        # writer, read by load().
        self._commits: deque[tuple[float, int]] = deque()
        # SQLite has one writer at a time: other writers commit early when deliveries wait
        # to be stored. PostgreSQL stores them alongside, so they need not.
        self._single_writer = is_sqlite(engine)
        # Set by store() while the writer's thread lingers for the next delivery.
        self._arrived = threading.Event()
        self._lingering = False

    def waiting(self) -> bool:
        """True while deliveries wait to be stored."""
        return bool(self._waiting)

    def step_aside(self) -> bool:
        """True when another writer should commit early: deliveries wait for the write lock."""
        return self._single_writer and bool(self._waiting)

    def contended(self) -> bool:
        """True when deliveries keep arriving for the one write lock that other writers hold."""
        return self._single_writer and self.busy()

    def busy(self, within: float = BUSY_WINDOW) -> bool:
        """True when deliveries arrived in the last ``within`` seconds."""
        return time.monotonic() - self._last_store < within

    def load(self) -> Load:
        if not self.busy():
            return Load.IDLE
        since = time.monotonic() - BUSY_WINDOW
        recent = sum(n for at, n in list(self._commits) if at >= since)
        return Load.SATURATED if recent >= self._saturated_rate * BUSY_WINDOW else Load.BUSY

    async def store(self, entries: Sequence[InboxEntry]) -> int:
        """Store entries durably; return how many were new.

        Raises what the database raised, or TimeoutError when they are not stored within the
        writer's ``timeout`` (they may still be stored later; Nylas' retry is then a
        duplicate).
        """
        now = time.monotonic()
        self._last_store = now
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Request(entries, done, now + self._timeout))
        self._wake.set()
        if self._lingering:
            self._arrived.set()
        return await done

    async def run(self, stop: asyncio.Event) -> None:
        """Commit waiting requests until ``stop`` is set and nothing is left waiting."""
        self._loop = asyncio.get_running_loop()
        expiring = asyncio.create_task(self._expire())
        try:
            await self._write(stop)
        finally:
            expiring.cancel()
            with suppress(asyncio.CancelledError):
                await expiring

    async def _expire(self) -> None:
        """Every so often, answer the requests past their deadline with TimeoutError.

        One timer for all requests: a timeout scope per request cost the webhook more than
        a tenth of its time to store a delivery.
        """
        while True:
            await asyncio.sleep(min(EXPIRY_CHECK_EVERY, self._timeout / 4))
            now = time.monotonic()
            expired = 0
            # list() copies the queue in one step, while the writer's thread may take from it.
            for request in [*list(self._waiting), *self._committing]:
                if request.deadline <= now and not request.done.done():
                    request.given_up = True  # if still waiting, no commit will take it
                    request.done.set_exception(
                        TimeoutError(f"not stored within {self._timeout:g} s")
                    )
                    expired += 1
            if expired:
                # The database stopped answering (a commit that failed is reported by _settle).
                late = TimeoutError(
                    f"{expired} webhook deliveries not stored within {self._timeout:g} s"
                )
                self._episodes.failed(late, loop="inbox writer", what=DATABASE)

    async def _write(self, stop: asyncio.Event) -> None:
        while not (stop.is_set() and not self._waiting):
            if not self._waiting:
                self._wake.clear()
                stopping = asyncio.ensure_future(stop.wait())
                woken = asyncio.ensure_future(self._wake.wait())
                await asyncio.wait([stopping, woken], return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                woken.cancel()
                continue
            try:
                await inbox.store_while_waiting(
                    self._engine,
                    self._take,
                    self._stored,
                    received_at=self._clock,
                    linger=self.linger,
                )
            except Exception as exc:  # no connection: fail what waits, rather than spin
                failed = self._committing + list(self._waiting)
                self._committing = []
                self._waiting.clear()
                self._settle(failed, exc)

    def _take(self) -> list[tuple[str, str, str]] | None:
        """The next batch to commit (called by the writer, on its thread on SQLite)."""
        batch, rows = [], 0
        while rows < MAX_BATCH:
            try:
                request = self._waiting.popleft()
            except IndexError:
                break
            if not request.given_up:
                batch.append(request)
                rows += len(request.entries)
        if not batch:
            return None
        now = time.monotonic()
        while self._commits and self._commits[0][0] < now - BUSY_WINDOW:
            self._commits.popleft()
        self._commits.append((now, len(batch)))
        self._committing = batch
        self._began = self._episodes.now()
        return [(e.dedupe_key, e.source, e.body) for r in batch for e in r.entries]

    def linger(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for the next delivery, while they pour in (writer's thread).

        True when one arrived. Only at ``Load.SATURATED``, when the next one is due within a
        millisecond: keeping the connection and taking each delivery as it comes lets the
        commit of one batch overlap the event loop's answering of the batch before. Slower
        than that, the writer lets go of the connection at once: other writers wait for it.
        """
        if self.load() is not Load.SATURATED:
            return False
        self._arrived.clear()
        self._lingering = True
        try:
            return bool(self._waiting) or self._arrived.wait(timeout)
        finally:
            self._lingering = False

    def _stored(self, result: set[str] | Exception) -> None:
        """The batch taken last is committed, or failed (called as ``_take`` is)."""
        batch, self._committing = self._committing, []
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._settle, batch, result, self._began)

    def _settle(
        self,
        batch: list[_Request],
        result: set[str] | Exception,
        began: datetime | None = None,
    ) -> None:
        """Answer the requests of a batch, on the event loop."""
        if isinstance(result, Exception):
            if batch:
                # Nylas retries each refused delivery: no retry of ours to announce.
                log.debug("cannot store %d webhook deliveries", len(batch))
                self._episodes.failed(result, loop="inbox writer", began=began)
            for request in batch:
                if not request.done.done():
                    request.done.set_exception(result)
            return
        self._episodes.succeeded(DATABASE, "inbox writer", began=began)
        for request in batch:
            # A key repeated across requests counts as new for the first of them only.
            new = 0
            for entry in request.entries:
                if entry.dedupe_key in result:
                    result.discard(entry.dedupe_key)
                    new += 1
            if not request.done.done():  # the request may have timed out meanwhile
                request.done.set_result(new)


def paced(
    step: Callable[[], Awaitable[int]],
    load: Callable[[], Load],
    *,
    full: int | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Callable[[], Awaitable[int]]:
    """Wrap a background step so it yields the CPU while webhook deliveries are arriving.

    ``load`` is the writer's (``InboxWriter.load``). The work is safe in the inbox and the
    outbox, so it can wait; Nylas cannot. But not for ever: ``full`` is the most a step
    takes on, and a step that did that much left more waiting. While deliveries arrive no
    faster than they are acknowledged (``Load.BUSY``), a step rests the less the closer it
    came to ``full``, and not at all when it found a full batch: then processing lags
    arrival, and resting would only let the backlog grow.
    """
    rest = {Load.IDLE: 0.0, Load.BUSY: REST_UNDER_LOAD, Load.SATURATED: REST_SATURATED}

    async def run() -> int:
        started = clock()
        done = await step()
        now = load()
        factor = rest[now]
        if full and now is Load.BUSY:
            factor *= max(0.0, 1.0 - done / full)
        if done and factor:
            await sleep(min((clock() - started) * factor, REST_MAX))
        return done

    return run
