"""Stuck sync states: accounts made through the real lifecycle, swept on each database engine."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import cases
from storage.models import Account, Case, CaseStatus, OutboxMessage
from workflows import actions, states
from workflows.clock import how_long
from workflows.events import AccountEvent
from workflows.lifecycle import Outcome, apply_event, open_case_for
from workflows.policy import Stuck, load_policy
from workflows.stuck import open_stuck_case, open_stuck_cases

Sessions = async_sessionmaker[AsyncSession]
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
DEFAULTS = Stuck()


def route(email: str | None) -> str:
    return "C0ACME" if email and email.endswith("@acme.com") else "C0ALERTS"


async def apply(
    sessions: Sessions,
    state: str,
    at: datetime,
    *,
    account_id: str = "acc-1",
    version: str = "v2",
    email: str | None = None,
    known_since: datetime | None = None,
) -> Outcome:
    """Apply a poll event; a first one to an account known for a month unless ``known_since``.

    A new account may stay partial for a week, so an account is made old unless a test is
    about new ones.
    """
    async with sessions() as session, session.begin():
        if await session.get(Account, account_id) is None:
            seen = known_since or at - timedelta(days=30)
            session.add(
                Account(id=account_id, api_version=version, first_seen_at=seen, updated_at=seen)
            )
    # One mailbox per account id: a second id for one email would be a duplicate case.
    event = AccountEvent(
        account_id=account_id,
        api_version=version,
        event_type="poll",
        state=state,
        occurred_at=at,
        source="poll",
        email=email or f"{account_id}@acme.com",
    )
    async with sessions() as session, session.begin():
        return await apply_event(session, event, now=at, route=route)


async def sweep(sessions: Sessions, now: datetime, limits: Stuck = DEFAULTS, **kw: int) -> int:
    return await open_stuck_cases(sessions, limits=limits, now=now, route=route, **kw)


async def all_cases(sessions: Sessions) -> list[Case]:
    async with sessions() as session:
        return list((await session.exec(select(Case).order_by(col(Case.id)))).all())


async def account(sessions: Sessions, account_id: str = "acc-1") -> Account:
    async with sessions() as session:
        found = await cases.get_account(session, account_id=account_id)
    assert found is not None
    return found


async def posts(sessions: Sessions) -> list[tuple[int | None, str]]:
    async with sessions() as session:
        rows = (await session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id)))).all()
    return [(m.case_id, m.channel) for m in rows if m.kind == "post"]


@pytest.mark.parametrize(
    ("state", "age", "opens"),
    [
        ("partial", timedelta(hours=23), False),
        ("partial", timedelta(hours=25), True),
        ("downloading", timedelta(days=6), False),
        ("downloading", timedelta(days=8), True),
        ("initializing", timedelta(minutes=50), False),
        ("initializing", timedelta(minutes=70), True),
    ],
)
async def test_a_transient_state_opens_a_case_only_past_its_limit(
    sessions: Sessions, state: str, age: timedelta, opens: bool
) -> None:
    await apply(sessions, "running", T0 - timedelta(days=30))
    assert await apply(sessions, state, T0) == Outcome("unchanged")
    now = T0 + age

    assert await sweep(sessions, now) == int(opens)

    found = await all_cases(sessions)
    if not opens:
        assert found == []
        assert await posts(sessions) == []
        return
    (case,) = found
    assert (case.kind, case.state, case.status) == ("stuck", state, "open")
    assert case.broken_since == T0  # stuck since the state began, not since the limit passed
    assert case.opened_at == now
    assert await posts(sessions) == [(case.id, "C0ACME")]  # its alert is queued, routed
    async with sessions() as session:
        (opened,) = await cases.case_events(session, case_id=case.id or 0)
    assert (opened.actor, opened.action) == ("system", "opened")
    assert opened.details == {
        "state": state,
        "state_since": T0.isoformat(),
        "limit": {"partial": "1 d", "downloading": "7 d", "initializing": "1 h"}[state],
        "stuck_for": how_long(age),
    }
    assert await sweep(sessions, now + timedelta(hours=1)) == 0  # never a second one


async def test_limits_come_from_the_policy(sessions: Sessions, tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[stuck]\npartial = "2h"\ninitializing = "10m"\n')
    limits = load_policy(path).stuck
    assert limits == Stuck(partial=timedelta(hours=2), initializing=timedelta(minutes=10))
    await apply(sessions, "partial", T0, account_id="p")
    await apply(sessions, "initializing", T0, account_id="i")
    await apply(sessions, "downloading", T0, account_id="d")

    assert await sweep(sessions, T0 + timedelta(minutes=9), limits) == 0
    assert await sweep(sessions, T0 + timedelta(minutes=11), limits) == 1
    assert await sweep(sessions, T0 + timedelta(hours=3), limits) == 1
    assert await sweep(sessions, T0 + timedelta(days=6), limits) == 0  # downloading: default
    assert [(c.account_id, c.state) for c in await all_cases(sessions)] == [
        ("i", "initializing"),
        ("p", "partial"),
    ]


async def test_healthy_broken_and_v3_accounts_never_get_a_stuck_case(sessions: Sessions) -> None:
    await apply(sessions, "running", T0, account_id="run")
    await apply(sessions, "valid", T0, account_id="val")
    await apply(sessions, "invalid", T0, account_id="inv")  # the lifecycle opens its case
    await apply(sessions, "valid", T0, account_id="grant", version="v3")

    assert await sweep(sessions, T0 + timedelta(days=30)) == 0

    found = await all_cases(sessions)
    assert [(c.account_id, c.kind) for c in found] == [("inv", "reauth")]


async def test_an_account_with_an_open_case_gets_no_second_one(sessions: Sessions) -> None:
    await apply(sessions, "partial", T0)
    async with sessions() as session, session.begin():
        acc = await cases.get_account(session, account_id="acc-1")
        assert acc is not None
        other = await open_case_for(
            session,
            acc,
            kind="duplicate",
            state="partial",
            broken_since=T0,
            actor="system",
            now=T0,
            route=route,
            audit={},
        )

    assert await sweep(sessions, T0 + timedelta(days=2)) == 0

    assert [(c.id, c.kind) for c in await all_cases(sessions)] == [(other.case_id, "duplicate")]


async def test_repeats_keep_the_clock_and_the_case_and_running_resolves_it(
    sessions: Sessions,
) -> None:
    await apply(sessions, "partial", T0)
    assert await apply(sessions, "partial", T0 + timedelta(hours=12)) == Outcome("unchanged")
    assert (await account(sessions)).state_since == T0  # a repeat does not reset the clock
    assert await sweep(sessions, T0 + timedelta(hours=25)) == 1
    (case,) = await all_cases(sessions)

    # Still partial: the case is about exactly that, so it stays open.
    outcome = await apply(sessions, "partial", T0 + timedelta(hours=26))
    assert outcome == Outcome("unchanged", case.id)
    (case,) = await all_cases(sessions)
    assert case.status == CaseStatus.OPEN
    assert (await account(sessions)).state_since == T0

    outcome = await apply(sessions, "running", T0 + timedelta(hours=27))
    assert outcome == Outcome("resolved", case.id)
    (case,) = await all_cases(sessions)
    assert case.status == CaseStatus.RESOLVED
    assert "recovered" in (case.resolution or "")
    assert await sweep(sessions, T0 + timedelta(days=9)) == 0


async def test_another_transient_state_ends_the_case_and_starts_a_new_clock(
    sessions: Sessions,
) -> None:
    await apply(sessions, "partial", T0)
    await sweep(sessions, T0 + timedelta(hours=25))
    moved = T0 + timedelta(hours=30)

    outcome = await apply(sessions, "downloading", moved)

    (first,) = await all_cases(sessions)
    assert outcome == Outcome("resolved", first.id)
    assert (await account(sessions)).state_since == moved
    assert await sweep(sessions, moved + timedelta(days=6)) == 0
    assert await sweep(sessions, moved + timedelta(days=8)) == 1
    second = (await all_cases(sessions))[-1]
    assert (second.kind, second.state, second.broken_since) == ("stuck", "downloading", moved)


async def test_a_resolved_stuck_case_is_not_reopened_for_the_same_stay(
    sessions: Sessions,
) -> None:
    await apply(sessions, "partial", T0)
    await sweep(sessions, T0 + timedelta(hours=25))
    (case,) = await all_cases(sessions)
    done = await actions.resolve(
        sessions,
        case_id=case.id or 0,
        actor="slack:U0ALICE",
        now=T0 + timedelta(hours=26),
        note="known Exchange issue",
    )
    assert done.case is not None and done.case.status == CaseStatus.RESOLVED

    assert await sweep(sessions, T0 + timedelta(days=5)) == 0  # the operator has seen it

    # It left partial and came back: a new stay, with its own clock and its own case.
    back = T0 + timedelta(days=6)
    await apply(sessions, "running", back - timedelta(hours=1))
    await apply(sessions, "partial", back)
    assert await sweep(sessions, back + timedelta(hours=23)) == 0
    assert await sweep(sessions, back + timedelta(hours=25)) == 1
    assert [c.status for c in await all_cases(sessions)] == ["resolved", "open"]


async def test_accounts_are_swept_in_batches(sessions: Sessions) -> None:
    for n in range(7):
        await apply(sessions, "partial", T0, account_id=f"acc-{n}")

    assert await sweep(sessions, T0 + timedelta(hours=25), limit=3) == 7

    assert sorted(c.account_id for c in await all_cases(sessions)) == [f"acc-{n}" for n in range(7)]


async def test_concurrent_sweeps_open_each_case_once(sessions: Sessions) -> None:
    ids = [f"acc-{n:02}" for n in range(24)]
    for account_id in ids:
        await apply(sessions, "partial", T0, account_id=account_id)
    now = T0 + timedelta(hours=25)

    results = await asyncio.gather(
        sweep(sessions, now, limit=5), sweep(sessions, now, limit=5), sweep(sessions, now)
    )

    assert sum(results) == len(ids)
    found = await all_cases(sessions)
    assert sorted(c.account_id for c in found) == ids
    assert len(await posts(sessions)) == len(ids)


async def test_losing_a_race_skips_the_account_and_keeps_the_batch(sessions: Sessions) -> None:
    await apply(sessions, "partial", T0, account_id="lost")
    await apply(sessions, "partial", T0, account_id="free")
    now = T0 + timedelta(hours=25)
    # This process reads both accounts; then another one opens a case for "lost" first.
    lost, free = await account(sessions, "lost"), await account(sessions, "free")
    async with sessions() as session, session.begin():
        assert await open_stuck_case(session, lost, limits=DEFAULTS, now=now, route=route)

    async with sessions() as session, session.begin():
        assert not await open_stuck_case(session, lost, limits=DEFAULTS, now=now, route=route)
        assert await open_stuck_case(session, free, limits=DEFAULTS, now=now, route=route)

    assert sorted(c.account_id for c in await all_cases(sessions)) == ["free", "lost"]
    assert len(await posts(sessions)) == 2


async def test_one_failing_account_does_not_stop_the_others(sessions: Sessions) -> None:
    await apply(sessions, "partial", T0, account_id="a", email="a@example.com")
    await apply(sessions, "partial", T0, account_id="b", email="b@broken.example")
    await apply(sessions, "partial", T0, account_id="c", email="c@example.com")
    now = T0 + timedelta(hours=25)

    def flaky(email: str | None) -> str:
        if email and email.endswith("@broken.example"):
            raise LookupError("no channel for this domain")
        return route(email)

    assert await open_stuck_cases(sessions, limits=DEFAULTS, now=now, route=flaky) == 2
    assert [c.account_id for c in await all_cases(sessions)] == ["a", "c"]
    assert await sweep(sessions, now) == 1  # picked up again on the next run


@pytest.mark.parametrize(
    ("state", "words"),
    [
        ("partial", "up to a week"),
        ("partial", "troubleshooting steps already taken"),
        ("downloading", "Contact Nylas Support"),
        ("initializing", "email.send"),
        ("initializing", "Re-authenticate"),
    ],
)
def test_a_stuck_case_gets_its_own_next_step(state: str, words: str) -> None:
    assert words in states.next_step("stuck", "v2", state)
    assert states.classify("v2", state).next_step == ""  # the state itself needs nothing


def test_other_cases_keep_their_state_s_next_step() -> None:
    assert states.next_step("reauth", "v2", "invalid") == states.REAUTH_STEP
    assert states.next_step("stopped", "v2", "stopped") == states.V2_STATES["stopped"].next_step
    assert states.next_step("unknown", "v2", None) == states.classify("v2", "unknown").next_step


# --- a new account may stay partial for a week -------------------------------------------------


async def test_a_new_account_may_stay_partial_for_a_week(sessions: Sessions) -> None:
    await apply(sessions, "partial", T0, account_id="new", known_since=T0)
    await apply(sessions, "partial", T0, account_id="old")

    assert await sweep(sessions, T0 + timedelta(hours=25)) == 1
    assert [c.account_id for c in await all_cases(sessions)] == ["old"]
    assert await sweep(sessions, T0 + timedelta(days=6, hours=23)) == 0
    assert await sweep(sessions, T0 + timedelta(days=7, hours=1)) == 1

    new_case = (await all_cases(sessions))[-1]
    assert (new_case.account_id, new_case.state) == ("new", "partial")
    async with sessions() as session:
        (opened,) = await cases.case_events(session, case_id=new_case.id or 0)
    assert opened.details["limit"] == "1 d"  # no longer new: the day for existing accounts


async def test_a_reconnected_account_is_new_again(sessions: Sessions) -> None:
    await apply(sessions, "running", T0 - timedelta(days=1))
    connected = AccountEvent(
        account_id="acc-1",
        api_version="v2",
        event_type="account.connected",
        state="partial",
        occurred_at=T0,
        source="webhook",
        details={"trigger_state": "initializing"},
    )
    async with sessions() as session, session.begin():
        await apply_event(session, connected, now=T0, route=route)
    assert (await account(sessions)).connected_at == T0

    assert await sweep(sessions, T0 + timedelta(days=2)) == 0
    assert await sweep(sessions, T0 + timedelta(days=7, minutes=1)) == 1


async def test_the_week_comes_from_the_policy(sessions: Sessions) -> None:
    limits = Stuck(partial_new=timedelta(days=2))
    await apply(sessions, "partial", T0, known_since=T0)

    assert await sweep(sessions, T0 + timedelta(hours=47), limits) == 0
    assert await sweep(sessions, T0 + timedelta(hours=49), limits) == 1


# --- send-only accounts ------------------------------------------------------------------------


async def stuck_initializing(sessions: Sessions, account_id: str = "acc-1") -> Case:
    await apply(sessions, "initializing", T0, account_id=account_id)
    assert await sweep(sessions, T0 + timedelta(hours=2)) == 1
    return (await all_cases(sessions))[-1]


async def test_a_send_only_account_is_never_alerted_for_initializing_until_undone(
    sessions: Sessions,
) -> None:
    case = await stuck_initializing(sessions)
    done = await actions.mark_send_only(
        sessions, case_id=case.id or 0, actor="slack:U0ALICE", now=T0 + timedelta(hours=3)
    )
    assert done.outcome == "done"
    (case,) = await all_cases(sessions)
    assert (case.status, case.resolution) == ("resolved", states.SEND_ONLY_RESOLUTION)
    assert (await account(sessions)).send_only

    # Out of initializing and back: a new stay, still not alerted.
    await apply(sessions, "running", T0 + timedelta(days=1))
    await apply(sessions, "initializing", T0 + timedelta(days=2))
    assert await sweep(sessions, T0 + timedelta(days=30)) == 0

    undone = await actions.undo_send_only(
        sessions, case_id=case.id or 0, actor="slack:U0ALICE", now=T0 + timedelta(days=30)
    )
    assert undone.outcome == "done" and not (await account(sessions)).send_only
    assert await sweep(sessions, T0 + timedelta(days=30, minutes=5)) == 1
    again = await actions.undo_send_only(
        sessions, case_id=case.id or 0, actor="slack:U0ALICE", now=T0 + timedelta(days=31)
    )
    assert again.outcome == "already"
    async with sessions() as session:
        trail = [e.action for e in await cases.case_events(session, case_id=case.id or 0)]
    assert trail == ["opened", "marked_send_only", "unmarked_send_only"]


async def test_only_a_case_stuck_initializing_can_be_called_send_only(sessions: Sessions) -> None:
    await apply(sessions, "partial", T0)
    await sweep(sessions, T0 + timedelta(hours=25))
    (case,) = await all_cases(sessions)

    result = await actions.mark_send_only(
        sessions, case_id=case.id or 0, actor="slack:U0ALICE", now=T0 + timedelta(hours=26)
    )

    assert result.outcome == "refused"
    assert not (await account(sessions)).send_only
    assert (await all_cases(sessions))[0].status == "open"


async def test_initializing_off_opens_nothing_for_initializing(sessions: Sessions) -> None:
    limits = Stuck(initializing=None)
    await apply(sessions, "initializing", T0, account_id="i")
    await apply(sessions, "partial", T0, account_id="p")

    assert await sweep(sessions, T0 + timedelta(days=30), limits) == 1
    assert [c.account_id for c in await all_cases(sessions)] == ["p"]
