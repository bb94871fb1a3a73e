"""What the scenarios of ``bench.faults`` share.

- ``Sender`` delivers signed Nylas webhooks as Nylas does: each one until it is answered 2xx.
  An attempt that gets 408, 429 or a 5xx, no answer within Nylas' 10 s, or no connection is
  tried again after a backoff that doubles (with jitter) up to a ceiling. Nylas spaces its
  attempts over about 20 minutes; a scenario compresses that to seconds, so a delivery may take
  more attempts here than Nylas would make, and the figures say how many it took.
- ``Outcome`` is what a scenario measured (lines for the reader, figures for ``--json``) and
  what it checked; one failed check makes the run exit 1.
- ``Rows`` reads the service's database with the product's own models, read-only except for
  ``expire_leases``.
- ``compare_threads`` and ``posted_twice`` judge what the fake Slack received.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import aiohttp
from sqlalchemy import func, update
from sqlmodel import col, select

from bench._common import Db, say
from bot.slack.sink import thread_text
from storage.engine import create_engine, readonly_session_factory, session_factory
from storage.models import (
    Account,
    Case,
    CaseEvent,
    InboxDelivery,
    InboxStatus,
    Incident,
    OutboxKind,
    OutboxMessage,
    OutboxStatus,
)
from workflows.nylas import samples
from workflows.nylas.webhooks import sign, split

WEBHOOK_PATH = "/nylas/webhook"
NYLAS_TIMEOUT = 10.0  # Nylas counts an attempt as failed without an answer within this
RETRIED_STATUSES = frozenset({408, 429, 500, 502, 503, 504, 507})


# -- checks ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Check:
    what: str
    got: Any
    want: Any
    ok: bool


@dataclass
class Outcome:
    """What one scenario measured, what it saw, and what it checked."""

    scenario: str
    database: str
    lines: list[str] = field(default_factory=list)  # the figures, as the results block shows them
    figures: dict[str, Any] = field(default_factory=dict)  # the same, for --json
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None

    def expect(self, what: str, got: Any, want: Any = 0) -> bool:
        """Check that ``got`` equals ``want``; return whether it does."""
        ok = got == want
        self.checks.append(Check(what, got, want, ok))
        return ok

    def expect_that(self, what: str, ok: bool, got: Any, want: Any) -> bool:
        """Record a check whose rule is not plain equality (``want`` says it in words)."""
        self.checks.append(Check(what, got, want, ok))
        return ok

    @property
    def sound(self) -> bool:
        return all(c.ok for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "database": self.database,
            "skipped": self.skipped,
            "sound": self.sound,
            "figures": self.figures,
            "checks": [
                {"what": c.what, "got": _plain(c.got), "want": _plain(c.want), "ok": c.ok}
                for c in self.checks
            ],
            "notes": self.notes,
        }


def _plain(value: Any) -> Any:
    return value if isinstance(value, int | float | str | bool | type(None)) else repr(value)


# -- waiting and progress --------------------------------------------------------------------


def since(start: float) -> float:
    return time.perf_counter() - start


async def wait_until(
    ready: Callable[[], Awaitable[bool]], *, within: float, every: float = 0.25
) -> float | None:
    """Poll ``ready`` until it holds; return the seconds it took, None after ``within``."""
    start = time.perf_counter()
    while True:
        if await ready():
            return since(start)
        if since(start) > within:
            return None
        await asyncio.sleep(every)


class _Background:
    """Runs ``_run`` as a task while the ``async with`` block runs."""

    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class LoopLag(_Background):
    """How late this process's event loop ran: a fake, the sender and the checks share it, so a
    busy machine shows here before it distorts their figures."""

    def __init__(self, every: float = 0.1) -> None:
        self.every = every
        self.worst = 0.0

    async def _run(self) -> None:
        while True:
            began = time.perf_counter()
            await asyncio.sleep(self.every)
            self.worst = max(self.worst, time.perf_counter() - began - self.every)


class Ticker(_Background):
    """Prints ``line()`` every ``every`` seconds while the block runs (long phases)."""

    def __init__(self, every: float, line: Callable[[], Awaitable[str]]) -> None:
        self._every = every
        self._line = line

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            say("  " + await self._line())


def log_lines(log: Path) -> dict[str, Any]:
    """How many ERROR and WARNING lines the service wrote, and the first errors."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    errors = [line for line in lines if " ERROR " in line]
    return {
        "errors": len(errors),
        "warnings": sum(1 for line in lines if " WARNING " in line),
        # The plain format indents a traceback under the record it belongs to.
        "tracebacks": sum(1 for line in lines if line.lstrip().startswith("Traceback (")),
        "first_errors": [line[:300] for line in errors[:3]],
    }


