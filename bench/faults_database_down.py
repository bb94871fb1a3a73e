"""Scenario ``database-down``: PostgreSQL refuses connections, later stops answering, for
minutes, while webhooks keep arriving.

The long variant of ``tests/faults/test_database_down.py``. The service (local mode, the
default policy) reaches its PostgreSQL database through ``tests.fakes.tcp_proxy.TcpProxy``;
this process reads it directly. Signed v3 ``grant.expired`` deliveries, each for its own
grant, arrive at a steady ``rate`` from start to end, sent as Nylas sends them: a 503, no
answer within 10 s or no connection is tried again later (``bench._faults.Sender``).
Meanwhile ``/readyz`` and ``/healthz`` are asked twice a second.

1. ``before`` seconds with the database well;
2. the proxy resets every connection and refuses new ones for ``refused`` seconds;
3. ``between`` seconds well, and longer until every delivery refused meanwhile is stored, so
   that each outage is timed alone;
4. the proxy accepts connections and leaves them hanging (a partition that drops packets)
   for ``blackholed`` seconds;
5. ``after`` seconds well; then the retries are waited for.

Per outage it reports the 503s answered, how soon ``/readyz`` failed and came back, and how
long after the database's return the first delivery was stored, every delivery refused
during the outage was stored, and the ingest worker applied deliveries again; at the end, how
long applying what was stored took (a figure of the machine's speed, not of the outage).
Checks: no delivery lost (each answered 2xx in the end, each 2xx in the inbox), none given up,
no account with two cases and no applied delivery without its case, ``/healthz`` always 200,
``/readyz`` failing during each outage and ready again by itself, deliveries applied again
after each return, every 503 with ``Retry-After``, every attempt answered within Nylas' 10 s.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from sqlalchemy.engine import make_url

from bench._common import say
from bench._faults import (
    NYLAS_TIMEOUT,
    WEBHOOK_PATH,
    Context,
    Delivery,
    Outcome,
    Rows,
    Sender,
    Ticker,
    log_lines,
    pending,
    rounded,
    seconds,
    since,
    tally,
    v3_delivery,
    wait_until,
)
from tests.cli import service
from tests.conftest import WEBHOOK_SECRET
from tests.fakes.tcp_proxy import TcpProxy

NAME = "database-down"
SUMMARY = "the database refuses connections, then stops answering, while webhooks keep arriving"
NEEDS_POSTGRES = True

PROBE_EVERY = 0.5
PROBE_TIMEOUT = 2.0
PROGRESS_EVERY = 10.0
APPLY_EVERY = 2.0


@dataclass(frozen=True, slots=True)
class Profile:
    rate: float  # deliveries per second, from start to end
    before: float
    refused: float
    between: float
    blackholed: float
    after: float
    first_retry: float  # the sender's backoff
    max_retry: float
    timeout: float  # longest wait for the retries after the end
    apply_within: float  # longest wait, after that, for every stored delivery to be applied


FULL = Profile(
    rate=20.0,
    before=30.0,
    refused=120.0,
    between=60.0,
    blackholed=120.0,
    after=30.0,
    first_retry=5.0,
    max_retry=60.0,
    timeout=900.0,
    apply_within=600.0,
)
# The black hole must outlast the service's 5 s store timeout: a request that arrives during
# a shorter one simply waits and is stored when the database returns.
QUICK = Profile(
    rate=10.0,
    before=3.0,
    refused=5.0,
    between=3.0,
    blackholed=12.0,
    after=2.0,
    first_retry=1.0,
    max_retry=4.0,
    timeout=60.0,
    apply_within=60.0,
)


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # perf_counter
    ready: str  # the status, or "no answer"
    healthy: str


@dataclass
class Backlog:
    """The inbox over time: (perf_counter, applied, still to apply), every APPLY_EVERY s."""

    samples: list[tuple[float, int, int]] = field(default_factory=list)
    acked_all: float | None = None  # when the last delivery was acknowledged

    async def watch(self, rows: Rows) -> None:
        while True:
            try:
                async with asyncio.timeout(APPLY_EVERY * 2):
                    inbox = await rows.inbox()
                self.samples.append((time.perf_counter(), inbox.get("done", 0), pending(inbox)))
            except Exception:  # read around the proxy; one failed read is one missing sample
                pass
            await asyncio.sleep(APPLY_EVERY)

    def applying_again(self, moment: float) -> float | None:
        """Seconds from ``moment`` until the ingest worker had applied another delivery."""
        before = [done for at, done, _ in self.samples if at <= moment]
        start = before[-1] if before else 0
        for at, done, _ in self.samples:
            if at > moment and done > start:
                return at - moment
        return None


@dataclass
class Outage:
    label: str
    cut: float = 0.0  # perf_counter
    back: float = 0.0
    samples: list[Sample] = field(default_factory=list)


class Prober:
    """Asks /readyz and /healthz twice a second and keeps the answers."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.samples: list[Sample] = []

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as http:

            async def status(path: str) -> str:
                try:
                    async with http.get(self.base + path) as answer:
                        await answer.read()
                        return str(answer.status)
                except (aiohttp.ClientError, TimeoutError):
                    return "no answer"

            while True:
                ready, healthy = await asyncio.gather(status("/readyz"), status("/healthz"))
                self.samples.append(Sample(time.perf_counter(), ready, healthy))
                await asyncio.sleep(PROBE_EVERY)


