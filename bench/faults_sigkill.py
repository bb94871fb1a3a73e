"""Scenario ``sigkill``: ``reauthbot serve`` SIGKILLed several times during a storm of webhooks.

The long variant of ``tests/faults/test_sigkill_storm.py``, with the same domains: four large
ones (storms: one incident each, one channel each) and ten small ones (one alert per case).
A few thousand signed v3 ``grant.expired`` deliveries are sent over a minute, some of them
again (Nylas retries) and some accounts expiring twice. The escalation policy mentions
on-call after 20 s and sends a DM and a PagerDuty page after 40 s.

The service is SIGKILLed at points of the profile: at 30% of the storm; at 65%, once Slack has
carried out a parent message's ``chat.postMessage`` and holds back its answer, so the dead
process never learns that the post was made; and once every delivery was acknowledged, while
Slack holds back its answer to whatever post comes next (``--quick``: at 50%, then on a held
parent message). Each time a new service is started on the same database. The sender retries
what the dead process did not answer, as Nylas would.

Then it checks: every delivery acknowledged, stored once and applied once; one case per
account; no parent message (a case's alert or an incident's) posted twice or missing; no
thread line lost; no escalation step run twice; no page opening a second PagerDuty incident.
Thread lines and DMs sent again after a kill (Slack took them, the answer was lost) are
counted, not failed: only parent messages are looked for before a retried post.

Without ``--quick`` the messages a dead process had leased wait for their lease (a minute) to
run out, as in production; ``--quick`` ends the leases at once after each kill, as the fast
test does, so that it finishes in seconds.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import col, func, select

from bench._common import say
from bench._faults import (
    WEBHOOK_PATH,
    Context,
    Delivery,
    Outcome,
    Rows,
    Sender,
    Ticker,
    arrived_lines,
    compare_threads,
    escalation_steps,
    log_lines,
    parent_posts,
    pending,
    posted_twice,
    rounded,
    seconds,
    signed_delivery,
    since,
    wait_until,
    written_lines,
)
from storage.models import Case, CaseStatus, Incident, IncidentStatus, OutboxStatus
from tests.bot.slack.test_post_once import TOKEN, serve_env
from tests.cli import service
from tests.conftest import WEBHOOK_SECRET
from tests.fakes.pagerduty import FakePagerDuty
from tests.fakes.slack import FakeSlack
from tests.faults.test_sigkill_storm import (
    BIG,
    SMALL,
    SMALL_PROVIDERS,
    Account,
    policy,
    signed,
)

NAME = "sigkill"
SUMMARY = "SIGKILL of the service during a storm of webhooks, restarted on the same database"
NEEDS_POSTGRES = False

ROUTING_KEY = "R0UT1NGKEYFAULTSBENCH00000000042"
ONCALL, LEAD = "U0ONCALL", "U0LEAD"
ESCALATION = f"""
[escalation]
[[escalation.levels]]
after = "20s"
mention = ["{ONCALL}"]
[[escalation.levels]]
after = "40s"
dm = ["{LEAD}"]
pagerduty = true
"""
STEPS = 2  # levels of the policy above, no repeats
HOLD_ANSWER = 2.0  # seconds Slack holds back the answer to the post the kill waits for
PARENT = "a parent message"
FIND_POST_WITHIN = 30.0
PROGRESS_EVERY = 10.0


@dataclass(frozen=True, slots=True)
class Kill:
    after_share: float | None  # of the deliveries started; None: once all are acknowledged
    # Wait for a post whose answer Slack holds back: "any" post, or "a parent message" only.
    on_held: str | None = None


@dataclass(frozen=True, slots=True)
class Profile:
    per_big: int  # accounts in each large domain
    repeats: int  # deliveries sent again, as they were
    second_expiries: int  # a new notification for an account already expired
    seconds: float  # to send the deliveries in
    kills: tuple[Kill, ...]
    expire_leases: bool
    wait_escalations: bool  # the end waits for every escalation step to have run
    timeout: float  # longest wait after the last restart
    stable_for: float  # nothing may show up this long after the end


FULL = Profile(
    per_big=680,
    repeats=150,
    second_expiries=115,
    seconds=60.0,
    kills=(Kill(0.3), Kill(0.65, on_held=PARENT), Kill(None, on_held="any")),
    expire_leases=False,
    wait_escalations=True,
    timeout=1200.0,
    stable_for=5.0,
)
QUICK = Profile(
    per_big=40,
    repeats=20,
    second_expiries=15,
    seconds=4.0,
    kills=(Kill(0.5), Kill(None, on_held=PARENT)),
    expire_leases=True,
    wait_escalations=False,
    timeout=60.0,
    stable_for=2.0,
)


def accounts(per_big: int) -> list[Account]:
    """The fault test's domains, with ``per_big`` accounts in each large one."""
    found = [
        Account(f"g-{domain}-{n}", f"user{n}@{domain}", provider, domain)
        for domain, provider in BIG
        for n in range(per_big)
    ]
    small = [(domain, n) for i, domain in enumerate(SMALL) for n in range(1 + i % 2)]
    found += [
        Account(f"g-{domain}-{n}", f"user{n}@{domain}", SMALL_PROVIDERS[k % 4], domain)
        for k, (domain, n) in enumerate(small)
    ]
    return found