# -- webhooks, sent as Nylas sends them ------------------------------------------------------


@dataclass(eq=False)
class Delivery:
    """One webhook delivery (one notification); ``key`` is its inbox dedupe key."""

    key: str
    raw: bytes
    headers: dict[str, str]
    attempts: int = 0
    first_try: float | None = None  # perf_counter
    acked_at: float | None = None
    rejected: str | None = None  # a final answer that is neither 2xx nor worth retrying
    failures: list[float] = field(default_factory=list)  # when its failed attempts ended


def v3_delivery(
    secret: str,
    trigger: str,
    *,
    grant_id: str,
    email: str,
    at: datetime,
    provider: str = "google",
    notification_id: str | None = None,
    reauthenticated: bool = False,
) -> Delivery:
    payload = samples.v3_notification(
        trigger,
        grant_id=grant_id,
        email=email,
        at=at,
        provider=provider,
        notification_id=notification_id,
        reauthenticated=reauthenticated,
    )
    return signed_delivery("v3", secret, json.dumps(payload).encode())


def v2_delivery(secret: str, trigger: str, *, account_id: str, at: datetime) -> Delivery:
    payload = samples.v2_delivery(trigger, account_id=account_id, at=at)
    return signed_delivery("v2", secret, json.dumps(payload).encode())


def signed_delivery(version: str, secret: str, raw: bytes) -> Delivery:
    """A delivery of ``raw`` signed with ``secret``, keyed as the service will store it."""
    (entry,) = split(version, raw)  # the product's own reading gives the inbox key
    headers = {"Content-Type": "application/json", "X-Nylas-Signature": sign(secret, raw)}
    return Delivery(entry.dedupe_key, raw, headers)


@dataclass(frozen=True, slots=True)
class Attempt:
    ended: float  # perf_counter
    outcome: str  # "200", "503", "no answer in 10 s", "no connection"...
    seconds: float
    retry_after: str | None = None


class Sender:
    """Sends deliveries to ``target`` and retries each until it is answered 2xx.

    ``target`` may change between attempts (a restarted service listening elsewhere).
    """

    def __init__(self, *, first_retry: float, max_retry: float, seed: int = 7) -> None:
        self.target = ""
        self.first_retry = first_retry
        self.max_retry = max_retry
        self.attempts: list[Attempt] = []
        self.deliveries: list[Delivery] = []
        self.in_flight = 0
        self._rng = random.Random(seed)
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        # No limit on connections: Nylas sends each delivery as it comes, and a pool here would
        # make requests queue in this process, where their 10 s would run out unseen.
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=NYLAS_TIMEOUT),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        assert self._http is not None
        await self._http.close()

    # -- figures -------------------------------------------------------------------------

    @property
    def started(self) -> int:
        return sum(1 for d in self.deliveries if d.first_try is not None)

    @property
    def acked(self) -> int:
        return sum(1 for d in self.deliveries if d.acked_at is not None)

    @property
    def rejected(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.rejected is not None]

    @property
    def unanswered(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.acked_at is None and d.rejected is None]

    def failed_attempts(self) -> int:
        return sum(1 for a in self.attempts if not a.outcome.startswith("2"))

    def outcomes(self, start: float = 0.0, end: float = float("inf")) -> Counter[str]:
        """How the attempts that ended between ``start`` and ``end`` went."""
        return Counter(a.outcome for a in self.attempts if start <= a.ended < end)

    def attempts_per_delivery(self) -> Counter[int]:
        return Counter(d.attempts for d in self.deliveries)

    def summary(self) -> str:
        failed = self.failed_attempts()
        return (
            f"{self.acked:,} of {len(self.deliveries):,} deliveries acknowledged, "
            f"{failed:,} failed attempts retried, {self.in_flight} in flight"
        )

    # -- sending -------------------------------------------------------------------------

    def start(self, deliveries: Sequence[Delivery], *, seconds: float) -> asyncio.Task[None]:
        """Start the deliveries evenly over ``seconds`` (open loop); the task ends when every
        one of them is acknowledged or rejected."""
        return asyncio.create_task(self._send_all(list(deliveries), seconds))

    async def deliver_now(self, deliveries: Iterable[Delivery]) -> None:
        """Send these at once, each until it is acknowledged."""
        await self._send_all(list(deliveries), 0.0)

    async def _send_all(self, deliveries: list[Delivery], seconds: float) -> None:
        self.deliveries.extend(deliveries)
        start = time.perf_counter()
        interval = seconds / max(len(deliveries), 1)
        tasks = []
        for i, delivery in enumerate(deliveries):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self._deliver(delivery)))
        self._tasks.extend(tasks)
        await asyncio.gather(*tasks)

    def backoff(self, attempts: int) -> float:
        base = min(self.first_retry * 2 ** min(attempts - 1, 20), self.max_retry)
        return base * self._rng.uniform(0.8, 1.2)

    async def _deliver(self, delivery: Delivery) -> None:
        while True:
            delivery.attempts += 1
            status = await self._attempt(delivery)
            if status is not None and 200 <= status < 300:
                delivery.acked_at = time.perf_counter()
                return
            if status is not None and status not in RETRIED_STATUSES:
                delivery.rejected = str(status)
                return
            delivery.failures.append(time.perf_counter())
            await asyncio.sleep(self.backoff(delivery.attempts))

    async def _attempt(self, delivery: Delivery) -> int | None:
        assert self._http is not None
        began = time.perf_counter()
        if delivery.first_try is None:
            delivery.first_try = began
        self.in_flight += 1
        status: int | None = None
        retry_after = None
        try:
            async with self._http.post(
                self.target, data=delivery.raw, headers=delivery.headers
            ) as answer:
                await answer.read()
                status = answer.status
                retry_after = answer.headers.get("Retry-After")
            outcome = str(status)
        except TimeoutError:
            outcome = f"no answer in {NYLAS_TIMEOUT:g} s"
        except aiohttp.ClientConnectorError:
            outcome = "no connection"
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            outcome = "connection lost"
        except aiohttp.ClientError as exc:
            outcome = type(exc).__name__
        finally:
            self.in_flight -= 1
        ended = time.perf_counter()
        self.attempts.append(Attempt(ended, outcome, ended - began, retry_after))
        return status