def deliveries(count: int) -> list[Delivery]:
    now = datetime.now(UTC)
    return [
        v3_delivery(
            WEBHOOK_SECRET,
            "grant.expired",
            grant_id=f"g-{n}",
            email=f"user{n}@example{n}.com",
            notification_id=f"n-{n}",
            at=now,
        )
        for n in range(count)
    ]


async def run(ctx: Context) -> Outcome:
    profile = QUICK if ctx.quick else FULL
    outcome = Outcome(NAME, ctx.db.label)
    refused = ctx.phase(profile.refused)
    blackholed = ctx.phase(profile.blackholed)
    total = profile.before + refused + profile.between + blackholed + profile.after
    planned = deliveries(round(profile.rate * total))
    server = make_url(ctx.db.service_url)
    rows = Rows(ctx.db)  # around the proxy
    try:
        async with (
            TcpProxy(server.host or "127.0.0.1", server.port or 5432) as proxy,
            Sender(first_retry=profile.first_retry, max_retry=profile.max_retry) as sender,
        ):
            through = server.set(host=proxy.host, port=proxy.port)
            env = {
                "DATABASE_URL": through.render_as_string(hide_password=False),
                "NYLAS_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "REAUTHBOT_LOG_LEVEL": "WARNING",
            }
            async with service(ctx.tmp, ctx.log, env) as base:
                sender.target = base + WEBHOOK_PATH
                prober = Prober(base)
                probing = asyncio.create_task(prober.run())
                backlog = Backlog()
                watching = asyncio.create_task(backlog.watch(rows))
                try:
                    outages = await timeline(
                        profile, refused, blackholed, planned, sender, proxy, rows, prober, backlog
                    )
                finally:
                    for task in (probing, watching):
                        task.cancel()
                    await asyncio.gather(probing, watching, return_exceptions=True)
            await judge(ctx, outcome, profile, planned, sender, rows, prober, outages, backlog)
    finally:
        await rows.close()
    return outcome


async def timeline(
    profile: Profile,
    refused: float,
    blackholed: float,
    planned: list[Delivery],
    sender: Sender,
    proxy: TcpProxy,
    rows: Rows,
    prober: Prober,
    backlog: Backlog,
) -> list[Outage]:
    start = time.perf_counter()
    phase = "database well"
    total = profile.before + refused + profile.between + blackholed + profile.after

    async def progress() -> str:
        ready = prober.samples[-1].ready if prober.samples else "?"
        try:
            async with asyncio.timeout(5):
                inbox = f"inbox pending {pending(await rows.inbox()):,}"
        except Exception as exc:  # the probe goes around the proxy; say why it failed anyway
            inbox = f"inbox not readable ({type(exc).__name__})"
        recent = sender.outcomes(time.perf_counter() - PROGRESS_EVERY)
        return (
            f"{since(start):6.1f} s, {phase}: {sender.summary()}; last {PROGRESS_EVERY:g} s: "
            f"{dict(recent)}; /readyz {ready}; {inbox}"
        )

    say(f"{len(planned):,} deliveries at {profile.rate:g}/s over {total:g} s")
    outages = [Outage("refused"), Outage("black-holed")]
    async with Ticker(PROGRESS_EVERY, progress):
        sending = sender.start(planned, seconds=total)
        await asyncio.sleep(profile.before)
        for outage, length, wait_after in (
            (outages[0], refused, profile.between),
            (outages[1], blackholed, profile.after),
        ):
            phase = f"database {outage.label}"
            say(f"database {outage.label} for {length:g} s")
            outage.cut = time.perf_counter()
            proxy.cut(blackhole=outage.label == "black-holed")
            await asyncio.sleep(length)
            proxy.restore()
            outage.back = time.perf_counter()
            phase = "database well"
            say("database back")
            await asyncio.sleep(wait_after)
            cut = outage.cut

            async def retried_in(cut: float = cut) -> bool:
                failed = [d for d in planned if any(t >= cut for t in d.failures)]
                return all(d.acked_at is not None for d in failed)

            # The next outage waits for the retries of this one, so that each is timed alone.
            await wait_until(retried_in, within=profile.timeout, every=0.5)
        phase = "retries after the end"
        try:
            await asyncio.wait_for(sending, profile.timeout)
        except TimeoutError:
            say(f"deliveries still unacknowledged {profile.timeout:g} s after the end")
        else:
            backlog.acked_all = time.perf_counter()
        phase = "applying what was stored"

        async def processed() -> bool:
            return not pending(await rows.inbox())

        await wait_until(processed, within=profile.apply_within, every=1.0)
        inbox = await rows.inbox()
        backlog.samples.append((time.perf_counter(), inbox.get("done", 0), pending(inbox)))
    return outages


