"""One runner, one result and one PagerDuty follow-up for a case and for an incident."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import incidents as store
from storage.models import (
    Case,
    CaseStatus,
    Incident,
    IncidentScope,
    IncidentStatus,
    OutboxKind,
    OutboxMessage,
)
from storage.outbox import PAGER_CHANNEL
from tests.builders import open_case_with_alert
from workflows import actions, bulk, subject
from workflows.subject import ActionOutcome, ActionResult, Changed, pager_follow_up
from workflows.words import line

Sessions = async_sessionmaker[AsyncSession]
NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
CHANNEL = "C0ALERTS"


async def new_case(sessions: Sessions, account_id: str = "acc-1") -> int:
    """An open case whose alert is posted in the channel."""
    case_id = await open_case_with_alert(sessions, NOW, channel=CHANNEL, account_id=account_id)
    async with sessions() as session, session.begin():
        case = await session.get(Case, case_id)
        assert case is not None
        case.slack_channel, case.slack_ts = CHANNEL, "1700000000.000100"
        session.add(case)
    return case_id


async def new_incident(sessions: Sessions, case_id: int) -> int:
    async with sessions() as session, session.begin():
        incident = await store.create_incident(
            session, scope=IncidentScope.DOMAIN, key="acme.com", now=NOW, first_case_at=NOW
        )
        assert incident is not None and incident.id is not None
        incident.slack_channel = CHANNEL
        case = await session.get(Case, case_id)
        assert case is not None
        case.incident_id, case.own_alert = incident.id, False
        session.add_all([incident, case])
        return incident.id


def ack_change(seen: list[str]) -> subject.Change[Case] | subject.Change[Incident]:
    """A change that acknowledges any subject, and notes what it was given."""

    async def change(session: AsyncSession, alert: Case | Incident) -> Changed | ActionResult:
        seen.append(type(alert).__name__)
        if alert.acknowledged_at is not None:
            return ActionResult(ActionOutcome.ALREADY, "Already acknowledged.", alert)
        alert.acknowledged_at, alert.acknowledged_by = NOW, "slack:U0ANA"
        session.add(alert)
        return Changed("acknowledged", {}, line("Acknowledged."), "You acknowledged it.")

    return change


@pytest.mark.parametrize("kind", [Case, Incident])
async def test_one_runner_locks_changes_and_records_a_case_or_an_incident(
    sessions: Sessions, kind: type[Case] | type[Incident]
) -> None:
    case_id = await new_case(sessions)
    subject_id = case_id if kind is Case else await new_incident(sessions, case_id)
    seen: list[str] = []
    recorded: list[tuple[str, str]] = []

    async def lock(session: AsyncSession) -> Case | Incident | ActionResult:
        found = await session.get(kind, subject_id, with_for_update=True)
        return found if found is not None else ActionResult(ActionOutcome.MISSING, "Gone.")

    async def record(session: AsyncSession, alert: Case | Incident, changed: Changed) -> None:
        recorded.append((type(alert).__name__, changed.action))

    change = ack_change(seen)
    first = await subject.run(sessions, lock=lock, change=change, record=record)
    second = await subject.run(sessions, lock=lock, change=change, record=record)

    assert (first.outcome, first.message, first.changed) == (
        ActionOutcome.DONE,
        "You acknowledged it.",
        True,
    )
    assert isinstance(first.subject, kind) and first.subject.id == subject_id
    assert first.case is (first.subject if kind is Case else None)
    # The second run found the change made and stopped: nothing more was recorded.
    assert (second.outcome, second.changed) == (ActionOutcome.ALREADY, False)
    assert seen == [kind.__name__] * 2
    assert recorded == [(kind.__name__, "acknowledged")]
    async with sessions() as session:
        stored = await session.get(kind, subject_id)
    assert stored is not None and stored.acknowledged_by == "slack:U0ANA"


async def test_a_missing_subject_stops_before_any_change(sessions: Sessions) -> None:
    seen: list[str] = []

    async def lock(session: AsyncSession) -> Case | ActionResult:
        return ActionResult(ActionOutcome.MISSING, "Case #9 does not exist.")

    async def record(session: AsyncSession, alert: Case, changed: Changed) -> None:
        raise AssertionError("nothing changed, so nothing is recorded")

    done = await subject.run(sessions, lock=lock, change=ack_change(seen), record=record)
    assert (done.outcome, done.message, seen) == (
        ActionOutcome.MISSING,
        "Case #9 does not exist.",
        [],
    )


async def test_actions_on_a_case_and_on_an_incident_end_in_the_same_result(
    sessions: Sessions,
) -> None:
    alone = await new_case(sessions)
    member = await new_case(sessions, "acc-2")
    incident_id = await new_incident(sessions, member)

    on_case = await actions.acknowledge(sessions, case_id=alone, actor="slack:U0ANA", now=NOW)
    on_incident = await bulk.acknowledge_all(
        sessions, incident_id=incident_id, actor="slack:U0ANA", now=NOW
    )

    assert type(on_case) is type(on_incident) is ActionResult
    assert (on_case.outcome, on_incident.outcome) == (ActionOutcome.DONE, ActionOutcome.DONE)
    assert isinstance(on_case.subject, Case) and isinstance(on_incident.subject, Incident)
    assert on_incident.message == f"You acknowledged incident #{incident_id} and 1 cases."
    async with sessions() as session:
        lines = (
            await session.exec(select(OutboxMessage).where(OutboxMessage.kind == OutboxKind.THREAD))
        ).all()
    # The case's own thread, and the incident's: each told once (the member has no own alert).
    assert {(m.case_id, m.incident_id) for m in lines} == {(alone, None), (None, incident_id)}
    assert len(lines) == 2


def paged(
    kind: type[Case] | type[Incident], state: str | None, **fields: object
) -> Case | Incident:
    if kind is Case:
        return Case(
            account_id="a",
            kind="reauth",
            opened_at=NOW,
            updated_at=NOW,
            pager_state=state,
            **fields,
        )
    return Incident(
        scope=IncidentScope.DOMAIN,
        key="acme.com",
        opened_at=NOW,
        updated_at=NOW,
        first_case_at=NOW,
        last_case_at=NOW,
        pager_state=state,
        **fields,
    )


@pytest.mark.parametrize(
    ("alert", "expected"),
    [
        (paged(Case, None, status=CaseStatus.RESOLVED), None),
        (paged(Case, "triggered"), None),
        (paged(Case, "triggered", status=CaseStatus.ACKNOWLEDGED), "acknowledge"),
        (paged(Case, "triggered", status=CaseStatus.SNOOZED), "acknowledge"),
        (paged(Case, "acknowledged", status=CaseStatus.RESOLVED), "resolve"),
        (paged(Case, "resolved", status=CaseStatus.RESOLVED), None),
        (paged(Incident, None, status=IncidentStatus.ENDED), None),
        (paged(Incident, "triggered"), None),
        (paged(Incident, "triggered", acknowledged_at=NOW), "acknowledge"),
        (paged(Incident, "acknowledged", acknowledged_at=NOW), None),
        (paged(Incident, "acknowledged", status=IncidentStatus.ENDED), "resolve"),
        (paged(Incident, "triggered", status=IncidentStatus.ENDED), "resolve"),
    ],
)
def test_one_pager_follow_up_for_a_case_and_an_incident(
    alert: Case | Incident, expected: str | None
) -> None:
    assert pager_follow_up(alert) == expected


@pytest.mark.parametrize("kind", [Case, Incident])
async def test_the_follow_up_is_queued_under_the_subject_it_is_about(
    sessions: Sessions, kind: type[Case] | type[Incident]
) -> None:
    case_id = await new_case(sessions)
    subject_id = case_id if kind is Case else await new_incident(sessions, case_id)
    async with sessions() as session, session.begin():
        alert = await session.get(kind, subject_id)
        assert alert is not None
        alert.pager_state = "triggered"
        alert.status = CaseStatus.RESOLVED if kind is Case else IncidentStatus.ENDED
        await subject.queue_pager_follow_up(session, alert, NOW)
        await subject.queue_pager_follow_up(session, alert, NOW)  # nothing more to say
        assert alert.pager_state == "resolved"
        key = subject.dedup_key(alert)
    async with sessions() as session:
        pages = (
            await session.exec(select(OutboxMessage).where(OutboxMessage.channel == PAGER_CHANNEL))
        ).all()
    assert [(m.payload, m.case_id, m.incident_id) for m in pages] == [
        ({"action": "resolve"}, *((subject_id, None) if kind is Case else (None, subject_id)))
    ]
    assert key == f"reauthbot-{kind.__name__.lower()}-{subject_id}"
