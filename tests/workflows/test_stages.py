"""The ingest stages apply a batch exactly as ``apply_event`` applies its events one by one.

Each test sends the same deliveries twice, for two sets of accounts that cannot meet (their
own email domain and provider): once through the ingest worker in one batch, once event by
event through ``apply_event``; then compares what each left in the database.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import actors, inbox
from storage.models import Account, Case, CaseEvent, Incident, OutboxMessage
from tests.conftest import FrozenClock
from workflows import ingest, mutes
from workflows.lifecycle import apply_event
from workflows.nylas import samples, webhooks
from workflows.policy import Storms, parse_duration

Sessions = async_sessionmaker[AsyncSession]
STORMS = Storms(threshold=3, window=parse_duration("10m"))
BATCHED, ALONE = "batched", "alone"


def route(email: str | None) -> str:
    return "C0ALERTS"


def delivery(side: str, trigger: str, n: int, at: datetime, **kw: Any) -> bytes:
    """A v3 notification for grant ``g-SIDE-N`` (mailbox userN@SIDE.example, provider SIDE)."""
    grant = kw.pop("grant", "g-SIDE-{n}").replace("SIDE", side).format(n=n)
    payload = samples.v3_notification(
        trigger, grant_id=grant, email=f"user{n}@{side}.example", at=at, provider=side, **kw
    )
    return json.dumps(payload).encode()


async def run_both(sessions: Sessions, clock: FrozenClock, script: list[tuple[str, int, Any]]):
    """Apply ``script`` (trigger, n, seconds after the start, options) both ways; compare."""
    start = clock()
    bodies: dict[str, list[bytes]] = {BATCHED: [], ALONE: []}
    for trigger, n, (seconds, options) in script:
        for side in bodies:
            at = start + timedelta(seconds=seconds)
            bodies[side].append(delivery(side, trigger, n, at, **options))
    entries = [e for body in bodies[BATCHED] for e in webhooks.split("v3", body)]
    async with sessions() as session, session.begin():
        await inbox.add_deliveries(
            session, entries=[(e.dedupe_key, e.source, e.body) for e in entries], received_at=start
        )
    clock.advance(minutes=2)
    looked_at = await ingest.drain_inbox(
        sessions, nylas=None, clock=clock, route=route, storms=STORMS, limit=100
    )
    assert looked_at == len(entries)
    async with sessions() as session, session.begin():
        for body in bodies[ALONE]:
            for entry in webhooks.split("v3", body):
                event = webhooks.parse_entry(entry.source, entry.body)
                await apply_event(session, event, now=clock(), route=route, storms=STORMS)
    batched, alone = await what_is_left(sessions, BATCHED), await what_is_left(sessions, ALONE)
    assert batched == alone
    return batched


async def what_is_left(sessions: Sessions, side: str) -> dict[str, Any]:
    """The accounts, cases, audit lines, messages and incidents of one side, ids left out."""

    def plain(value: Any) -> Any:
        text = json.dumps(value, default=str, sort_keys=True).replace(side, "SIDE")
        return json.loads(text)

    async with sessions() as session:
        accounts = (await session.exec(select(Account).order_by(col(Account.id)))).all()
        ours = {a.id for a in accounts if side in a.id}
        cases = [
            c
            for c in (await session.exec(select(Case).order_by(col(Case.id)))).all()
            if c.account_id in ours
        ]
        case_ids = {c.id: n for n, c in enumerate(cases)}
        lines = (await session.exec(select(CaseEvent).order_by(col(CaseEvent.id)))).all()
        messages = (await session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id)))).all()
        found = (await session.exec(select(Incident).order_by(col(Incident.id)))).all()
    incidents = [i for i in found if side in i.key]
    incident_ids = {i.id: n for n, i in enumerate(incidents)}
    return plain(
        {
            "accounts": [a.model_dump(exclude={"details"}) for a in accounts if a.id in ours],
            "cases": [
                c.model_dump(exclude={"id", "diagnosis"})
                | {"incident_id": incident_ids.get(c.incident_id)}
                # Each side has a mute of its own: whether a case was muted is what compares.
                | {"muted_by": c.muted_by is not None}
                for c in cases
            ],
            "lines": [
                (case_ids.get(e.case_id), e.account_id, e.action, e.actor, sorted(e.details))
                for e in lines
                if e.account_id in ours
            ],
            "messages": sorted(
                (
                    m.kind,
                    m.status,
                    case_ids.get(m.case_id),
                    incident_ids.get(m.incident_id),
                    m.channel,
                    bool(m.dedupe_key),
                )
                for m in messages
                if m.case_id in case_ids or m.incident_id in incident_ids
            ),
            "incidents": [i.model_dump(exclude={"id"}) for i in incidents],
        }
    )


async def test_events_of_one_account_apply_in_order_and_a_stale_one_is_recorded(
    sessions: Sessions,
) -> None:
    left = await run_both(
        sessions,
        FrozenClock(),
        [
            ("grant.expired", 1, (0, {})),
            ("grant.expired", 2, (1, {})),
            ("grant.updated", 1, (60, {"reauthenticated": True})),  # resolves case 1
            ("grant.expired", 1, (30, {})),  # older than the re-authentication: stale
            ("grant.expired", 2, (90, {})),  # a repeat of the same state: unchanged
            ("grant.expired", 1, (120, {})),  # a new episode: a new case
        ],
    )
    assert [line[2] for line in left["lines"]] == [
        "opened",
        "opened",
        "resolved",
        "stale_event",
        "opened",
    ]


async def test_a_duplicate_account_is_flagged_in_its_place_in_the_batch(
    sessions: Sessions,
) -> None:
    left = await run_both(
        sessions,
        FrozenClock(),
        [
            ("grant.expired", 1, (0, {})),
            # The same mailbox connected again under a new grant id: the old one is flagged.
            ("grant.created", 1, (10, {"grant": "g-SIDE-1b"})),
            ("grant.expired", 2, (20, {})),
        ],
    )
    assert "duplicate" in [line[2] for line in left["lines"]]


async def test_a_storm_crossing_its_threshold_in_the_middle_of_a_batch(
    sessions: Sessions,
) -> None:
    left = await run_both(
        sessions, FrozenClock(), [("grant.expired", n, (n, {})) for n in range(1, 8)]
    )
    assert len(left["incidents"]) == 1
    assert [c["incident_id"] for c in left["cases"]] == [0] * 7
    assert [c["own_alert"] for c in left["cases"]] == [False] * 7


async def test_cases_of_a_muted_provider_get_no_alert_and_make_no_storm(
    sessions: Sessions,
) -> None:
    clock = FrozenClock()
    for side in (BATCHED, ALONE):
        await mutes.start(
            sessions,
            scope="provider",
            value=side,
            length=parse_duration("2h"),
            actor=actors.slack("U0ANA"),
            now=clock(),
        )
    # Seven cases would cross the storm threshold (3) twice over, were they not muted.
    left = await run_both(sessions, clock, [("grant.expired", n, (n, {})) for n in range(1, 8)])
    assert left["incidents"] == []
    assert [c["muted_by"] for c in left["cases"]] == [True] * 7
    assert [c["own_alert"] for c in left["cases"]] == [False] * 7
    assert [line[2] for line in left["lines"]] == ["opened", "muted"] * 7
    assert left["messages"] == []