def grant_of(key: str) -> str:
    """The grant of a delivery's inbox key ("v3:n-7" is the notification of grant g-7)."""
    return "g-" + key.removeprefix("v3:n-")


def backlog_line(backlog: Backlog, profile: Profile) -> str:
    """How the stored deliveries were applied once the last one was acknowledged."""
    if backlog.acked_all is None or not backlog.samples:
        return "applying: not every delivery was acknowledged"
    after = [(at, done, left) for at, done, left in backlog.samples if at >= backlog.acked_all]
    if not after:
        return "applying: nothing measured after the last acknowledgement"
    (t0, done0, left0), (t1, done1, left1) = after[0], after[-1]
    rate = (done1 - done0) / max(t1 - t0, 1e-9)
    if not left0:
        return "applying: every delivery was applied by the time the last was acknowledged"
    if not left1:
        return (
            f"applying: {left0:,} deliveries were still to apply when the last was acknowledged; "
            f"all applied {t1 - backlog.acked_all:.0f} s later ({rate:.1f}/s)"
        )
    return (
        f"applying: {left0:,} deliveries were still to apply when the last was acknowledged; "
        f"{left1:,} still were {profile.apply_within:g} s later (applying {rate:.1f}/s); "
        "a figure of this machine's speed, not a fault: they are stored"
    )


def first_after(samples: list[Sample], moment: float, ok: bool) -> float | None:
    """Seconds from ``moment`` to the first /readyz answer that is 200 (ok) or is not."""
    for sample in samples:
        if sample.at >= moment and (sample.ready == "200") == ok:
            return sample.at - moment
    return None


