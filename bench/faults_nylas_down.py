"""Scenario ``nylas-down``: Nylas away for minutes during reconciliation, actions and webhooks.

The long variant of ``tests/faults/test_nylas_down.py``. The service runs on the v2 API with a
reconciliation pass every minute (``REAUTHBOT_POLL_INTERVAL=1m``; the first at start) against
the fake Nylas, reached through ``tests.fakes.tcp_proxy.TcpProxy`` and then
``tests.fakes.http_faults.FaultyProxy``. It holds ``accounts`` accounts, one in 25
invalid and one in 25 stopped (half of those recover when sync is retried).

After the first pass has opened their cases, Nylas goes away in three phases:

1. the listing breaks part-way: pages from ``break_at`` on answer 503 (single accounts read
   fine). Passes must stop without marking the accounts they did not see as deleted;
2. every request answers 503. As it begins, Nylas changes under the service's feet: some
   broken accounts recover, some healthy ones break, some are deleted; v2 webhooks say so
   (they carry only the account id), and others claim that accounts still broken recovered.
   Operators press Retry sync and Revoke;
3. (not with ``--quick``) Nylas stops answering: connections are accepted and left hanging.
   Operators press the buttons again.

In each phase ``reauthbot poll`` is run too, as an operator would, and what it says is kept.
Then Nylas returns, and the scenario times: the first operator action that works, the first
scheduled pass that completes (with ``--quick``, a ``reauthbot poll`` run at once stands in
for it), the database agreeing with Nylas again, and the webhooks received meanwhile applied.

Checks: no case resolved and no account marked deleted while Nylas could not be read; no case
resolved at the end whose account Nylas still reports broken; every click acknowledged within
Slack's 3 s and answered privately that Nylas failed, its case left open and free; every
``reauthbot poll`` stopped with one clear line; after the return, the database agrees with
Nylas, and every webhook was applied.
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import httpx
from aiohttp import web
from sqlmodel import col, func, select

from bench._common import say
from bench._faults import (
    WEBHOOK_PATH,
    Context,
    Outcome,
    Rows,
    Sender,
    Ticker,
    log_lines,
    metric,
    pending,
    seconds,
    since,
    v2_delivery,
    wait_until,
)
from bench.storm import CLICKER, SIGNING_SECRET, click_body, signed_click
from bot.slack import ids
from storage.models import Account, Case, CaseStatus
from tests import cli
from tests.conftest import NYLAS_CLIENT_ID, NYLAS_CLIENT_SECRET
from tests.fakes.http_faults import FaultyProxy
from tests.fakes.nylas import FakeNylas
from tests.fakes.slack import FakeSlack
from tests.fakes.tcp_proxy import TcpProxy
from workflows.states import Health, classify

NAME = "nylas-down"
SUMMARY = (
    "Nylas failing part-way, then wholly, then not answering, during reconciliation passes, "
    "operator actions and v2 webhooks"
)
NEEDS_POSTGRES = False

TOKEN = "xoxb-nylas-down"
CHANNEL = "C0ALERTS"
POLICY = f'[permissions]\nrevoke = ["{CLICKER}"]\n[storms]\nthreshold = 1000000\n'
BROKEN_EVERY = 25  # one account in 25 invalid, one in 25 stopped
SLACK_DEADLINE = 3.0
TOLD_WITHIN = 120.0  # a held request times out after 15 s; room for the retries of a GET
POLL_TIMEOUT = 600.0
PROGRESS_EVERY = 10.0
# Revoke reads the account before revoking; when Nylas is away that read fails first.
FAILURE_REPLY = re.compile(
    r"^((Retry of|Revoking for) case #\d+ failed: Nylas "
    r"|Nothing was revoked for case #\d+: Nylas could not be asked)"
)
POLL_STOPPED = "reauthbot: reconciliation stopped: Nylas "


@dataclass(frozen=True, slots=True)
class Profile:
    accounts: int
    break_at: int  # the listing fails from this offset on
    listing_broken: float  # phase lengths, seconds
    errors: float
    no_answer: float  # 0: no such phase
    changes: int  # accounts of each kind that change in Nylas while it is away
    clicks: int  # operator actions in each phase where Nylas fails wholly
    scheduled: bool  # recovery waits for the service's own pass (else `reauthbot poll`)
    timeout: float


FULL = Profile(
    accounts=2000,
    break_at=1000,
    listing_broken=90.0,
    errors=120.0,
    no_answer=120.0,
    changes=10,
    clicks=4,
    scheduled=True,
    timeout=900.0,
)
QUICK = Profile(
    accounts=300,
    break_at=200,
    listing_broken=3.0,
    errors=5.0,
    no_answer=0.0,
    changes=3,
    clicks=2,
    scheduled=False,
    timeout=60.0,
)


def populate(fake: FakeNylas, accounts: int) -> None:
    for i in range(accounts):
        state = "running"
        if i % BROKEN_EVERY == 5:
            state = "invalid-credentials"
        elif i % BROKEN_EVERY == 15:
            state = "stopped"
        fake.add_v2_account(
            id=f"acct-{i}",
            email=f"user{i}@tenant{i % 40}.example",
            sync_state=state,
            # Half the stopped accounts sync again when retried; the others stay stopped.
            upgrade_result="running" if i % (2 * BROKEN_EVERY) == 15 else "stopped",
        )


def recovers_on_retry(account_id: str) -> bool:
    """Whether Retry sync brings this account back (see ``populate``)."""
    return int(account_id.rsplit("-", 1)[1]) % (2 * BROKEN_EVERY) == 15


def unhealthy(state: str | None) -> bool:
    return classify("v2", state or "unknown").health not in (Health.HEALTHY, Health.TRANSIENT)


@dataclass
class Click:
    phase: str
    action: str
    case_id: int
    n: int
    status: int = 0
    acked_in: float = 0.0
    reply: str | None = None


@dataclass
class Poll:
    phase: str
    code: int
    last_line: str
    seconds: float
    traceback: bool


@dataclass
class World:
    """The fakes and what the scenario did to them."""

    ctx: Context
    profile: Profile
    fake: FakeNylas
    faulty: FaultyProxy
    tcp: TcpProxy
    slack: FakeSlack
    sender: Sender
    rows: Rows
    env: dict[str, str]
    base: str = ""
    clicks: list[Click] = field(default_factory=list)
    polls: list[Poll] = field(default_factory=list)
    passes: dict[str, dict[str, int]] = field(default_factory=dict)
    _http: aiohttp.ClientSession | None = None

    @property
    def nylas_url(self) -> str:
        return f"http://{self.tcp.host}:{self.tcp.port}"

    def truth(self) -> dict[str, str]:
        """What Nylas holds now: account id -> sync_state."""
        return {i: str(a["sync_state"]) for i, a in self.fake.v2_accounts.items()}

    async def scheduled_passes(self) -> dict[str, int]:
        async with self._session().get(self.base + "/metrics") as answer:
            text = await answer.text()
        return {
            outcome: int(metric(text, "reauthbot_job_runs_total", job="reconcile", outcome=outcome))
            for outcome in ("ok", "error")
        }

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def click(self, phase: str, action: str, case_id: int) -> Click:
        """Press a button on a case's alert, as an operator allowed to revoke; wait for the
        private reply."""
        n = len(self.clicks) + 1
        click = Click(phase, action, case_id, n)
        self.clicks.append(click)
        shown = min(ts for channel, ts in self.slack.messages if channel == CHANNEL)
        body = click_body(action, str(case_id), n, shown, self.slack.response_url(n))
        began = time.perf_counter()
        async with self._session().post(
            self.base + ids.EVENTS_PATH, data=body, headers=signed_click(body)
        ) as answer:
            await answer.read()
            click.status, click.acked_in = answer.status, since(began)

        async def replied() -> bool:
            return bool(self.slack.responses_to(n))

        await wait_until(replied, within=TOLD_WITHIN, every=0.1)
        replies = self.slack.responses_to(n)
        click.reply = str(replies[0].get("text", "")) if replies else None
        return click

    async def poll(self, phase: str) -> Poll:
        """Run ``reauthbot poll`` as an operator would and keep what it said."""
        env = {k: v for k, v in self.env.items() if not k.startswith("SLACK_")}
        began = time.perf_counter()
        done = await asyncio.to_thread(cli.run, self.ctx.tmp, "poll", timeout=POLL_TIMEOUT, **env)
        last = (done.stderr.strip().splitlines() or [""])[-1] if done.returncode else done.stdout
        found = Poll(phase, done.returncode, last.strip(), since(began), "Traceback" in done.stderr)
        self.polls.append(found)
        say(f"  reauthbot poll ({phase}) exited {found.code} in {found.seconds:.0f} s: {last}")
        return found

    async def open_cases(self, kind: str) -> list[Case]:
        async with self.rows.read() as session:
            stmt = select(Case).where(Case.status == CaseStatus.OPEN, Case.kind == kind)
            return list(await session.exec(stmt.order_by(col(Case.id))))

    async def mismatches(self) -> list[str]:
        """Where the database disagrees with Nylas: state, or an open case or not."""
        truth = self.truth()
        accounts = await self.rows.all_accounts()
        open_for = {c.account_id for c in await self.rows.all_cases() if c.status != "resolved"}
        found = []
        for account_id, state in truth.items():
            stored = accounts.get(account_id)
            if stored is None or stored.sync_state != state:
                found.append(f"{account_id}: {stored and stored.sync_state} != {state}")
            elif unhealthy(state) != (account_id in open_for):
                found.append(f"{account_id} ({state}): case open {account_id in open_for}")
        for account_id in set(accounts) - set(truth):
            if accounts[account_id].sync_state != "deleted" or account_id in open_for:
                found.append(f"{account_id}: deleted in Nylas, not here")
        return found

    async def concluded(self) -> tuple[int, int]:
        """(cases resolved, accounts marked deleted) so far."""
        async with self.rows.read() as session:
            resolved = await session.exec(
                select(func.count()).where(Case.status == CaseStatus.RESOLVED)
            )
            deleted = await session.exec(
                select(func.count()).where(Account.sync_state == "deleted")
            )
            return int(resolved.one()), int(deleted.one())


async def run(ctx: Context) -> Outcome:
    profile = QUICK if ctx.quick else FULL
    outcome = Outcome(NAME, ctx.db.label)
    config = ctx.tmp / "policy.toml"
    config.write_text(POLICY)
    rows = Rows(ctx.db)
    fake = FakeNylas(client_id=NYLAS_CLIENT_ID, client_secret=NYLAS_CLIENT_SECRET)
    populate(fake, profile.accounts)
    try:
        async with (
            fake,
            FaultyProxy(fake.url) as faulty,
            TcpProxy("127.0.0.1", int(faulty.url.rsplit(":", 1)[1])) as tcp,
            FakeSlack(bot_token=TOKEN) as slack,
            Sender(first_retry=1.0, max_retry=10.0) as sender,
        ):
            env = {
                "DATABASE_URL": ctx.db.service_url,
                "NYLAS_API_VERSION": "v2",
                "NYLAS_API_URL": f"http://{tcp.host}:{tcp.port}",
                "NYLAS_CLIENT_ID": NYLAS_CLIENT_ID,
                "NYLAS_CLIENT_SECRET": NYLAS_CLIENT_SECRET,
                "REAUTHBOT_POLL_INTERVAL": "1m",
                "REAUTHBOT_CONFIG": str(config),
                "REAUTHBOT_LOG_LEVEL": "WARNING",
                "SLACK_BOT_TOKEN": TOKEN,
                "SLACK_SIGNING_SECRET": SIGNING_SECRET,
                "SLACK_ALERT_CHANNEL": CHANNEL,
                "SLACK_API_URL": slack.url,
            }
            world = World(ctx, profile, fake, faulty, tcp, slack, sender, rows, env)
            try:
                async with cli.service(ctx.tmp, ctx.log, env) as base:
                    world.base = base
                    sender.target = base + WEBHOOK_PATH
                    await scenario(world, outcome)
            finally:
                await world.close()
    finally:
        await rows.close()
    return outcome


async def scenario(world: World, outcome: Outcome) -> None:
    profile, rows = world.profile, world.rows
    start = time.perf_counter()
    phase = "first pass"

    async def progress() -> str:
        inbox = await rows.inbox()
        passes = await world.scheduled_passes()
        return (
            f"{since(start):6.1f} s, {phase}: scheduled passes ok {passes['ok']}, failed "
            f"{passes['error']}; {len(world.clicks)} clicks; inbox pending {pending(inbox)}; "
            f"{world.faulty.failed} requests failed by the proxy"
        )

    async with Ticker(PROGRESS_EVERY, progress):
        broken = sum(1 for s in world.truth().values() if unhealthy(s))

        async def first_pass_done() -> bool:
            return (
                len(await rows.all_accounts()) == profile.accounts
                and sum((await rows.cases()).values()) >= broken
                and any(channel == CHANNEL for channel, _ in world.slack.messages)
            )

        took = await wait_until(first_pass_done, within=profile.timeout)
        outcome.expect_that(
            "the first pass imported every account and opened their cases",
            took is not None,
            seconds(took, none="no"),
            "yes",
        )
        if took is None:
            return
        say(f"first pass: {profile.accounts:,} accounts, {broken} cases, in {took:.1f} s")
        well = await baseline(world)
        outcome.lines.append(
            f"{profile.accounts:,} v2 accounts, {broken} broken; the first pass had stored them "
            f"and opened their cases {took:.1f} s after the service was ready; with Nylas well, "
            f"Retry sync answered in {seconds(well)}"
        )

        away_from = datetime.now(UTC)
        before = await world.concluded()
        phases: list[tuple[str, float, Callable[[], None], Callable[[], None]]] = [
            ("listing broken part-way", profile.listing_broken, *listing_broken(world)),
            ("every request failing", profile.errors, *all_failing(world)),
        ]
        if profile.no_answer:
            phases.append(("no answer", profile.no_answer, *no_answer(world)))
        for label, length, spoil, heal in phases:
            phase = label
            length = world.ctx.phase(length)
            say(f"Nylas {label} for {length:g} s")
            passes = await world.scheduled_passes()
            began = time.perf_counter()
            spoil()
            if label == "every request failing":
                await change_while_away(world)
            work: list[asyncio.Task[Any]] = [asyncio.create_task(world.poll(label))]
            if label != "listing broken part-way":
                work.append(asyncio.create_task(press_buttons(world, label, length)))
            await asyncio.sleep(length)
            await asyncio.gather(*work)  # the phase lasts as long as its poll and clicks
            heal()
            after = await world.scheduled_passes()
            world.passes[label] = {
                "seconds": round(since(began)),
                "scheduled_failed": after["error"] - passes["error"],
                "scheduled_ok": after["ok"] - passes["ok"],
            }
        returned, returned_at = time.perf_counter(), datetime.now(UTC)
        phase = "Nylas back"
        say("Nylas answers again")
        # What was concluded while Nylas could not be read, before it can be read again.
        at_return = await world.concluded()
        clicked = {c.id: c for c in await rows.all_cases()}
        recovered = await recover(world, outcome, returned)
        resolved_while_away = await resolved_between(rows, away_from, returned_at)

    await judge(world, outcome, before, at_return, resolved_while_away, clicked, recovered)


async def baseline(world: World) -> float | None:
    """One Retry sync with Nylas well, on a case that recovers: how long until the reply."""
    cases = await world.open_cases("stopped")
    recovering = [c for c in cases if recovers_on_retry(c.account_id)]
    if not recovering:
        return None
    began = time.perf_counter()
    click = await world.click("before", ids.RETRY, recovering[0].id or 0)
    return since(began) if click.reply and click.reply.startswith("Retried") else None


def listing_broken(world: World) -> tuple[Callable[[], None], Callable[[], None]]:
    listing = f"/a/{NYLAS_CLIENT_ID}/accounts"
    break_at = world.profile.break_at

    def later_pages(request: web.Request) -> bool:
        return request.path == listing and int(request.query.get("offset", "0")) >= break_at

    return (lambda: world.faulty.fail(later_pages, status=503)), world.faulty.clear


def all_failing(world: World) -> tuple[Callable[[], None], Callable[[], None]]:
    return (lambda: world.faulty.fail(lambda r: True, status=503)), world.faulty.clear


def no_answer(world: World) -> tuple[Callable[[], None], Callable[[], None]]:
    return (lambda: world.tcp.cut(blackhole=True)), world.tcp.restore


async def change_while_away(world: World) -> None:
    """Nylas changes while the service cannot see it; webhooks tell of it, some falsely."""
    k = world.profile.changes
    truth = world.truth()
    invalid = [i for i, s in truth.items() if s == "invalid-credentials"]
    running = [i for i, s in truth.items() if s == "running"]
    recovered, still_broken = invalid[:k], invalid[k : 2 * k]
    breaking, deleted = running[:k], running[k : 2 * k] + invalid[2 * k : 2 * k + 2]
    for account_id in recovered:
        world.fake.set_sync_state(account_id, "running")
    for account_id in breaking:
        world.fake.set_sync_state(account_id, "invalid-credentials")
    token = base64.b64encode(f"{NYLAS_CLIENT_SECRET}:".encode()).decode()
    async with httpx.AsyncClient(headers={"Authorization": f"Basic {token}"}) as http:
        for account_id in deleted:
            path = f"{world.fake.url}/a/{NYLAS_CLIENT_ID}/accounts/{account_id}"
            assert (await http.delete(path)).status_code == 200
    now = datetime.now(UTC)
    told = [
        *(("account.running", a) for a in recovered),
        # These say the account recovered; Nylas, once asked, says it did not.
        *(("account.running", a) for a in still_broken),
        *(("account.invalid", a) for a in breaking),
    ]
    hooks = [v2_delivery(NYLAS_CLIENT_SECRET, trigger, account_id=a, at=now) for trigger, a in told]
    await world.sender.deliver_now(hooks)
    say(
        f"  meanwhile in Nylas: {len(recovered)} accounts recovered, {len(breaking)} broke, "
        f"{len(deleted)} deleted; {len(hooks)} webhooks sent ({len(still_broken)} of them "
        "claiming a recovery that did not happen)"
    )


async def press_buttons(world: World, phase: str, length: float) -> None:
    """Retry sync and Revoke, in turn, spread over the phase, each on a case not yet pressed."""
    clicks = world.profile.clicks
    pressed = {c.case_id for c in world.clicks}
    stopped = [c for c in await world.open_cases("stopped") if c.id not in pressed]
    invalid = [c for c in await world.open_cases("reauth") if c.id not in pressed]
    work = []
    for n in range(clicks):
        pool, action = (stopped, ids.RETRY) if n % 2 == 0 else (invalid, ids.REVOKE)
        if not pool:
            continue
        case = pool.pop(0)
        work.append(asyncio.create_task(world.click(phase, action, case.id or 0)))
        await asyncio.sleep(length / clicks)
    await asyncio.gather(*work)


async def recover(world: World, outcome: Outcome, returned: float) -> str:
    """Time what comes back, from the moment Nylas answers again; return the line saying so."""
    profile, rows = world.profile, world.rows
    figures: dict[str, float | None] = {}
    stopped = [
        c
        for c in await world.open_cases("stopped")
        if recovers_on_retry(c.account_id) and c.id not in {k.case_id for k in world.clicks}
    ]
    if stopped:
        click = await world.click("after", ids.RETRY, stopped[0].id or 0)
        ok = bool(click.reply and click.reply.startswith("Retried"))
        figures["operator_action_s"] = since(returned) if ok else None
        outcome.expect_that(
            "the first Retry sync after the return worked",
            ok,
            click.reply or "no reply",
            "Retried case #…",
        )
    if profile.scheduled:
        ok0 = (await world.scheduled_passes())["ok"]

        async def a_pass_completed() -> bool:
            return (await world.scheduled_passes())["ok"] > ok0

        figures["scheduled_pass_s"] = await wait_until(
            a_pass_completed, within=profile.timeout, every=0.5
        )
        if figures["scheduled_pass_s"] is not None:
            figures["scheduled_pass_s"] = since(returned)
    else:
        done = await world.poll("after the return")
        figures["poll_after_return_s"] = since(returned) if done.code == 0 else None

    async def agrees() -> bool:
        return not await world.mismatches()

    async def applied() -> bool:
        return not pending(await rows.inbox())

    took = await wait_until(agrees, within=profile.timeout, every=0.5)
    figures["database_agrees_s"] = None if took is None else since(returned)
    took = await wait_until(applied, within=profile.timeout, every=0.5)
    figures["webhooks_applied_s"] = None if took is None else since(returned)
    outcome.figures["recovery_s"] = {
        k: None if v is None else round(v, 1) for k, v in figures.items()
    }
    line = "after Nylas returned: " + "; ".join(
        f"{what} {seconds(figures.get(key), none='not in time')}"
        for key, what in (
            ("operator_action_s", "Retry sync worked after"),
            ("scheduled_pass_s", "a scheduled pass completed after"),
            ("poll_after_return_s", "`reauthbot poll` completed after"),
            ("database_agrees_s", "the database agreed with Nylas after"),
            ("webhooks_applied_s", "the webhooks received meanwhile were applied after"),
        )
        if key in figures
    )
    if profile.scheduled:
        outcome.expect_that(
            f"a scheduled pass completed within {profile.timeout:g} s of the return",
            figures["scheduled_pass_s"] is not None,
            seconds(figures["scheduled_pass_s"], none="no"),
            "yes",
        )
    disagree = await world.mismatches()
    outcome.expect("accounts where the database disagrees with Nylas", len(disagree))
    outcome.expect("webhooks not applied", pending(await rows.inbox()))
    outcome.figures["disagreements"] = disagree[:20]
    return line


async def resolved_between(rows: Rows, start: datetime, end: datetime) -> list[str]:
    async with rows.read() as session:
        stmt = select(Case).where(col(Case.resolved_at) >= start, col(Case.resolved_at) < end)
        return [f"case {c.id} ({c.account_id}): {c.resolution}" for c in await session.exec(stmt)]


async def judge(
    world: World,
    outcome: Outcome,
    before: tuple[int, int],
    at_return: tuple[int, int],
    resolved_while_away: list[str],
    cases_at_return: dict[int | None, Case],
    recovered: str,
) -> None:
    truth = world.truth()
    all_cases = await world.rows.all_cases()
    mistaken = [
        f"case {c.id} ({c.account_id}, {truth[c.account_id]})"
        for c in all_cases
        if c.status == CaseStatus.RESOLVED
        and c.account_id in truth
        and unhealthy(truth[c.account_id])
    ]
    for label, p in world.passes.items():
        outcome.lines.append(
            f"Nylas {label} for {p['seconds']} s: scheduled passes failed {p['scheduled_failed']}, "
            f"completed {p['scheduled_ok']}"
        )
    outcome.lines.append("what the operator was told:")
    for poll in world.polls:
        outcome.lines.append(
            f"  `reauthbot poll` ({poll.phase}), exit {poll.code} after {poll.seconds:.0f} s: "
            f"{poll.last_line}"
        )
    told: Counter[tuple[str, str]] = Counter()
    for click in world.clicks:
        shown = re.sub(r"acct-\d+", "acct-N", re.sub(r"#\d+", "#N", click.reply or "(nothing)"))
        told[(click.phase, shown)] += 1
    for (phase, text), n in told.items():
        outcome.lines.append(f"  private reply to a click ({phase}) x{n}: {text}")
    outcome.lines.append(recovered)
    outcome.figures["told"] = {
        "polls": [poll.__dict__ for poll in world.polls],
        "replies": [{"phase": p, "text": t, "times": n} for (p, t), n in told.items()],
    }

    away = [c for c in world.clicks if c.phase not in ("before", "after")]
    not_told = [c for c in away if not (c.reply and FAILURE_REPLY.match(c.reply))]
    left_wrong = [
        f"case {c.case_id}"
        for c in away
        if (case := cases_at_return.get(c.case_id)) is None
        or case.status == CaseStatus.RESOLVED
        or case.busy_with is not None
    ]
    slow = [c for c in world.clicks if c.status != 200 or c.acked_in > SLACK_DEADLINE]
    unclear = [
        p
        for p in world.polls
        if p.phase != "after the return"
        and (p.code != 1 or p.traceback or not p.last_line.startswith(POLL_STOPPED))
    ]
    inbox = await world.rows.inbox()
    found = log_lines(world.ctx.log)
    outcome.lines.append(
        f"webhooks: {world.sender.summary()}; inbox {inbox}; service log: {found['errors']} "
        f"errors, {found['warnings']} warnings"
    )
    outcome.expect("cases resolved while Nylas could not be read", len(resolved_while_away))
    outcome.expect(
        "accounts marked deleted while Nylas could not be read", at_return[1] - before[1]
    )
    outcome.expect("cases resolved while Nylas still reports the account broken", len(mistaken))
    outcome.expect(f"clicks not acknowledged within Slack's {SLACK_DEADLINE:g} s", len(slow))
    outcome.expect("clicks during the outage not told privately that Nylas failed", len(not_told))
    outcome.expect("cases clicked during the outage not left open and free", len(left_wrong))
    outcome.expect("`reauthbot poll` runs that did not stop with one clear line", len(unclear))
    outcome.expect(
        "webhooks not acknowledged", len(world.sender.unanswered) + len(world.sender.rejected)
    )
    outcome.expect("webhooks given up", inbox.get("failed", 0))
    outcome.figures |= {
        "passes": world.passes,
        "clicks": [c.__dict__ for c in world.clicks],
        "mistaken": mistaken,
        "resolved_while_away": resolved_while_away,
        "service_log": found,
    }
