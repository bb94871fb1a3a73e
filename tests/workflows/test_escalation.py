"""Escalation: the plan, the choice of step, and the sweep over a real database."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import cases
from storage.engine import create_engine, session_factory
from storage.models import PAGER_CHANNEL, Account, Case, CaseEvent, OutboxKind, OutboxMessage
from tests.conftest import FrozenClock
from workflows import actions
from workflows.escalation import choose, escalate_due, next_due, plan, sweep_period
from workflows.notify import record_change
from workflows.policy import Escalation, EscalationLevel, parse_duration

Sessions = async_sessionmaker[AsyncSession]
T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


def policy(repeat: int = 0) -> Escalation:
    return Escalation(
        repeat=repeat,
        levels=[
            EscalationLevel(after=parse_duration("15m"), mention=["S0ONCALL"]),
            EscalationLevel(after=parse_duration("1h"), dm=["U0LEAD"], pagerduty=True),
        ],
    )


# --- the plan, pure -----------------------------------------------------------------------------


def test_plan_repeats_the_levels_after_the_last_one() -> None:
    steps = plan(policy(repeat=2))

    assert [(s.round, s.level, s.offset) for s in steps] == [
        (0, 0, timedelta(minutes=15)),
        (0, 1, timedelta(hours=1)),
        (1, 0, timedelta(hours=1, minutes=15)),
        (1, 1, timedelta(hours=2)),
        (2, 0, timedelta(hours=2, minutes=15)),
        (2, 1, timedelta(hours=3)),
    ]
    assert [s.name for s in steps[:3]] == ["level 1", "level 2", "level 1, repeat 1"]
    assert plan(Escalation()) == []


@pytest.mark.parametrize(
    ("done", "elapsed", "deadline_in", "expected"),
    [
        (0, "14m", None, (None, "schedule")),
        (0, "15m", None, (0, "schedule")),
        (1, "59m", None, (None, "schedule")),
        (1, "1h", None, (1, "schedule")),
        # After a pause, only the latest due step runs.
        (0, "2h", None, (3, "schedule")),
        (4, "9h", None, (None, "schedule")),
        # Less than 12 h of Nylas' 72 h window left: straight to the last level.
        (0, "1m", "11h", (1, "deadline")),
        (0, "1m", "13h", (None, "schedule")),
        (2, "1h20m", "1h", (2, "schedule")),  # the last level already ran: no jump
        (1, "50m", "5h", (1, "deadline")),
    ],
)
def test_choose(
    done: int, elapsed: str, deadline_in: str | None, expected: tuple[int | None, str]
) -> None:
    steps = plan(policy(repeat=1))
    now = T0 + _span(elapsed)
    deadline = None if deadline_in is None else now + _span(deadline_in)

    assert choose(steps, done=done, opened_at=T0, deadline=deadline, now=now) == expected


def test_next_due_counts_the_deadline() -> None:
    steps = plan(policy())
    deadline = T0 + timedelta(hours=12, minutes=30)

    assert next_due(steps, done=0, opened_at=T0, deadline=None) == T0 + timedelta(minutes=15)
    assert next_due(steps, done=1, opened_at=T0, deadline=deadline) == T0 + timedelta(minutes=30)
    assert next_due(steps, done=2, opened_at=T0, deadline=deadline) is None


def _span(text: str) -> timedelta:
    total = timedelta()
    for part in text.replace("h", "h ").replace("m", "m ").split():
        total += parse_duration(part)
    return total


# --- the sweep, on each database -----------------------------------------------------------------


async def open_case(
    sessions: Sessions,
    now: datetime,
    n: int = 1,
    *,
    api_version: str = "v2",
    broken_since: datetime | None = None,
) -> int:
    async with sessions() as session, session.begin():
        session.add(
            Account(
                id=f"acc-{n}",
                api_version=api_version,
                email=f"user{n}@example.com",
                provider="gmail",
                first_seen_at=now,
                updated_at=now,
            )
        )
        await session.flush()
        case = await cases.open_case(
            session,
            account_id=f"acc-{n}",
            kind="reauth",
            state="invalid" if api_version == "v2" else "expired",
            now=now,
            channel="C0ALERTS",
            broken_since=broken_since,
        )
        assert case is not None and case.id is not None
        return case.id


async def escalations(sessions: Sessions) -> list[tuple[int | None, int, int, str]]:
    async with sessions() as session:
        events = (
            await session.exec(
                select(CaseEvent).where(CaseEvent.action == "escalated").order_by(col(CaseEvent.id))
            )
        ).all()
    return [
        (e.case_id, e.details["level"], e.details["round"], e.details["reason"]) for e in events
    ]


async def queued(sessions: Sessions, kind: str) -> list[OutboxMessage]:
    async with sessions() as session:
        stmt = select(OutboxMessage).where(OutboxMessage.kind == kind)
        return list((await session.exec(stmt.order_by(col(OutboxMessage.id)))).all())


async def test_levels_fire_once_each_at_their_time(sessions: Sessions, clock: FrozenClock) -> None:
    case_id = await open_case(sessions, clock())
    rules = policy()

    assert await escalate_due(sessions, policy=rules, now=clock()) == 0
    clock.advance(minutes=15)
    assert await escalate_due(sessions, policy=rules, now=clock()) == 1
    assert await escalate_due(sessions, policy=rules, now=clock()) == 0  # not twice
    (mention,) = await queued(sessions, OutboxKind.THREAD)
    assert mention.payload["broadcast"] is True
    # Workflows write no Slack markup: the people a line names are parts of their own.
    assert mention.payload["text"].startswith("@S0ONCALL Escalated (level 1)")
    assert mention.payload["parts"][0] == {"person": "S0ONCALL"}
    assert "no one has acknowledged it for 15 min" in mention.payload["text"]
    assert await queued(sessions, OutboxKind.DM) == []

    clock.advance(minutes=45)
    assert await escalate_due(sessions, policy=rules, now=clock()) == 1
    (dm,) = await queued(sessions, OutboxKind.DM)
    (page,) = await queued(sessions, OutboxKind.PAGE)
    assert dm.channel == "U0LEAD" and "Case #" in dm.payload["text"]
    assert page.channel == PAGER_CHANNEL and page.payload["action"] == "trigger"
    assert "user1@example.com" in page.payload["summary"]

    clock.advance(hours=5)
    assert await escalate_due(sessions, policy=rules, now=clock()) == 0
    assert await escalations(sessions) == [(case_id, 1, 0, "schedule"), (case_id, 2, 0, "schedule")]
    async with sessions() as session:
        case = await cases.get_case(session, case_id=case_id)
    assert case is not None
    assert (case.escalation_step, case.escalation_due_at, case.pager_state) == (
        2,
        None,
        "triggered",
    )


async def test_repeat_runs_the_levels_again(sessions: Sessions, clock: FrozenClock) -> None:
    case_id = await open_case(sessions, clock())
    rules = policy(repeat=1)
    for minutes in (15, 45, 15, 45, 60):
        clock.advance(minutes=minutes)
        await escalate_due(sessions, policy=rules, now=clock())

    assert await escalations(sessions) == [
        (case_id, 1, 0, "schedule"),
        (case_id, 2, 0, "schedule"),
        (case_id, 1, 1, "schedule"),
        (case_id, 2, 1, "schedule"),
    ]


async def test_acknowledging_stops_escalation_and_the_page(
    sessions: Sessions, clock: FrozenClock
) -> None:
    case_id = await open_case(sessions, clock())
    rules = policy(repeat=3)
    clock.advance(hours=1)
    await escalate_due(sessions, policy=rules, now=clock())  # straight to level 2: paged

    await actions.acknowledge(sessions, case_id=case_id, actor="slack:U0ANA", now=clock())
    clock.advance(hours=10)
    assert await escalate_due(sessions, policy=rules, now=clock()) == 0

    assert await escalations(sessions) == [(case_id, 2, 0, "schedule")]
    assert [p.payload["action"] for p in await queued(sessions, OutboxKind.PAGE)] == [
        "trigger",
        "acknowledge",
    ]
    await actions.resolve(sessions, case_id=case_id, actor="slack:U0ANA", now=clock(), note="ok")
    assert [p.payload["action"] for p in await queued(sessions, OutboxKind.PAGE)] == [
        "trigger",
        "acknowledge",
        "resolve",
    ]


async def test_a_snooze_pauses_escalation(sessions: Sessions, clock: FrozenClock) -> None:
    case_id = await open_case(sessions, clock())
    rules = policy(repeat=1)
    clock.advance(minutes=10)
    await actions.snooze(sessions, case_id=case_id, actor="slack:U0ANA", now=clock(), duration="1h")
    clock.advance(minutes=50)
    assert await escalate_due(sessions, policy=rules, now=clock()) == 0  # snoozed: nothing

    clock.advance(minutes=20)  # 1h20m after opening; the snooze ended at 1h10m
    await actions.end_snoozes(sessions, now=clock())
    assert await escalate_due(sessions, policy=rules, now=clock()) == 1

    # The levels due during the snooze are not sent one after the other: the latest runs.
    assert await escalations(sessions) == [(case_id, 1, 1, "schedule")]


async def test_recovery_resolves_the_page(sessions: Sessions, clock: FrozenClock) -> None:
    case_id = await open_case(sessions, clock())
    clock.advance(hours=1)
    await escalate_due(sessions, policy=policy(), now=clock())
    async with sessions() as session, session.begin():
        case = await cases.get_case(session, case_id=case_id)
        assert case is not None
        case.status = "resolved"
        await record_change(
            session, case, actor="nylas", action="resolved", now=clock(), line="Recovered."
        )

    assert [p.payload["action"] for p in await queued(sessions, OutboxKind.PAGE)] == [
        "trigger",
        "resolve",
    ]


async def test_v3_deadline_goes_to_the_last_level(sessions: Sessions, clock: FrozenClock) -> None:
    # The grant expired 61 h ago (the webhook came late): 11 h of the 72 h remain.
    broken = clock() - timedelta(hours=61)
    case_id = await open_case(sessions, clock(), api_version="v3", broken_since=broken)
    v2_case = await open_case(sessions, clock(), 2, broken_since=broken)

    assert await escalate_due(sessions, policy=policy(), now=clock()) == 1

    assert await escalations(sessions) == [(case_id, 2, 0, "deadline")]
    (line,) = await queued(sessions, OutboxKind.THREAD)
    assert "less than 12 h remain of the 72 h" in line.payload["text"]
    async with sessions() as session:
        untouched = await cases.get_case(session, case_id=v2_case)
    assert untouched is not None and untouched.escalation_step == 0


async def test_a_restart_neither_loses_nor_repeats_a_level(
    migrated_url: str, sessions: Sessions, clock: FrozenClock
) -> None:
    case_id = await open_case(sessions, clock())
    rules = policy()
    clock.advance(minutes=20)
    await escalate_due(sessions, policy=rules, now=clock())

    # A new process on the same database, later: it carries on from level 2.
    engine = create_engine(migrated_url)
    try:
        restarted = session_factory(engine)
        assert await escalate_due(restarted, policy=rules, now=clock()) == 0
        clock.advance(minutes=40)
        assert await escalate_due(restarted, policy=rules, now=clock()) == 1
    finally:
        await engine.dispose()

    assert await escalations(sessions) == [(case_id, 1, 0, "schedule"), (case_id, 2, 0, "schedule")]


async def test_two_processes_fire_each_level_once(
    migrated_url: str, sessions: Sessions, clock: FrozenClock
) -> None:
    ids = [await open_case(sessions, clock(), n) for n in range(1, 41)]
    rules = policy(repeat=1)
    engines = [create_engine(migrated_url) for _ in range(2)]
    try:
        factories = [session_factory(e) for e in engines]
        for minutes in (15, 45, 15, 45):
            clock.advance(minutes=minutes)
            ran = await asyncio.gather(
                *(escalate_due(f, policy=rules, now=clock(), limit=7) for f in factories)
            )
            assert sum(ran) == len(ids)
    finally:
        for engine in engines:
            await engine.dispose()

    fired = await escalations(sessions)
    assert len(fired) == 4 * len(ids)
    assert len({(case, level, rnd) for case, level, rnd, _ in fired}) == len(fired)
    async with sessions() as session:
        steps = {c.escalation_step for c in (await session.exec(select(Case))).all()}
    assert steps == {4}


@pytest.mark.parametrize(
    ("afters", "repeat", "seconds"),
    [
        (["15m", "1h"], 0, 30),  # minutes apart: the usual 30 s
        (["3s", "10s"], 0, 1.5),  # half the wait from the opening to the first level
        (["1m", "80s"], 0, 10),  # half the wait between two levels
        (["0s", "40s"], 1, 10),  # the repeat round counts: it starts at 60 s, 20 s after 40 s
        (["15m", "15m"], 0, 30),  # levels due together make no wait
        (["1s", "2s"], 0, 1),  # never more than once a second
    ],
)
def test_the_escalation_sweep_runs_often_enough_for_the_closest_steps(
    afters: list[str], repeat: int, seconds: float
) -> None:
    policy = Escalation.model_validate(
        {"repeat": repeat, "levels": [{"after": a, "mention": ["U0SUE"]} for a in afters]}
    )
    assert sweep_period(policy) == timedelta(seconds=seconds)