async def judge(
    ctx: Context,
    outcome: Outcome,
    profile: Profile,
    planned: list[Delivery],
    sender: Sender,
    rows: Rows,
    prober: Prober,
    outages: list[Outage],
    backlog: Backlog,
) -> None:
    stored = await rows.inbox_keys()
    all_cases = await rows.all_cases()
    acked = [d for d in planned if d.acked_at is not None]
    not_stored = [d.key for d in acked if d.key not in stored]
    answers = sender.outcomes()
    outcome.lines.append(
        f"deliveries: {len(planned):,} at {profile.rate:g}/s, {len(acked):,} acknowledged after "
        f"{len(sender.attempts):,} attempts ({tally(answers)})"
    )
    figures: dict[str, Any] = {"outages": {}}
    for n, outage in enumerate(outages):
        # Answers to requests sent during the outage, up to the next outage.
        following = outages[n + 1].cut if n + 1 < len(outages) else float("inf")
        window = (outage.cut, min(outage.back + NYLAS_TIMEOUT, following))
        during = sender.outcomes(*window)
        slowest = max(
            (a.seconds for a in sender.attempts if window[0] <= a.ended < window[1]),
            default=0.0,
        )
        failed_then = [d for d in planned if any(window[0] <= t < window[1] for t in d.failures)]
        # None when one of them is still unacknowledged (the check on lost deliveries fails).
        acked_times = [d.acked_at for d in failed_then if d.acked_at is not None]
        complete = bool(failed_then) and len(acked_times) == len(failed_then)
        all_in = max(acked_times) - outage.back if complete else None
        stored_since = [
            a.ended for a in sender.attempts if a.outcome.startswith("2") and a.ended >= outage.back
        ]
        first_ok = min(stored_since) - outage.back if stored_since else None
        readyz_failed = first_after(prober.samples, outage.cut, ok=False)
        readyz_back = first_after(prober.samples, outage.back, ok=True)
        applying = backlog.applying_again(outage.back)
        failing = [
            s for s in prober.samples if outage.cut <= s.at < outage.back and s.ready != "200"
        ]
        o = {
            "seconds": round(outage.back - outage.cut, 1),
            "answers": dict(during),
            "answers_503": during.get("503", 0),
            "slowest_answer_s": round(slowest, 2),
            "readyz_failed_after_s": rounded(readyz_failed),
            "readyz_ok_after_return_s": rounded(readyz_back),
            "first_stored_after_return_s": rounded(first_ok),
            "deliveries_retried": len(failed_then),
            "all_retried_stored_after_return_s": rounded(all_in),
            "applying_again_after_return_s": rounded(applying),
        }
        figures["outages"][outage.label] = o
        outcome.lines.append(
            f"database {outage.label} for {o['seconds']:g} s: {o['answers_503']:,} answered 503 "
            f"({tally(during)}; slowest answer "
            f"{slowest:.1f} s); /readyz failed {seconds(readyz_failed)} after the cut"
        )
        outcome.lines.append(
            f"  after the return: /readyz 200 in {seconds(readyz_back)}, first delivery stored in "
            f"{seconds(first_ok)}, all {len(failed_then):,} deliveries "
            f"that had failed stored in {seconds(all_in)} "
            f"(the sender retries after {profile.first_retry:g} s, doubling up to "
            f"{profile.max_retry:g} s); the ingest worker applying again in {seconds(applying)}"
        )
        outcome.expect_that(
            f"/readyz failed while the database was {outage.label}",
            bool(failing),
            f"{len(failing)} of the samples",
            "at least 1",
        )
        outcome.expect_that(
            f"/readyz ready again by itself after the database was {outage.label}",
            readyz_back is not None,
            seconds(readyz_back, none="no"),
            "yes",
        )
        outcome.expect_that(
            f"deliveries applied again after the database was {outage.label}",
            applying is not None,
            seconds(applying, none="no"),
            "yes",
        )
    per_account = Counter(c.account_id for c in all_cases)
    no_retry_after = [a for a in sender.attempts if a.outcome == "503" and not a.retry_after]
    unhealthy = [s for s in prober.samples if s.healthy != "200"]
    slow = answers.get(f"no answer in {NYLAS_TIMEOUT:g} s", 0)
    inbox = await rows.inbox()
    found = log_lines(ctx.log)
    attempts = sender.attempts_per_delivery()
    outcome.lines.append(
        f"stored: {len(stored):,} deliveries ({inbox}), {len(all_cases):,} cases; attempts per "
        f"delivery: {dict(sorted(attempts.items()))}; /healthz not 200 in {len(unhealthy)} of "
        f"{len(prober.samples)} samples; service log: {found['errors']} errors, "
        f"{found['warnings']} warnings"
    )
    done = [key for key, (status, _) in stored.items() if status == "done"]
    applied_alone = sum(1 for key in done if not per_account[grant_of(key)])
    outcome.lines.append(backlog_line(backlog, profile))
    outcome.expect("deliveries lost (never acknowledged)", len(planned) - len(acked))
    outcome.expect("acknowledged deliveries not stored", len(not_stored))
    outcome.expect("deliveries given up", inbox.get("failed", 0))
    twice = sum(1 for n in per_account.values() if n > 1)
    outcome.expect("accounts with more than one case", twice)
    outcome.expect("deliveries applied without their case", applied_alone)
    outcome.expect("/healthz answers other than 200", len(unhealthy))
    outcome.expect("503 answers without Retry-After", len(no_retry_after))
    outcome.expect(f"attempts not answered within Nylas' {NYLAS_TIMEOUT:g} s", slow)
    figures |= {
        "deliveries": len(planned),
        "acknowledged": len(acked),
        "attempts": len(sender.attempts),
        "answers": dict(answers),
        "attempts_per_delivery": {str(k): v for k, v in sorted(attempts.items())},
        "stored": len(stored),
        "cases": len(all_cases),
        "healthz_not_200": len(unhealthy),
        "service_log": found,
    }
    outcome.figures |= figures