# -- the service's rows ----------------------------------------------------------------------


class Rows:
    """Reads the service's database through the product's models (sessions that only read)."""

    def __init__(self, db: Db) -> None:
        self.engine = create_engine(db.service_url)
        self.read = readonly_session_factory(self.engine)
        self.write = session_factory(self.engine)

    async def close(self) -> None:
        await self.engine.dispose()

    async def count_by(self, column: Any) -> dict[str, int]:
        async with self.read() as session:
            rows = await session.exec(select(column, func.count()).group_by(column))
            return {str(value): int(n) for value, n in rows.all()}

    async def inbox(self) -> dict[str, int]:
        return await self.count_by(InboxDelivery.status)

    async def outbox(self) -> dict[str, int]:
        return await self.count_by(OutboxMessage.status)

    async def cases(self) -> dict[str, int]:
        return await self.count_by(Case.status)

    async def inbox_keys(self) -> dict[str, tuple[str, int]]:
        """Dedupe key -> (status, attempts) of every stored delivery."""
        async with self.read() as session:
            rows = await session.exec(
                select(InboxDelivery.dedupe_key, InboxDelivery.status, InboxDelivery.attempts)
            )
            return {key: (str(status), int(n)) for key, status, n in rows.all()}

    async def all_cases(self) -> list[Case]:
        async with self.read() as session:
            return list(await session.exec(select(Case).order_by(col(Case.id))))

    async def all_accounts(self) -> dict[str, Account]:
        async with self.read() as session:
            return {a.id: a for a in await session.exec(select(Account))}

    async def all_incidents(self) -> list[Incident]:
        async with self.read() as session:
            return list(await session.exec(select(Incident).order_by(col(Incident.id))))

    async def outbox_rows(self) -> list[OutboxMessage]:
        async with self.read() as session:
            return list(await session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id))))

    async def events(self, action: str) -> list[CaseEvent]:
        async with self.read() as session:
            stmt = select(CaseEvent).where(CaseEvent.action == action)
            return list(await session.exec(stmt.order_by(col(CaseEvent.id))))

    async def leased_outbox(self) -> int:
        """Pending messages leased by a process (which may be dead)."""
        now = datetime.now(UTC)
        async with self.read() as session:
            stmt = select(func.count()).where(
                OutboxMessage.status == OutboxStatus.PENDING,
                col(OutboxMessage.lease_until) > now,
            )
            return int((await session.exec(stmt)).one())

    async def expire_leases(self) -> int:
        """End every outbox lease now, as if the minute a dead process held them had passed."""
        async with self.write() as session, session.begin():
            result = await session.exec(
                update(OutboxMessage)
                .where(
                    col(OutboxMessage.lease_until).is_not(None),
                    col(OutboxMessage.status) == OutboxStatus.PENDING,
                )
                .values(lease_until=datetime.now(UTC) - timedelta(seconds=1))
            )
            return int(result.rowcount)


def pending(counts: Mapping[str, int]) -> int:
    """The rows still to do, from ``Rows.inbox()`` or ``Rows.outbox()``."""
    assert InboxStatus.PENDING == OutboxStatus.PENDING
    return counts.get(InboxStatus.PENDING, 0)