def storm(everyone: list[Account], profile: Profile) -> list[Delivery]:
    """One delivery per account, repeats and second expiries, in a shuffled order."""
    rng = random.Random(7)
    now = datetime.now(UTC)

    def delivery(account: Account, notification: str, at: datetime) -> Delivery:
        return signed_delivery("v3", WEBHOOK_SECRET, signed(account, notification, at))

    firsts = [delivery(a, f"n-{a.grant_id}", now) for a in everyone]
    later = [
        delivery(a, f"n2-{a.grant_id}", now + timedelta(seconds=30))
        for a in rng.sample(everyone, profile.second_expiries)
    ]
    again = [
        signed_delivery("v3", WEBHOOK_SECRET, d.raw) for d in rng.sample(firsts, profile.repeats)
    ]
    bodies = firsts + later + again
    rng.shuffle(bodies)
    return bodies


def post_kind(params: dict[str, Any]) -> str:
    if params.get("thread_ts"):
        return "a thread line"
    if str(params.get("channel", "")).startswith("U"):
        return "a DM"
    return PARENT


async def held_post(slack: FakeSlack, wanted: str) -> str | None:
    """Have Slack hold back its answer to posts, one at a time, until it holds one that is
    ``wanted`` ("any" post or a kind of ``post_kind``); return the kind held, None if none
    came within FIND_POST_WITHIN."""
    began = time.perf_counter()
    while (left := FIND_POST_WITHIN - since(began)) > 0:
        slack.answer_late("chat.postMessage", HOLD_ANSWER, times=1)
        before = len(slack.calls_to("chat.postMessage"))

        async def posted(before: int = before) -> bool:
            return len(slack.calls_to("chat.postMessage")) > before

        if await wait_until(posted, within=left, every=0.01) is None:
            return None
        kind = post_kind(slack.calls_to("chat.postMessage")[before].params)
        if wanted in ("any", kind):
            await asyncio.sleep(0.05)  # the service is now waiting for the answer
            return kind
    return None


async def escalations_left(rows: Rows) -> int:
    """Open subjects (cases alerted alone, unacknowledged incidents) with steps still to run."""
    async with rows.read() as session:
        own = await session.exec(
            select(func.count()).where(
                Case.status == CaseStatus.OPEN,
                col(Case.incident_id).is_(None),
                Case.escalation_step < STEPS,
            )
        )
        storms = await session.exec(
            select(func.count()).where(
                Incident.status == IncidentStatus.OPEN,
                col(Incident.acknowledged_at).is_(None),
                Incident.escalation_step < STEPS,
            )
        )
        return int(own.one()) + int(storms.one())


