"""Scenario ``slack-outage``: Slack answers 5xx for minutes, later 429 for minutes.

The long variant of ``tests/faults/test_slack_outage.py``. The service posts to the fake
Slack through ``tests.fakes.http_faults.FaultyProxy``, which spoils what it is told to. Cases
open all along (a signed ``grant.expired`` every few seconds, four domains routed to four
channels, storms off so that each case has its own message) and change: an operator
acknowledges, then snoozes, each case whose alert is in Slack (signed clicks, as Slack sends
them), and two cases in three are resolved by a ``grant.updated`` re-authentication.

1. a warm-up with Slack well;
2. every Web API method answers 503 for ``errors`` seconds;
3. Slack is well again: the time until every message written before the end of the outage is
   delivered is measured; the next phase waits for that;
4. ``chat.postMessage`` and ``chat.update`` answer 429 with ``Retry-After`` for
   ``ratelimited`` seconds; then the same measure;
5. the cases stop changing and everything left is delivered.

Checks: every webhook and click acknowledged (clicks within Slack's 3 s); each case's alert
posted once where its row says; every thread line delivered once, in the order written; each
alert's last update showing its case as it ended; no message given up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from aiohttp import web
from sqlmodel import func, select

from bench._common import percentile, say
from bench._faults import (
    WEBHOOK_PATH,
    Context,
    Outcome,
    Rows,
    Sender,
    Ticker,
    arrived_lines,
    compare_threads,
    log_lines,
    parent_posts,
    pending,
    posted_twice,
    seconds,
    since,
    v3_delivery,
    wait_until,
    written_lines,
)
from bench.storm import SIGNING_SECRET, click_body, signed_click
from bot.slack import ids
from bot.slack.blocks import fallback_text
from storage.models import CaseStatus, OutboxMessage, OutboxStatus
from tests.cli import service
from tests.conftest import WEBHOOK_SECRET
from tests.fakes.http_faults import FaultyProxy
from tests.fakes.slack import FakeSlack

NAME = "slack-outage"
SUMMARY = "Slack answers 5xx, then 429 with Retry-After, while cases open and change"
NEEDS_POSTGRES = False

TOKEN = "xoxb-outage-token"
CHANNELS = ("C0ALERTS1", "C0ALERTS2", "C0ALERTS3", "C0ALERTS4")
PROVIDERS = ("google", "microsoft", "imap", "yahoo")
POLICY = (
    "[storms]\nthreshold = 1000000\n[routing.domains]\n"
    + "\n".join(f'"tenant{i}.example" = "{c}"' for i, c in enumerate(CHANNELS))
    + "\n"
)
SLACK_DEADLINE = 3.0  # seconds Slack waits for a click's acknowledgement
STABLE_FOR = 5.0
PROGRESS_EVERY = 10.0
WRITES = ("/api/chat.postMessage", "/api/chat.update")


@dataclass(frozen=True, slots=True)
class Profile:
    warmup: float
    errors: float  # Slack answers 5xx this long
    between: float  # at least this long between the two outages
    ratelimited: float  # and 429 this long
    retry_after: int
    tick: float  # the operators and Nylas act this often
    open_every: int  # a new case every so many ticks
    ack_after: float  # a case's age when it is acknowledged, snoozed, resolved
    snooze_after: float
    resolve_after: float
    timeout: float  # longest wait for a backlog to be delivered


FULL = Profile(
    warmup=30.0,
    errors=180.0,
    between=30.0,
    ratelimited=180.0,
    retry_after=10,
    tick=1.0,
    open_every=6,
    ack_after=10.0,
    snooze_after=20.0,
    resolve_after=40.0,
    timeout=900.0,
)
QUICK = Profile(
    warmup=2.0,
    errors=4.0,
    between=1.0,
    ratelimited=4.0,
    retry_after=2,
    tick=0.5,
    open_every=3,
    ack_after=1.5,
    snooze_after=3.0,
    resolve_after=4.0,
    timeout=60.0,
)


@dataclass
class Planned:
    """One case of the script: its grant, when it opened, what was done to it."""

    n: int
    opened: float  # perf_counter
    done: set[str] = field(default_factory=set)

    @property
    def grant(self) -> str:
        return f"g-{self.n}"

    @property
    def email(self) -> str:
        return f"user{self.n}@tenant{self.n % len(CHANNELS)}.example"


class Operators:
    """Nylas and the operators: open cases, click on posted alerts, resolve by webhook."""

    def __init__(self, profile: Profile, rows: Rows, slack: FakeSlack, sender: Sender) -> None:
        self.profile = profile
        self.rows = rows
        self.slack = slack
        self.sender = sender
        self.base = ""
        self.cases: list[Planned] = []
        self.clicks: Counter[str] = Counter()
        self.click_answers: Counter[int] = Counter()
        self.click_latency: list[float] = []
        self.resolved = 0
        self._http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            self._http = http
            tick = 0
            while not stop.is_set():
                if tick % self.profile.open_every == 0:
                    self._open()
                await self._act()
                tick += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.profile.tick)
            await asyncio.gather(*self._tasks)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _open(self) -> None:
        case = Planned(len(self.cases) + 1, time.perf_counter())
        self.cases.append(case)
        delivery = v3_delivery(
            WEBHOOK_SECRET,
            "grant.expired",
            grant_id=case.grant,
            email=case.email,
            provider=PROVIDERS[case.n % len(PROVIDERS)],
            at=datetime.now(UTC),
        )
        self._spawn(self.sender.deliver_now([delivery]))

    async def _act(self) -> None:
        p = self.profile
        stored = {c.account_id: c for c in await self.rows.all_cases()}
        for case in self.cases:
            age = since(case.opened)
            row = stored.get(case.grant)
            if row is None or row.status == CaseStatus.RESOLVED:
                continue
            # An operator can only press the buttons of an alert that is in Slack.
            if row.slack_ts and age >= p.ack_after and "ack" not in case.done:
                case.done.add("ack")
                self._spawn(self._click(ids.ACK, str(row.id), row.slack_ts))
            elif row.slack_ts and age >= p.snooze_after and "snooze" not in case.done:
                case.done.add("snooze")
                self._spawn(self._click(ids.SNOOZE, f"{row.id}:1h", row.slack_ts))
            if age >= p.resolve_after and case.n % 3 and "resolve" not in case.done:
                case.done.add("resolve")
                self.resolved += 1
                delivery = v3_delivery(
                    WEBHOOK_SECRET,
                    "grant.updated",
                    grant_id=case.grant,
                    email=case.email,
                    provider=PROVIDERS[case.n % len(PROVIDERS)],
                    at=datetime.now(UTC),
                    reauthenticated=True,
                )
                self._spawn(self.sender.deliver_now([delivery]))

    async def _click(self, action_id: str, value: str, message_ts: str) -> None:
        assert self._http is not None
        n = sum(self.clicks.values()) + 1
        self.clicks[action_id] += 1
        body = click_body(action_id, value, n, message_ts, self.slack.response_url(n))
        began = time.perf_counter()
        try:
            async with self._http.post(
                self.base + ids.EVENTS_PATH, data=body, headers=signed_click(body)
            ) as answer:
                await answer.read()
                self.click_answers[answer.status] += 1
        except (aiohttp.ClientError, TimeoutError):
            self.click_answers[0] += 1
            return
        self.click_latency.append(since(began))


async def pending_written_before(rows: Rows, moment: datetime) -> int:
    """Messages written up to ``moment`` that are still to be delivered."""
    async with rows.read() as session:
        stmt = select(func.count()).where(
            OutboxMessage.status == OutboxStatus.PENDING, OutboxMessage.created_at <= moment
        )
        return int((await session.exec(stmt)).one())


async def run(ctx: Context) -> Outcome:
    profile = QUICK if ctx.quick else FULL
    outcome = Outcome(NAME, ctx.db.label)
    config = ctx.tmp / "policy.toml"
    config.write_text(POLICY)
    rows = Rows(ctx.db)
    try:
        async with (
            FakeSlack(bot_token=TOKEN) as slack,
            FaultyProxy(slack.url.removesuffix("/api/")) as proxy,
            Sender(first_retry=1.0, max_retry=10.0) as sender,
        ):
            env = {
                "DATABASE_URL": ctx.db.service_url,
                "SLACK_BOT_TOKEN": TOKEN,
                "SLACK_SIGNING_SECRET": SIGNING_SECRET,
                "SLACK_ALERT_CHANNEL": CHANNELS[0],
                "SLACK_API_URL": proxy.url + "/api/",
                "NYLAS_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "REAUTHBOT_CONFIG": str(config),
                "REAUTHBOT_LOG_LEVEL": "WARNING",
            }
            operators = Operators(profile, rows, slack, sender)
            async with service(ctx.tmp, ctx.log, env) as base:
                sender.target = base + WEBHOOK_PATH
                operators.base = base
                await outages(ctx, profile, outcome, rows, slack, proxy, operators)
            await judge(ctx, outcome, rows, slack, sender, operators)
    finally:
        await rows.close()
    return outcome


async def outages(
    ctx: Context,
    profile: Profile,
    outcome: Outcome,
    rows: Rows,
    slack: FakeSlack,
    proxy: FaultyProxy,
    operators: Operators,
) -> None:
    start = time.perf_counter()
    phase = "warm-up"

    async def progress() -> str:
        outbox = await rows.outbox()
        return (
            f"{since(start):6.1f} s, {phase}: {len(operators.cases)} cases opened, "
            f"{sum(operators.clicks.values())} clicks; outbox pending {pending(outbox)}; "
            f"Slack holds {len(slack.messages)} messages; {proxy.failed} calls refused"
        )

    stop = asyncio.Event()
    acting = asyncio.create_task(operators.run(stop))
    phases: dict[str, Any] = {}
    try:
        async with Ticker(PROGRESS_EVERY, progress):
            say(f"warm-up {profile.warmup:g} s")
            await asyncio.sleep(profile.warmup)
            spoils = (
                ("5xx", ctx.phase(profile.errors), _server_errors),
                ("429", ctx.phase(profile.ratelimited), _rate_limits),
            )
            for n, (label, length, spoil) in enumerate(spoils):
                if n:
                    await asyncio.sleep(profile.between)
                phase = f"Slack answering {label}"
                say(f"{phase} for {length:g} s")
                refused_before = proxy.failed
                began, began_at = datetime.now(UTC), time.perf_counter()
                spoil(proxy, profile)
                await asyncio.sleep(length)

                async def felt(before: int = refused_before) -> bool:
                    return proxy.failed > before

                # An outage nobody ran into tests nothing: it lasts until a call was refused.
                await wait_until(felt, within=profile.timeout)
                proxy.clear()
                lasted = since(began_at)
                outcome.expect_that(
                    f"the {label} outage refused calls of the service",
                    proxy.failed > refused_before,
                    proxy.failed - refused_before,
                    "at least 1",
                )
                ended = datetime.now(UTC)
                backlog = await pending_written_before(rows, ended)
                phase = f"after the {label} outage"
                say(f"Slack well again; {backlog} messages written before wait for it")

                async def delivered(moment: datetime = ended) -> bool:
                    return not await pending_written_before(rows, moment)

                took = await wait_until(delivered, within=profile.timeout, every=0.25)
                async with rows.read() as session:
                    written = await session.exec(
                        select(func.count()).where(
                            OutboxMessage.created_at >= began, OutboxMessage.created_at <= ended
                        )
                    )
                    written_during = int(written.one())
                phases[label] = {
                    "seconds": round(lasted, 1),
                    "calls_refused": proxy.failed - refused_before,
                    "written_during": written_during,
                    "backlog_at_end": backlog,
                    "delivered_after_s": None if took is None else round(took, 1),
                }
                say(f"backlog of the {label} outage delivered {seconds(took, none='not')} later")
                outcome.expect_that(
                    f"backlog of the {label} outage delivered within {profile.timeout:g} s",
                    took is not None,
                    seconds(took, none="no"),
                    "yes",
                )
            phase = "cases no longer changing"
            stop.set()
            await acting

            async def quiet() -> bool:
                return not pending(await rows.outbox())

            drained: float | None = None
            while drained is None or not await quiet():
                drained = await wait_until(quiet, within=profile.timeout)
                if drained is None:
                    break
                await asyncio.sleep(STABLE_FOR)
    finally:
        stop.set()
        await asyncio.gather(acting, return_exceptions=True)
    outcome.figures["phases"] = phases
    for label, p in phases.items():
        outcome.lines.append(
            f"Slack answering {label} for {p['seconds']:g} s: {p['calls_refused']} calls refused, "
            f"{p['written_during']} messages written meanwhile, {p['backlog_at_end']} waiting at "
            f"its end; all delivered {seconds(p['delivered_after_s'], none='not in time')} "
            "after the end of the outage"
        )


def _server_errors(proxy: FaultyProxy, profile: Profile) -> None:
    proxy.fail(
        lambda request: request.path.startswith("/api/"),
        status=503,
        body={"ok": False, "error": "service_unavailable"},
    )


def _rate_limits(proxy: FaultyProxy, profile: Profile) -> None:
    def writes(request: web.Request) -> bool:
        return request.path in WRITES

    proxy.fail(
        writes,
        status=429,
        headers={"Retry-After": str(profile.retry_after)},
        body={"ok": False, "error": "ratelimited"},
    )


async def judge(
    ctx: Context,
    outcome: Outcome,
    rows: Rows,
    slack: FakeSlack,
    sender: Sender,
    operators: Operators,
) -> None:
    all_cases = await rows.all_cases()
    accounts = await rows.all_accounts()
    messages = await rows.outbox_rows()
    posts = parent_posts(slack.messages)
    parents = [(f"case {c.id}", c.slack_channel, c.slack_ts) for c in all_cases]
    missing = [
        subject
        for subject, channel, ts in parents
        if ts is None or (channel, ts) not in slack.messages or ts not in posts.get(subject, [])
    ]
    threads = compare_threads(written_lines(messages), arrived_lines(slack.thread, parents))
    stale = [
        f"case {c.id}"
        for c in all_cases
        if c.slack_ts is not None
        and slack.messages.get((c.slack_channel or "", c.slack_ts), {}).get("text")
        != fallback_text(c, accounts[c.account_id])
    ]
    failed = [m for m in messages if m.status == OutboxStatus.FAILED]
    waited = sorted(
        (m.sent_at - m.created_at).total_seconds() for m in messages if m.sent_at is not None
    )
    lat = sorted(operators.click_latency)
    late_clicks = sum(1 for s in lat if s > SLACK_DEADLINE)
    clicks = sum(operators.clicks.values())
    by_status = Counter(c.status for c in all_cases)
    updates = len(slack.calls_to("chat.update"))
    outcome.lines[:0] = [
        f"cases: {len(all_cases)} opened ({dict(by_status)}); clicks: {clicks} "
        f"({', '.join(f'{k} x{v}' for k, v in sorted(operators.clicks.items()))}), answered "
        f"p50 {percentile(lat, 50) * 1000:.0f} ms, max {(lat[-1] if lat else 0) * 1000:.0f} ms; "
        f"{operators.resolved} resolved by webhook; webhooks: {sender.summary()}",
        f"delivered: {sum(len(v) for v in posts.values())} alerts, {threads.arrived} thread "
        f"lines, {updates} updates accepted; longest a message waited: "
        f"{(waited[-1] if waited else 0):.0f} s (p50 {percentile(waited, 50):.1f} s)",
        f"alerts posted twice: {len(posted_twice(posts))}, missing: {len(missing)}; thread lines "
        f"written {threads.written}, arrived {threads.arrived}: {len(threads.repeated)} twice, "
        f"{len(threads.missing)} missing, {len(threads.out_of_order)} threads out of order; "
        f"alerts not showing their case as it ended: {len(stale)}",
    ]
    found = log_lines(ctx.log)
    outcome.lines.append(
        f"service log: {found['errors']} errors, {found['warnings']} warnings, "
        f"{found['tracebacks']} tracebacks"
    )
    outcome.expect("webhooks not acknowledged", len(sender.unanswered) + len(sender.rejected))
    outcome.expect("clicks not answered 200", clicks - operators.click_answers[200])
    outcome.expect(f"clicks answered after Slack's {SLACK_DEADLINE:g} s", late_clicks)
    outcome.expect("alerts posted twice", len(posted_twice(posts)))
    outcome.expect("alerts missing", len(missing))
    outcome.expect("thread lines missing", len(threads.missing))
    outcome.expect("thread lines delivered twice", len(threads.repeated))
    outcome.expect("threads out of order", len(threads.out_of_order))
    outcome.expect("alerts not updated to their case's last state", len(stale))
    outcome.expect("messages given up", len(failed))
    outcome.figures |= {
        "cases": len(all_cases),
        "cases_by_status": dict(by_status),
        "clicks": dict(operators.clicks),
        "click_p50_ms": round(percentile(lat, 50) * 1000, 1),
        "click_max_ms": round((lat[-1] if lat else 0) * 1000, 1),
        "webhooks": len(sender.deliveries),
        "alerts": sum(len(v) for v in posts.values()),
        "thread_lines_written": threads.written,
        "thread_lines_arrived": threads.arrived,
        "updates_accepted": updates,
        "longest_wait_s": round(waited[-1], 1) if waited else 0,
        "posted_twice": posted_twice(posts),
        "missing": missing,
        "thread_problems": {
            "missing": threads.missing,
            "repeated": threads.repeated,
            "out_of_order": threads.out_of_order,
        },
        "stale": stale,
        "given_up": len(failed),
        "service_log": found,
    }
