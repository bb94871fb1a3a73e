"""Storm grouping through the real lifecycle, and the escalation of an incident as a whole."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import (
    PAGER_CHANNEL,
    Case,
    CaseEvent,
    Incident,
    IncidentStatus,
    OutboxKind,
    OutboxMessage,
    OutboxStatus,
)
from tests.conftest import Nylas
from workflows import bulk
from workflows.escalation import escalate_due
from workflows.events import AccountEvent
from workflows.lifecycle import apply_event
from workflows.links import LinkMaker
from workflows.policy import Escalation, EscalationLevel, Storms, parse_duration

Sessions = async_sessionmaker[AsyncSession]
T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
STORMS = Storms(threshold=3, window=parse_duration("10m"))
POLICY = Escalation(
    levels=[
        EscalationLevel(after=parse_duration("15m"), mention=["S0ONCALL"]),
        EscalationLevel(after=parse_duration("1h"), dm=["U0LEAD"], pagerduty=True),
    ]
)


def route(email: str | None) -> str:
    return "C0ALERTS"


def expiry(
    n: int,
    at: datetime,
    *,
    domain: str = "acme.com",
    provider: str = "google",
    state: str = "invalid",
) -> AccountEvent:
    """The expiry of grant ``g-DOMAIN-N`` (mailbox userN@DOMAIN)."""
    return AccountEvent(
        account_id=f"g-{domain}-{n}",
        api_version="v3",
        event_type="grant.expired",
        state=state,
        occurred_at=at,
        source="webhook",
        email=f"user{n}@{domain}",
        provider=provider,
    )


async def expire(
    sessions: Sessions, n: int, at: datetime, *, storms: Storms = STORMS, **what: Any
) -> None:
    """Apply ``expiry(n, at, **what)``, as the ingest worker would."""
    event = expiry(n, at, **what)
    async with sessions() as session, session.begin():
        await apply_event(session, event, now=at, route=route, storms=storms)


async def outbox(sessions: Sessions, **where: object) -> list[OutboxMessage]:
    async with sessions() as session:
        stmt = select(OutboxMessage).order_by(col(OutboxMessage.id))
        for name, value in where.items():
            stmt = stmt.where(getattr(OutboxMessage, name) == value)
        return list((await session.exec(stmt)).all())


async def incidents(sessions: Sessions) -> list[Incident]:
    async with sessions() as session:
        return list((await session.exec(select(Incident).order_by(col(Incident.id)))).all())


async def test_below_the_threshold_each_case_is_posted_alone(sessions: Sessions) -> None:
    await expire(sessions, 1, T0)
    await expire(sessions, 2, T0 + timedelta(minutes=1))
    # Outside the window: does not count with the first two.
    await expire(sessions, 3, T0 + timedelta(minutes=12))

    assert await incidents(sessions) == []
    posts = await outbox(sessions, kind=OutboxKind.POST)
    assert len(posts) == 3 and all(m.case_id for m in posts)


async def test_the_threshold_opens_an_incident_and_withdraws_unsent_alerts(
    sessions: Sessions,
) -> None:
    await expire(sessions, 1, T0)
    # The first alert went out before the storm was recognized.
    async with sessions() as session, session.begin():
        (first,) = (await session.exec(select(OutboxMessage))).all()
        first.status, first.attempts = OutboxStatus.SENT, 1
        session.add(first)
    await expire(sessions, 2, T0 + timedelta(minutes=1))
    await expire(sessions, 3, T0 + timedelta(minutes=2))
    await expire(sessions, 4, T0 + timedelta(minutes=3))
    await expire(sessions, 1, T0 + timedelta(minutes=3), domain="other.org")

    (incident,) = await incidents(sessions)
    assert (incident.scope, incident.key, incident.status) == ("domain", "acme.com", "open")
    async with sessions() as session:
        members = (await session.exec(select(Case).where(Case.incident_id == incident.id))).all()
    assert sorted(c.account_id for c in members) == [f"g-acme.com-{n}" for n in (1, 2, 3, 4)]
    assert [c.own_alert for c in sorted(members, key=lambda c: c.id or 0)] == [
        True,
        False,
        False,
        False,
    ]
    assert [m.kind for m in await outbox(sessions, incident_id=incident.id)] == ["post", "update"]
    statuses = [(m.case_id, m.status) for m in await outbox(sessions, kind=OutboxKind.POST)]
    assert statuses == [
        (1, "sent"),
        (2, "superseded"),
        (3, "superseded"),
        (None, "pending"),  # the incident's message
        (5, "pending"),  # another domain: its own alert
    ]
    # The fourth case opened into the open incident: no alert, nothing queued for it, and
    # no findings of its own (nothing shows them); its audit says where it went.
    assert await outbox(sessions, case_id=4) == []
    async with sessions() as session:
        fourth = await session.get(Case, 4)
        lines = (await session.exec(select(CaseEvent).where(CaseEvent.case_id == 4))).all()
    assert fourth is not None and fourth.diagnosis == [] and fourth.escalation_due_at is None
    assert [(e.action, e.details.get("incident")) for e in lines] == [
        ("opened", None),
        ("joined_incident", incident.id),
    ]
    # The case already posted is told in its thread.
    threads = await outbox(sessions, kind=OutboxKind.THREAD, case_id=1)
    assert "Part of incident #1" in threads[0].payload["text"]


async def test_cases_joining_in_one_transaction_queue_one_update_and_a_rollback_forgets_it(
    sessions: Sessions,
) -> None:
    for n in (1, 2, 3):
        await expire(sessions, n, T0)
    (incident,) = await incidents(sessions)
    updates = [m.id for m in await outbox(sessions, kind=OutboxKind.UPDATE)]

    later = T0 + timedelta(minutes=5)  # the update queued before is long due and gone
    async with sessions() as session, session.begin():
        async with session.begin_nested() as savepoint:
            await apply_event(session, expiry(4, T0), now=later, route=route, storms=STORMS)
            await savepoint.rollback()  # that case, and the update it queued, never happened
        for n in (5, 6, 7):
            await apply_event(session, expiry(n, T0), now=later, route=route, storms=STORMS)
        (queued,) = [
            m
            for m in await session.exec(select(OutboxMessage))
            if m.kind == OutboxKind.UPDATE and m.id not in updates
        ]
        assert (queued.kind, queued.incident_id) == (OutboxKind.UPDATE, incident.id)
        queued.status = OutboxStatus.SENT  # sent as soon as the transaction commits
        session.add(queued)
    # The same session, a new transaction: what the last one queued is not counted on.
    async with session.begin():
        await apply_event(session, expiry(8, T0), now=later, route=route, storms=STORMS)
    new = [m for m in await outbox(sessions, kind=OutboxKind.UPDATE) if m.id not in updates]
    assert [m.status for m in new] == [OutboxStatus.SENT, OutboxStatus.PENDING]


async def test_cases_of_one_transaction_look_their_open_incident_up_once(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    for n in (1, 2, 3):
        await expire(sessions, n, T0)
    (incident,) = await incidents(sessions)
    lookups: list[str] = []

    def seen(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        if "FROM incidents" in sql and "incidents.scope" in sql:
            lookups.append(sql)

    later = T0 + timedelta(minutes=1)
    sa_event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        async with sessions() as session, session.begin():
            for n in (4, 5, 6):
                await apply_event(session, expiry(n, T0), now=later, route=route, storms=STORMS)
            assert len(lookups) == 1  # the first case looked; the others knew
            # An incident this transaction ended is not joined on what it knew.
            found = await session.get(Incident, incident.id)
            assert found is not None
            found.status = IncidentStatus.ENDED
            session.add(found)
            await apply_event(session, expiry(7, T0), now=later, route=route, storms=STORMS)
            assert len(lookups) > 1
    finally:
        sa_event.remove(engine.sync_engine, "before_cursor_execute", seen)
    async with sessions() as session:
        members = (await session.exec(select(Case).where(Case.incident_id == incident.id))).all()
    assert sorted(c.account_id for c in members) == [f"g-acme.com-{n}" for n in range(1, 7)]


async def test_an_integration_storm_needs_its_own_bar_of_cases_and_domains(
    sessions: Sessions,
) -> None:
    storms = Storms(threshold=5, provider_threshold=5, provider_domains=3)
    for n, domain in enumerate(("a.com", "b.com", "a.com", "b.com")):
        await expire(sessions, n, T0, domain=domain, storms=storms)
    assert await incidents(sessions) == []  # fewer cases than the provider's bar
    await expire(sessions, 4, T0, domain="b.com", storms=storms)
    assert await incidents(sessions) == []  # enough cases, but two domains: theirs
    await expire(sessions, 9, T0, domain="c.com", storms=storms)
    (incident,) = await incidents(sessions)
    assert (incident.scope, incident.key) == ("integration", "google")


async def test_an_incident_escalates_as_one_and_stands_down(sessions: Sessions) -> None:
    for n in range(3):
        await expire(sessions, n, T0)
    (incident,) = await incidents(sessions)

    # Its cases do not escalate one by one; the incident does, level by level.
    assert await escalate_due(sessions, policy=POLICY, now=T0 + timedelta(minutes=14)) == 0
    assert await escalate_due(sessions, policy=POLICY, now=T0 + timedelta(minutes=15)) == 1
    lines = await outbox(sessions, kind=OutboxKind.THREAD, incident_id=incident.id)
    assert lines[-1].payload["broadcast"] is True
    assert lines[-1].payload["text"].startswith("@S0ONCALL Escalated (level 1)")
    assert lines[-1].payload["parts"][0] == {"person": "S0ONCALL"}
    assert await escalate_due(sessions, policy=POLICY, now=T0 + timedelta(hours=1)) == 1
    (dm,) = await outbox(sessions, kind=OutboxKind.DM)
    assert (dm.channel, dm.incident_id, dm.case_id) == ("U0LEAD", incident.id, None)
    (page,) = await outbox(sessions, channel=PAGER_CHANNEL)
    assert page.payload["action"] == "trigger" and "storm at acme.com" in page.payload["summary"]
    assert all(m.case_id is None for m in await outbox(sessions, kind=OutboxKind.DM))

    result = await bulk.acknowledge_all(
        sessions, incident_id=incident.id or 0, actor="slack:U0SUE", now=T0 + timedelta(hours=2)
    )
    assert result.outcome == "done"
    pages = [m.payload["action"] for m in await outbox(sessions, channel=PAGER_CHANNEL)]
    assert pages == ["trigger", "acknowledge"]
    assert await escalate_due(sessions, policy=POLICY, now=T0 + timedelta(hours=9)) == 0

    for n in range(3):
        await expire(sessions, n, T0 + timedelta(hours=3), state="valid")
    (ended,) = await incidents(sessions)
    assert ended.status == IncidentStatus.ENDED
    pages = [m.payload["action"] for m in await outbox(sessions, channel=PAGER_CHANNEL)]
    assert pages == ["trigger", "acknowledge", "resolve"]
    summary = (await outbox(sessions, kind=OutboxKind.THREAD, incident_id=incident.id))[-1]
    assert summary.payload["broadcast"] is True
    assert "all 3 accounts at acme.com are resolved" in summary.payload["text"]


async def test_acknowledge_all_acknowledges_each_unresolved_case_once(
    sessions: Sessions,
) -> None:
    await expire(sessions, 1, T0)
    # The first alert went out before the storm was recognized: the case keeps its message.
    async with sessions() as session, session.begin():
        (first,) = (await session.exec(select(OutboxMessage))).all()
        first.status, first.attempts = OutboxStatus.SENT, 1
        session.add(first)
    for n in range(2, 7):
        await expire(sessions, n, T0 + timedelta(minutes=1))
    (incident,) = await incidents(sessions)
    later = T0 + timedelta(minutes=5)
    async with sessions() as session, session.begin():
        members = {
            c.id: c
            for c in (await session.exec(select(Case).where(Case.incident_id == incident.id)))
        }
        assert sorted(members) == [1, 2, 3, 4, 5, 6]
        members[2].status, members[2].snoozed_until = "snoozed", later
        members[3].status = "acknowledged"
        members[3].acknowledged_at, members[3].acknowledged_by = T0, "slack:U0ANA"
        members[4].status, members[4].resolved_at = "resolved", T0
        for case in members.values():
            session.add(case)
    threads_before = len(await outbox(sessions, kind=OutboxKind.THREAD))

    result = await bulk.acknowledge_all(
        sessions, incident_id=incident.id or 0, actor="slack:U0SUE", now=later
    )

    assert result.outcome == "done"
    assert result.message == f"You acknowledged incident #{incident.id} and 4 cases."
    async with sessions() as session:
        cases_now = {
            c.id: (c.status, c.acknowledged_by, c.acknowledged_at, c.updated_at)
            for c in (await session.exec(select(Case).where(Case.incident_id == incident.id)))
        }
        audit = (
            await session.exec(
                select(CaseEvent.case_id, CaseEvent.details)
                .where(CaseEvent.action == "acknowledged")
                .order_by(col(CaseEvent.id))
            )
        ).all()
    assert cases_now[1] == ("acknowledged", "slack:U0SUE", later, later)
    assert cases_now[2] == ("snoozed", "slack:U0SUE", later, later)  # stays snoozed
    assert cases_now[3][:3] == ("acknowledged", "slack:U0ANA", T0)  # acknowledged before
    assert cases_now[4][:2] == ("resolved", None)
    assert cases_now[5] == cases_now[6] == ("acknowledged", "slack:U0SUE", later, later)
    assert [case_id for case_id, _ in audit] == [1, 2, 5, 6]
    assert all(details == {"incident": incident.id} for _, details in audit)
    # The case with its own message is told in its thread; the incident's thread says it once.
    threads = (await outbox(sessions, kind=OutboxKind.THREAD))[threads_before:]
    assert [(m.case_id, m.incident_id) for m in threads] == [(1, None), (None, incident.id)]
    assert threads[0].payload["text"].startswith("Acknowledged by ")
    assert [m.case_id for m in await outbox(sessions, kind=OutboxKind.UPDATE, case_id=1)] == [1]


async def test_bulk_actions_refuse_a_missing_or_ended_incident(sessions: Sessions) -> None:
    missing = await bulk.acknowledge_all(sessions, incident_id=99, actor="slack:U0SUE", now=T0)
    assert missing.outcome == "missing"
    for n in range(3):
        await expire(sessions, n, T0)
    for n in range(3):
        await expire(sessions, n, T0 + timedelta(hours=1), state="valid")
    before = len(await outbox(sessions))
    ended = await bulk.reauth_links(
        sessions,
        incident_id=1,
        actor="slack:U0SUE",
        now=T0,
        maker=LinkMaker(hosted=lambda a: "https://x"),
    )
    assert ended.outcome == "stale"
    assert len(await outbox(sessions)) == before


async def test_links_for_all_are_one_per_end_user(sessions: Sessions) -> None:
    for n in range(3):
        await expire(sessions, n, T0)
    result = await bulk.reauth_links(
        sessions,
        incident_id=1,
        actor="slack:U0SUE",
        now=T0,
        maker=LinkMaker(hosted=lambda a: f"https://auth.example/{a.id}"),
    )
    assert result.outcome == "done"
    assert result.links_csv().splitlines() == [
        '"email","link"',
        *(f'"user{n}@acme.com","https://auth.example/g-acme.com-{n}"' for n in range(3)),
    ]
    async with sessions() as session:
        waiting = (await session.exec(select(Case.status))).all()
    assert set(waiting) == {"waiting_on_user"}


async def test_retry_all_retries_the_stopped_v2_accounts(sessions: Sessions, nylas: Nylas) -> None:
    for n in range(3):
        account_id = f"a-{n}"
        nylas.fake.add_v2_account(
            id=account_id,
            email=f"user{n}@acme.com",
            sync_state="stopped",
            upgrade_result="running" if n else "stopped",
        )
        event = AccountEvent(
            account_id=account_id,
            api_version="v2",
            event_type="account.stopped",
            state="stopped",
            occurred_at=T0,
            source="webhook",
            email=f"user{n}@acme.com",
            provider="imap",
        )
        async with sessions() as session, session.begin():
            await apply_event(session, event, now=T0, route=route, storms=STORMS)
    (incident,) = await incidents(sessions)

    result = await bulk.retry_all(
        sessions, incident_id=incident.id or 0, actor="slack:U0SUE", now=T0, nylas=nylas.v2
    )

    assert result.outcome == "done"
    assert result.message == "Retry all for incident #1: 2 recovered, 1 still not syncing."
    for n in range(3):
        assert len(nylas.fake.calls_to("POST", rf"/a/[^/]+/accounts/a-{n}/downgrade")) == 1
        assert len(nylas.fake.calls_to("POST", rf"/a/[^/]+/accounts/a-{n}/upgrade")) == 1
    async with sessions() as session:
        states = dict((await session.exec(select(Case.account_id, Case.status))).all())
    assert states == {"a-0": "open", "a-1": "resolved", "a-2": "resolved"}
    line = (await outbox(sessions, kind=OutboxKind.THREAD, incident_id=incident.id))[-1]
    assert line.payload["text"] == "Retry all by @U0SUE: 2 recovered, 1 still not syncing."
    assert {"person": "slack:U0SUE"} in line.payload["parts"]

    # Again: only the account still stopped is retried.
    again = await bulk.retry_all(
        sessions, incident_id=incident.id or 0, actor="slack:U0SUE", now=T0, nylas=nylas.v2
    )
    assert again.message == "Retry all for incident #1: 1 still not syncing."
    assert len(nylas.fake.calls_to("POST", r"/a/[^/]+/accounts/a-0/downgrade")) == 2
    assert len(nylas.fake.calls_to("POST", r"/a/[^/]+/accounts/a-1/downgrade")) == 1


async def test_public_mail_domains_never_form_a_domain_storm(sessions: Sessions) -> None:
    for n in range(6):
        await expire(sessions, n, T0, domain="gmail.com")
    assert await incidents(sessions) == []  # unrelated people: each is alerted alone
    posts = await outbox(sessions, kind=OutboxKind.POST)
    assert len(posts) == 6 and all(m.case_id for m in posts)


async def member_ids(sessions: Sessions, incident_id: int | None) -> list[str]:
    async with sessions() as session:
        stmt = select(Case).where(Case.incident_id == incident_id).order_by(col(Case.id))
        return [c.account_id for c in (await session.exec(stmt)).all()]


async def test_a_quiet_incident_is_sealed_and_the_next_case_alerts_alone(
    sessions: Sessions,
) -> None:
    for n in range(3):
        await expire(sessions, n, T0)
    (incident,) = await incidents(sessions)
    # Still within the window of the last case: it joins.
    await expire(sessions, 3, T0 + timedelta(minutes=9))
    assert len(await member_ids(sessions, incident.id)) == 4

    # Ten minutes after the last case joined, the storm is over.
    await expire(sessions, 4, T0 + timedelta(minutes=19))
    (sealed,) = await incidents(sessions)
    assert sealed.sealed_at == T0 + timedelta(minutes=19) and sealed.status == "open"
    assert len(await member_ids(sessions, incident.id)) == 4
    async with sessions() as session:
        alone = (await session.exec(select(Case).where(Case.account_id == "g-acme.com-4"))).one()
    assert alone.incident_id is None and alone.own_alert
    # It escalates on its own.
    await escalate_due(sessions, policy=POLICY, now=T0 + timedelta(minutes=19))
    await escalate_due(sessions, policy=POLICY, now=T0 + timedelta(minutes=35))
    own_lines = [
        m.payload["text"] for m in await outbox(sessions, kind=OutboxKind.THREAD, case_id=alone.id)
    ]
    assert any("Escalated (level 1)" in line for line in own_lines)
    assert [m.case_id for m in await outbox(sessions, kind=OutboxKind.POST)][-1] == alone.id
    lines = [
        m.payload["text"]
        for m in await outbox(sessions, incident_id=incident.id)
        if m.kind == OutboxKind.THREAD
    ]
    assert any("The storm is over" in line for line in lines)

    # A new storm of the same domain opens a new incident beside the sealed one.
    for n in range(5, 7):
        await expire(sessions, n, T0 + timedelta(minutes=20))
    old, new = await incidents(sessions)
    assert (old.id, old.key, new.key) == (incident.id, "acme.com", "acme.com")
    assert new.sealed_at is None
    assert await member_ids(sessions, new.id) == [f"g-acme.com-{n}" for n in (4, 5, 6)]


async def test_an_incident_takes_no_cases_after_its_max_age(sessions: Sessions) -> None:
    storms = Storms(threshold=3, window=parse_duration("10m"), max_age=parse_duration("30m"))
    at = T0
    for n in range(3):
        await expire(sessions, n, at, storms=storms)
    # A case every five minutes keeps the storm alive, until it is 30 minutes old.
    for n in range(3, 9):
        at += timedelta(minutes=5)
        await expire(sessions, n, at, storms=storms)
    (incident, *_) = await incidents(sessions)
    assert await member_ids(sessions, incident.id) == [f"g-acme.com-{n}" for n in range(8)]
    async with sessions() as session:
        last = (await session.exec(select(Case).where(Case.account_id == "g-acme.com-8"))).one()
    assert last.incident_id is None and last.own_alert


async def test_grants_that_name_their_credential_storm_by_it(sessions: Sessions) -> None:
    storms = Storms(threshold=5, provider_threshold=4, provider_domains=4)

    async def expire_with(n: int, domain: str, credential: str | None) -> None:
        event = expiry(n, T0, domain=domain)
        event = AccountEvent(**{**_fields(event), "credential_id": credential})
        async with sessions() as session, session.begin():
            await apply_event(session, event, now=T0, route=route, storms=storms)

    # Four grants of google over four domains, but through two credentials: no storm.
    for n, (domain, credential) in enumerate(
        [("a.com", "cred-1"), ("b.com", "cred-2"), ("c.com", "cred-1"), ("d.com", "cred-2")]
    ):
        await expire_with(n, domain, credential)
    assert await incidents(sessions) == []
    # Two more of cred-1: four of one credential over four domains.
    await expire_with(4, "e.com", "cred-1")
    await expire_with(5, "f.com", "cred-1")
    (incident,) = await incidents(sessions)
    assert (incident.scope, incident.key) == ("credential", "cred-1")
    assert await member_ids(sessions, incident.id) == [
        "g-a.com-0",
        "g-c.com-2",
        "g-e.com-4",
        "g-f.com-5",
    ]


def _fields(event: AccountEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in AccountEvent.__dataclass_fields__}