async def run(ctx: Context) -> Outcome:
    profile = QUICK if ctx.quick else FULL
    everyone = accounts(profile.per_big)
    deliveries = storm(everyone, profile)
    outcome = Outcome(NAME, ctx.db.label)
    say(
        f"{len(deliveries):,} deliveries for {len(everyone):,} accounts over "
        f"{profile.seconds:g} s; {len(profile.kills)} kills"
    )
    config = policy(ctx.tmp)
    config.write_text(config.read_text() + ESCALATION)
    rows = Rows(ctx.db)
    try:
        async with (
            FakeSlack(bot_token=TOKEN) as slack,
            FakePagerDuty(routing_key=ROUTING_KEY) as pagerduty,
            Sender(first_retry=1.0, max_retry=10.0) as sender,
        ):
            env = serve_env(ctx.db.service_url, slack) | {
                "REAUTHBOT_CONFIG": str(config),
                "PAGERDUTY_ROUTING_KEY": ROUTING_KEY,
                "PAGERDUTY_API_URL": pagerduty.url,
                "REAUTHBOT_LOG_LEVEL": "INFO",
            }
            await lives(ctx, profile, outcome, env, deliveries, sender, slack, rows)
            await judge(ctx, outcome, everyone, deliveries, sender, slack, pagerduty, rows)
    finally:
        await rows.close()
    return outcome


async def lives(
    ctx: Context,
    profile: Profile,
    outcome: Outcome,
    env: dict[str, str],
    deliveries: list[Delivery],
    sender: Sender,
    slack: FakeSlack,
    rows: Rows,
) -> None:
    """Run the service, kill it at each point of the profile, and run it once more to the end."""
    start = time.perf_counter()
    sending: asyncio.Task[None] | None = None
    finished = ""
    kills: list[dict[str, Any]] = []
    starts: list[float] = []

    async def progress() -> str:
        inbox, outbox = await rows.inbox(), await rows.outbox()
        return (
            f"{since(start):6.1f} s: {sender.summary()}; inbox pending {pending(inbox):,}, "
            f"outbox pending {pending(outbox):,}; {len(slack.messages)} Slack messages; "
            f"{len(kills)} kills"
        )

    async with Ticker(PROGRESS_EVERY, progress):
        for kill in [*profile.kills, None]:
            began = time.perf_counter()
            async with service(ctx.tmp, ctx.log, env) as base:
                starts.append(since(began))
                sender.target = base + WEBHOOK_PATH
                say(f"service ready at {base} in {starts[-1]:.1f} s")
                if sending is None:
                    sending = sender.start(deliveries, seconds=profile.seconds)
                if kill is None:
                    finished = await finish(profile, outcome, sender, rows, sending)
                    break
                landed = await reach(kill, sender, slack, len(deliveries))
            # SIGKILLed on leaving the block: what it left is now in the database as it is.
            at = since(start)
            inbox, outbox = await rows.inbox(), await rows.outbox()
            leased = await rows.leased_outbox()
            kills.append(
                {
                    "at_s": round(at, 1),
                    "acknowledged": sender.acked,
                    "inbox_pending": pending(inbox),
                    "outbox_pending": pending(outbox),
                    "outbox_leased": leased,
                    "held_post": landed,
                }
            )
            say(
                f"SIGKILL #{len(kills)} at {at:.1f} s"
                + (f", while Slack held its answer to {landed}" if landed else "")
                + f": {sender.acked:,} acknowledged, inbox pending {pending(inbox):,}, "
                f"outbox pending {pending(outbox):,} ({leased} leased by the dead process)"
            )
            if profile.expire_leases:
                await rows.expire_leases()
    outcome.figures["kills"] = kills
    outcome.figures["restart_ready_s"] = [round(s, 1) for s in starts]
    for n, k in enumerate(kills, 1):
        held = f", while Slack held its answer to {k['held_post']}" if k["held_post"] else ""
        outcome.lines.append(
            f"kill #{n} at {k['at_s']:.1f} s{held}: {k['acknowledged']:,} deliveries "
            f"acknowledged, inbox {k['inbox_pending']:,} and outbox {k['outbox_pending']:,} "
            f"pending ({k['outbox_leased']} leased by the dead process)"
        )
    outcome.lines.append(
        "service ready after each start in "
        + ", ".join(f"{s:.1f}" for s in starts)
        + " s"
        + (
            "; leases of each killed process ended by the benchmark (--quick)"
            if profile.expire_leases
            else "; leases of each killed process left to run out (60 s)"
        )
    )
    outcome.lines.append(finished)


async def reach(kill: Kill, sender: Sender, slack: FakeSlack, total: int) -> str | None:
    """Wait for the kill point; return what post Slack holds the answer of, if any."""
    if kill.after_share is not None:
        share = kill.after_share

        async def far_enough() -> bool:
            return sender.started >= share * total

        await wait_until(far_enough, within=3600, every=0.05)
    else:

        async def all_acked() -> bool:
            return sender.acked + len(sender.rejected) >= total

        await wait_until(all_acked, within=3600, every=0.1)
    return await held_post(slack, kill.on_held) if kill.on_held else None