# -- what Slack received ---------------------------------------------------------------------


def parent_posts(messages: Mapping[tuple[str, str], dict[str, Any]]) -> dict[str, list[str]]:
    """Subject ("case 3", "incident 1") -> the ts of every top-level message posted for it,
    told by the metadata every parent message carries."""
    found: dict[str, list[str]] = {}
    for (_, ts), message in messages.items():
        if message.get("thread_ts", ts) != ts:
            continue
        metadata = message.get("metadata") or {}
        payload = metadata.get("event_payload") or {}
        for key, noun in (("case_id", "case"), ("incident_id", "incident")):
            if key in payload:
                found.setdefault(f"{noun} {payload[key]}", []).append(ts)
    return found


def posted_twice(posts: Mapping[str, list[str]]) -> list[str]:
    """Subjects whose parent message was posted more than once."""
    return sorted(subject for subject, stamps in posts.items() if len(stamps) > 1)


@dataclass
class ThreadReport:
    """Thread lines as written to the outbox against the replies Slack holds, per parent."""

    written: int = 0
    arrived: int = 0
    missing: list[str] = field(default_factory=list)
    repeated: list[str] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)


def compare_threads(
    written: Mapping[str, Sequence[str]], arrived: Mapping[str, Sequence[str]]
) -> ThreadReport:
    """Per subject: lines never delivered, delivered more than once, or in another order than
    written (judged on the lines that arrived, each at its first arrival)."""
    report = ThreadReport()
    for subject in sorted(set(written) | set(arrived)):
        want, got = list(written.get(subject, ())), list(arrived.get(subject, ()))
        report.written += len(want)
        report.arrived += len(got)
        lost, extra = Counter(want) - Counter(got), Counter(got) - Counter(want)
        report.missing += [f"{subject}: {line[:80]}" for line in lost.elements()]
        report.repeated += [f"{subject}: {line[:80]}" for line in extra.elements()]
        both = set(want) & set(got)
        if _firsts(got, both) != _firsts(want, both):
            report.out_of_order.append(subject)
    return report


def _firsts(lines: Sequence[str], keep: set[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for line in lines:
        if line in keep and line not in seen:
            seen.add(line)
            out.append(line)
    return out


def written_lines(rows: Iterable[OutboxMessage]) -> dict[str, list[str]]:
    """Subject -> its thread lines in the order the service wrote them."""
    found: dict[str, list[str]] = {}
    for row in rows:
        if row.kind != OutboxKind.THREAD:
            continue
        subject = f"incident {row.incident_id}" if row.incident_id else f"case {row.case_id}"
        found.setdefault(subject, []).append(thread_text(row))
    return found


def arrived_lines(
    thread: Callable[[str, str], list[dict[str, Any]]],
    parents: Iterable[tuple[str, str | None, str | None]],
) -> dict[str, list[str]]:
    """Subject -> the replies under its parent message, oldest first; ``parents`` gives
    (subject, channel, ts) as the database stores them."""
    return {
        subject: [str(m.get("text", "")) for m in thread(channel, ts)]
        for subject, channel, ts in parents
        if channel and ts
    }


ESCALATED = re.compile(r"Escalated \(([^)]*)\)")


def escalation_steps(rows: Iterable[OutboxMessage]) -> Counter[tuple[str, str]]:
    """(subject, step) -> how many times the step was run, from the thread lines it wrote."""
    steps: Counter[tuple[str, str]] = Counter()
    for subject, lines in written_lines(rows).items():
        for line in lines:
            found = ESCALATED.search(line)
            if found:
                steps[(subject, found.group(1))] += 1
    return steps


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of Prometheus text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name + ("{" + wanted + "}" if wanted else "")) + r" (\S+)"
    found = re.search(r"^" + pattern + r"$", text, re.M)
    return float(found.group(1)) if found else 0.0


def tally(counts: Counter[str]) -> str:
    """ "200 x3000, no connection x68": a Counter, most common first."""
    return ", ".join(f"{k} x{v}" for k, v in counts.most_common())


def rounded(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def seconds(value: float | None, *, none: str = "never") -> str:
    return none if value is None else f"{value:.1f} s"


@dataclass(frozen=True, slots=True)
class Context:
    """Where a scenario runs: its directory, its database, and the size of the run."""

    quick: bool
    db: Db
    tmp: Path
    outage: float | None  # --outage: the length of each outage phase, seconds

    @property
    def log(self) -> Path:
        """The service's log (every start of the service appends to it)."""
        return self.tmp / "serve.log"

    def phase(self, length: float) -> float:
        """The length of an outage phase: --outage if given, else the profile's ``length``."""
        return length if self.outage is None else self.outage
