"""The state table, row by row, through the real lifecycle on each database engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import cases
from storage.models import Account, CaseEvent, CaseStatus, OutboxMessage
from workflows.events import AccountEvent
from workflows.lifecycle import Outcome, apply_event
from workflows.states import V2_STATES, V3_STATES, Health, classify

Sessions = async_sessionmaker[AsyncSession]
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def route(email: str | None) -> str:
    return "C0ACME" if email and email.endswith("@acme.com") else "C0ALERTS"


async def apply(
    sessions: Sessions, version: str, state: str | None, at: datetime, **kw: object
) -> Outcome:
    event = AccountEvent(
        account_id=str(kw.pop("account_id", "acc-1")),
        api_version=version,
        event_type=str(kw.pop("event_type", "poll")),
        state=state,
        occurred_at=at,
        source=str(kw.pop("source", "webhook")),
        **kw,  # type: ignore[arg-type]
    )
    async with sessions() as session, session.begin():
        return await apply_event(session, event, now=at + timedelta(seconds=5), route=route)


async def outbox_kinds(sessions: Sessions) -> list[tuple[str, str]]:
    async with sessions() as session:
        rows = (await session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id)))).all()
    return [(m.kind, m.channel) for m in rows]


# Every v2 sync_state from the account sync-states table, and what it must do to a healthy
# account: open a case of a kind, or nothing.
V2_EXPECTED = {
    "running": None,
    "valid": None,
    "partial": None,
    "initializing": None,
    "downloading": None,
    "invalid": "reauth",
    "invalid-credentials": "reauth",
    "stopped": "stopped",
    "exception": "support",
    "sync-error": "support",
    "deleted": None,
}
V3_EXPECTED = {"valid": None, "invalid": "reauth", "deleted": None}


def test_every_documented_state_has_a_row() -> None:
    assert set(V2_STATES) == set(V2_EXPECTED)
    assert set(V3_STATES) == set(V3_EXPECTED)


@pytest.mark.parametrize(
    ("version", "state", "kind"),
    [("v2", s, k) for s, k in V2_EXPECTED.items()] + [("v3", s, k) for s, k in V3_EXPECTED.items()],
)
async def test_state_from_healthy(
    sessions: Sessions, version: str, state: str, kind: str | None
) -> None:
    healthy = "running" if version == "v2" else "valid"
    await apply(sessions, version, healthy, T0, email="ana@acme.com")
    outcome = await apply(sessions, version, state, T0 + timedelta(minutes=1))
    async with sessions() as session:
        case = await cases.get_open_case(session, account_id="acc-1")
        account = await cases.get_account(session, account_id="acc-1")
    assert account is not None and account.sync_state == state
    if kind is None:
        assert outcome == Outcome("unchanged")
        assert case is None
        assert await outbox_kinds(sessions) == []
    else:
        assert outcome.action == "opened"
        assert case is not None and (case.kind, case.state, case.status) == (kind, state, "open")
        assert case.slack_channel == "C0ACME"  # routed by the account's domain
        assert await outbox_kinds(sessions) == [("post", "C0ACME")]


@pytest.mark.parametrize(
    ("version", "state", "resolves"),
    [("v2", s, V2_STATES[s].health is not Health.BROKEN) for s in V2_EXPECTED]
    + [("v3", s, V3_STATES[s].health is not Health.BROKEN) for s in V3_EXPECTED],
)
async def test_state_with_an_open_case(
    sessions: Sessions, version: str, state: str, resolves: bool
) -> None:
    broken = "stopped" if version == "v2" else "invalid"
    opened = await apply(sessions, version, broken, T0)
    outcome = await apply(sessions, version, state, T0 + timedelta(minutes=1))
    async with sessions() as session:
        case = await cases.get_case(session, case_id=opened.case_id or 0)
        events = [e.action for e in await cases.case_events(session, case_id=opened.case_id or 0)]
    assert case is not None
    if resolves:
        assert outcome == Outcome("resolved", case.id)
        assert case.status == CaseStatus.RESOLVED and case.resolved_by == "nylas"
        expected = (
            "deleted" if state == "deleted" else f"recovered: {classify(version, state).words}"
        )
        assert expected in (case.resolution or "")
        assert events == ["opened", "resolved"]
        assert [k for k, _ in await outbox_kinds(sessions)] == ["post", "update", "thread"]
    elif state == broken:
        assert outcome == Outcome("unchanged", case.id)
        assert events == ["opened"]
    else:
        assert outcome == Outcome("updated", case.id)
        assert (case.state, case.kind, case.status) == (
            state,
            classify(version, state).kind,
            "open",
        )
        assert events == ["opened", "state_changed"]


async def test_unknown_state_is_alerted_not_dropped(sessions: Sessions) -> None:
    outcome = await apply(sessions, "v2", "quarantined", T0)
    async with sessions() as session:
        case = await cases.get_case(session, case_id=outcome.case_id or 0)
    assert case is not None and (case.kind, case.state) == ("unknown", "quarantined")
    assert "does not know" in classify("v2", "quarantined").words


async def test_events_out_of_order_are_recorded_not_applied(sessions: Sessions) -> None:
    # The re-authentication (t=10:05) arrives before the expiry it follows (t=10:00).
    await apply(
        sessions,
        "v3",
        "valid",
        T0 + timedelta(minutes=5),
        event_type="grant.updated",
        details={"reauthenticated": True},
    )
    late = await apply(sessions, "v3", "invalid", T0, event_type="grant.expired")
    assert late.action == "stale"
    async with sessions() as session:
        account = await cases.get_account(session, account_id="acc-1")
        assert await cases.get_open_case(session, account_id="acc-1") is None
        stale = (
            await session.exec(select(CaseEvent).where(CaseEvent.action == "stale_event"))
        ).one()
    assert account is not None and account.sync_state == "valid"
    assert stale.details["state"] == "invalid" and stale.details["current_state"] == "valid"


async def test_reauthentication_resolves_with_its_reason(sessions: Sessions) -> None:
    opened = await apply(sessions, "v3", "invalid", T0, event_type="grant.expired")
    await apply(
        sessions,
        "v3",
        "valid",
        T0 + timedelta(hours=1),
        event_type="grant.updated",
        details={"reauthenticated": True},
    )
    async with sessions() as session:
        case = await cases.get_case(session, case_id=opened.case_id or 0)
    assert case is not None and case.resolution == "The end user re-authenticated."


async def test_event_without_state_updates_details_only(sessions: Sessions) -> None:
    opened = await apply(sessions, "v3", "invalid", T0, email="old@acme.com")
    outcome = await apply(
        sessions,
        "v3",
        None,
        T0 + timedelta(minutes=1),
        email="new@acme.com",
        event_type="grant.updated",
    )
    assert outcome == Outcome("recorded", opened.case_id)
    async with sessions() as session:
        account = await session.get(Account, "acc-1")
        case = await cases.get_open_case(session, account_id="acc-1")
    assert account is not None and (account.email, account.sync_state) == (
        "new@acme.com",
        "invalid",
    )
    assert case is not None


async def test_a_new_episode_opens_a_new_case(sessions: Sessions) -> None:
    first = await apply(sessions, "v2", "invalid", T0)
    await apply(sessions, "v2", "running", T0 + timedelta(hours=1))
    second = await apply(sessions, "v2", "invalid", T0 + timedelta(hours=2))
    assert first.action == second.action == "opened"
    assert first.case_id != second.case_id


# --- stopped on purpose ------------------------------------------------------------------------


@pytest.mark.parametrize("billing", ["cancelled", "deleted"])
async def test_a_downgraded_stopped_account_gets_no_case(sessions: Sessions, billing: str) -> None:
    await apply(sessions, "v2", "running", T0, email="ana@acme.com", billing_state="paid")
    outcome = await apply(
        sessions, "v2", "stopped", T0 + timedelta(minutes=1), billing_state=billing
    )
    assert outcome == Outcome("recorded")
    async with sessions() as session:
        assert await cases.get_open_case(session, account_id="acc-1") is None
        actions = [e.action for e in (await session.exec(select(CaseEvent))).all()]
    assert actions == ["stopped_on_purpose"]
    assert await outbox_kinds(sessions) == []


async def test_a_stopped_account_still_billed_or_of_unknown_billing_gets_a_case(
    sessions: Sessions,
) -> None:
    paid = await apply(sessions, "v2", "stopped", T0, account_id="paid", billing_state="paid")
    unknown = await apply(sessions, "v2", "stopped", T0, account_id="unknown")
    assert (paid.action, unknown.action) == ("opened", "opened")


async def test_an_open_stopped_case_is_resolved_when_the_account_was_downgraded(
    sessions: Sessions,
) -> None:
    opened = await apply(sessions, "v2", "stopped", T0, email="ana@acme.com", billing_state="paid")
    outcome = await apply(
        sessions, "v2", "stopped", T0 + timedelta(hours=1), billing_state="cancelled"
    )
    assert outcome == Outcome("resolved", opened.case_id)
    async with sessions() as session:
        case = await cases.get_case(session, case_id=opened.case_id or 0)
    assert case is not None and case.status == CaseStatus.RESOLVED
    assert case.resolution is not None and case.resolution.startswith("Stopped on purpose")
    assert "billing state cancelled" in case.resolution


async def test_a_retry_in_progress_keeps_its_case_through_its_own_downgrade(
    sessions: Sessions,
) -> None:
    opened = await apply(sessions, "v2", "stopped", T0, billing_state="paid")
    async with sessions() as session, session.begin():
        case = await cases.get_case(session, case_id=opened.case_id or 0)
        assert case is not None
        case.busy_with, case.busy_until = "A retry", T0 + timedelta(hours=2)
        session.add(case)
    outcome = await apply(
        sessions, "v2", "stopped", T0 + timedelta(minutes=1), billing_state="cancelled"
    )
    assert outcome == Outcome("unchanged", opened.case_id)


# --- when an account was (re)connected ---------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "trigger", "state", "details", "connects"),
    [
        ("v2", "account.connected", "partial", {"trigger_state": "initializing"}, True),
        ("v2", "account.running", "running", {"trigger_state": "running"}, False),
        ("v2", "poll", "partial", {}, False),
        ("v3", "grant.created", "valid", {}, True),
        ("v3", "grant.updated", "valid", {"reauthenticated": True}, True),
        ("v3", "grant.updated", None, {"reauthenticated": False}, False),
    ],
)
async def test_connection_time_is_kept_from_the_events_that_say_so(
    sessions: Sessions,
    version: str,
    trigger: str,
    state: str | None,
    details: dict[str, object],
    connects: bool,
) -> None:
    await apply(sessions, version, "running" if version == "v2" else "valid", T0)
    at = T0 + timedelta(days=3)
    await apply(sessions, version, state, at, event_type=trigger, details=details)
    async with sessions() as session:
        account = await cases.get_account(session, account_id="acc-1")
    assert account is not None
    assert account.connected_at == (at if connects else None)