async def finish(
    profile: Profile, outcome: Outcome, sender: Sender, rows: Rows, sending: asyncio.Task[None]
) -> str:
    """Wait, in the last life, until every delivery is in and all the work is done; return
    the line that says how long it took."""
    began = time.perf_counter()

    async def inbox_done() -> bool:
        return sending.done() and not pending(await rows.inbox())

    stored_in = await wait_until(inbox_done, within=profile.timeout, every=0.5)

    async def work_done() -> bool:
        if not sending.done():
            return False
        return not pending(await rows.inbox()) and not pending(await rows.outbox())

    async def all_done() -> bool:
        if not await work_done():
            return False
        return not profile.wait_escalations or not await escalations_left(rows)

    done_in: float | None = None
    while (left := profile.timeout - since(began)) > 0:
        if await wait_until(all_done, within=left, every=0.5) is None:
            break
        if done_in is None:
            done_in = since(began)
        await asyncio.sleep(profile.stable_for)  # nothing may show up afterwards
        if await all_done():
            break
        done_in = None
    outcome.figures["after_last_restart_s"] = {
        "inbox_processed": rounded(stored_in),
        "all_done": rounded(done_in),
    }
    outcome.expect_that(
        f"finished within {profile.timeout:g} s of the last restart",
        done_in is not None,
        seconds(done_in, none="no"),
        "yes",
    )
    what = "every delivery acknowledged, inbox processed, outbox empty"
    if profile.wait_escalations:
        what += ", every escalation step run"
    return (
        f"after the last restart: every delivery applied (inbox processed) in "
        f"{seconds(stored_in, none='not in time')}; {what} in "
        f"{seconds(done_in, none='not in time')} (and still so {profile.stable_for:g} s later)"
    )


async def judge(
    ctx: Context,
    outcome: Outcome,
    everyone: list[Account],
    deliveries: list[Delivery],
    sender: Sender,
    slack: FakeSlack,
    pagerduty: FakePagerDuty,
    rows: Rows,
) -> None:
    keys = {d.key for d in deliveries}
    stored = await rows.inbox_keys()
    all_cases = await rows.all_cases()
    incidents = await rows.all_incidents()
    messages = await rows.outbox_rows()
    opened = await rows.events("opened")

    answers = sender.outcomes()
    outcome.lines.insert(
        0,
        f"deliveries: {len(deliveries):,} sent ({len(keys):,} notifications, "
        f"{len(deliveries) - len(keys)} of them sent twice as Nylas may), "
        f"{sender.acked:,} acknowledged after {len(sender.attempts):,} attempts "
        f"({', '.join(f'{k} x{v}' for k, v in answers.most_common())})",
    )
    applied_once = sum(1 for status, n in stored.values() if (status, n) == ("done", 1))
    outcome.lines.insert(
        1,
        f"stored: {len(stored):,} deliveries, {applied_once:,} of them applied exactly once; "
        f"{len(all_cases):,} cases for {len(everyone):,} accounts, {len(incidents)} incidents",
    )
    outcome.expect("deliveries not acknowledged", len(sender.unanswered))
    outcome.expect("deliveries refused (not 2xx, not retried)", len(sender.rejected))
    outcome.expect("acknowledged deliveries not stored", len(keys - set(stored)))
    outcome.expect("deliveries not applied exactly once", len(stored) - applied_once)
    per_account = Counter(c.account_id for c in all_cases)
    grants = {a.grant_id for a in everyone}
    outcome.expect(
        "accounts without exactly one case",
        sum(1 for g in grants if per_account[g] != 1) + len(set(per_account) - grants),
    )
    outcome.expect("cases opened more than once", len(opened) - len(everyone))

    # Parent messages: each case alerted alone and each incident, once, where its row says.
    posts = parent_posts(slack.messages)
    twice = posted_twice(posts)
    expected = [(f"case {c.id}", c.slack_channel, c.slack_ts) for c in all_cases if c.own_alert] + [
        (f"incident {i.id}", i.slack_channel, i.slack_ts) for i in incidents
    ]
    missing = [
        subject
        for subject, channel, ts in expected
        if ts is None or (channel, ts) not in slack.messages or ts not in posts.get(subject, [])
    ]
    log = ctx.log.read_text(errors="replace")
    adopted = log.count("adopted the parent message")
    threads = compare_threads(written_lines(messages), arrived_lines(slack.thread, expected))
    dms = Counter(
        str(m.get("text", "")).split(" (", 1)[0]
        for (channel, _), m in slack.messages.items()
        if channel.startswith("U")
    )
    dms_again = sum(n - 1 for n in dms.values())
    failed = [m for m in messages if m.status == OutboxStatus.FAILED]
    outcome.lines.append(
        f"Slack: {sum(len(v) for v in posts.values())} parent messages for "
        f"{len(expected)} expected ({len(incidents)} incidents, "
        f"{len(expected) - len(incidents)} cases alerted alone); {len(twice)} posted twice, "
        f"{len(missing)} missing, {adopted} adopted after a restart instead of posted again"
    )
    outcome.lines.append(
        f"  thread lines: {threads.written} written, {threads.arrived} arrived "
        f"({len(threads.repeated)} sent again after a kill, {len(threads.missing)} missing, "
        f"{len(threads.out_of_order)} threads out of order); DMs: {sum(dms.values())} "
        f"({dms_again} sent again after a kill); messages given up: {len(failed)}"
    )
    outcome.expect("parent messages posted twice", len(twice))
    outcome.expect("parent messages missing", len(missing))
    outcome.expect("thread lines lost", len(threads.missing))
    outcome.expect("messages given up", len(failed))

    # Escalation: each step of each subject once; each page one PagerDuty incident.
    steps = escalation_steps(messages)
    run_twice = sorted(f"{s} {step}" for (s, step), n in steps.items() if n > 1)
    opened_per_key = Counter(i.dedup_key for i in pagerduty.incidents)
    paged_twice = sorted(k for k, n in opened_per_key.items() if n > 1)
    triggers = [
        e for e in pagerduty.events if e.action == "trigger" and e.status == 202 and e.dedup_key
    ]
    again = len(triggers) - len(opened_per_key)
    outcome.lines.append(
        f"escalation: {sum(steps.values())} steps run for {len({s for s, _ in steps})} "
        f"subjects, {len(run_twice)} run twice; PagerDuty: {len(pagerduty.incidents)} incidents "
        f"from {len(triggers)} triggers ({again} sent again, which PagerDuty folds into the "
        f"open incident of their key), {len(paged_twice)} keys paged twice"
    )
    outcome.expect("escalation steps run twice", len(run_twice))
    outcome.expect("PagerDuty incidents opened twice for one case or incident", len(paged_twice))

    found = log_lines(ctx.log)
    outcome.lines.append(
        f"service log: {found['errors']} errors, {found['warnings']} warnings, "
        f"{found['tracebacks']} tracebacks"
    )
    outcome.figures |= {
        "deliveries": {
            "sent": len(deliveries),
            "notifications": len(keys),
            "acknowledged": sender.acked,
            "attempts": len(sender.attempts),
            "answers": dict(answers),
            "stored": len(stored),
            "applied_once": applied_once,
        },
        "cases": len(all_cases),
        "accounts": len(everyone),
        "incidents": len(incidents),
        "slack": {
            "parent_messages": sum(len(v) for v in posts.values()),
            "expected_parents": len(expected),
            "posted_twice": twice,
            "missing": missing,
            "adopted_after_restart": adopted,
            "thread_lines_written": threads.written,
            "thread_lines_arrived": threads.arrived,
            "thread_lines_sent_again": threads.repeated,
            "thread_lines_missing": threads.missing,
            "dms": sum(dms.values()),
            "dms_sent_again": dms_again,
            "given_up": len(failed),
        },
        "escalation": {
            "steps": sum(steps.values()),
            "run_twice": run_twice,
            "pagerduty_incidents": len(pagerduty.incidents),
            "triggers": len(triggers),
            "keys_paged_twice": paged_twice,
        },
        "service_log": found,
    }
    if threads.repeated or dms_again:
        outcome.notes.append(
            "a thread line or DM that Slack took just before a kill is sent again after the "
            "restart: only parent messages are looked for in the channel before a retry"
        )
