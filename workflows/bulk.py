"""Bulk actions on an incident: acknowledge all, re-auth links for all, retry all.

Each applies the same change as the single-case action to every unresolved case of the
incident it fits, audits each case, and tells the incident's thread once. Acknowledging and
making links run through ``workflows.subject.run``, in one transaction with the incident
locked, so two clicks at once make one change. Retrying calls Nylas per case through
``workflows.actions.retry_sync``, which holds each case while its call is made.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import cases
from storage import incidents as store
from storage.incidents import LINKABLE_KINDS
from storage.models import Account, ApiVersion, Case, CaseKind, CaseStatus, Incident, IncidentStatus
from workflows import actions, links, subject
from workflows.actions import who
from workflows.incidents import queue_line, queue_update
from workflows.links import LinkMaker
from workflows.notify import queue_case_change, record_change
from workflows.nylas import NylasClient
from workflows.subject import (
    ActionOutcome,
    ActionResult,
    Changed,
    pager_follow_up,
    queue_pager_follow_up,
    result,
)
from workflows.words import line

Sessions = async_sessionmaker[AsyncSession]

RETRY_CONCURRENCY = 4  # Nylas calls in flight for "Retry all"

# A change to an open incident: given the session, the locked incident and the ids of its
# cases this transaction locked, apply it; or an ActionResult to stop with no change.
Change = Callable[[AsyncSession, Incident, set[int]], Awaitable[Changed | ActionResult]]


async def _lock_members(session: AsyncSession, incident_id: int) -> set[int]:
    """Lock the incident's unresolved cases, before the incident itself; return their ids.

    A single-case action holds its case while ``record_change`` locks the incident; taking
    the incident first and then its cases deadlocked with it on PostgreSQL (found by
    bench/storm.py). A case that joins after this is left alone: it was not there when the
    operator clicked.
    """
    stmt = (
        select(Case.id)
        .where(col(Case.incident_id) == incident_id, col(Case.status) != CaseStatus.RESOLVED)
        .order_by(col(Case.id))
        .with_for_update()
    )
    return {case_id for case_id in (await session.exec(stmt)).all() if case_id is not None}


async def _lock(session: AsyncSession, incident_id: int) -> Incident | ActionResult:
    incident = await store.lock_incident(session, incident_id=incident_id)
    if incident is None:
        return ActionResult(ActionOutcome.MISSING, f"Incident #{incident_id} does not exist.")
    if incident.status != IncidentStatus.OPEN:
        return ActionResult(ActionOutcome.STALE, f"Incident #{incident_id} has ended.", incident)
    return incident


async def _unresolved(session: AsyncSession, incident_id: int) -> list[tuple[Case, Account]]:
    rows = await store.members(session, incident_id=incident_id)
    return [(c, a) for c, a in rows if c.status != CaseStatus.RESOLVED]


async def _act(
    sessions: Sessions, *, incident_id: int, now: datetime, change: Change
) -> ActionResult:
    """Run a change to every case of an open incident, then tell the incident's thread once."""
    locked: set[int] = set()

    async def lock(session: AsyncSession) -> Incident | ActionResult:
        locked.update(await _lock_members(session, incident_id))
        return await _lock(session, incident_id)

    async def apply(session: AsyncSession, incident: Incident) -> Changed | ActionResult:
        return await change(session, incident, locked)

    async def record(session: AsyncSession, incident: Incident, changed: Changed) -> None:
        # Each case's own change is audited on the case; the incident's thread says it once.
        await queue_line(session, incident, changed.said, now)
        await queue_update(session, incident, now)

    return await subject.run(sessions, lock=lock, change=apply, record=record)


async def refuse(
    sessions: Sessions, *, incident_id: int, action: str, actor: str, now: datetime
) -> ActionResult:
    """Record a refused bulk action; nothing else changes."""
    async with sessions() as session, session.begin():
        await cases.record_event(
            session,
            actor=actor,
            action="refused",
            at=now,
            details={"action": f"{action} all", "incident": incident_id},
        )
    return ActionResult(ActionOutcome.REFUSED, f"You are not allowed to {action} cases.")


async def acknowledge_all(
    sessions: Sessions, *, incident_id: int, actor: str, now: datetime
) -> ActionResult:
    """Acknowledge the incident and every case of it not acknowledged yet."""

    async def change(
        session: AsyncSession, incident: Incident, locked: set[int]
    ) -> Changed | ActionResult:
        if incident.acknowledged_at is not None:
            by = who(incident.acknowledged_by or "someone")
            said = line(f"Incident #{incident_id} was acknowledged by ", by, ".")
            return result(ActionOutcome.ALREADY, said, incident)
        incident.acknowledged_at, incident.acknowledged_by = now, actor
        incident.escalation_due_at = None
        session.add(incident)
        await queue_pager_follow_up(session, incident, now)
        # A few statements for all its cases: one by one through the ORM, hundreds of them
        # held SQLite's write lock, and every webhook delivery waiting for it, for half a second.
        acked = await cases.acknowledge_many(session, case_ids=locked, actor=actor, at=now)
        if acked:
            incident.updated_at = now
        await cases.record_events(
            session,
            lines=[
                {
                    "actor": actor,
                    "action": "acknowledged",
                    "at": now,
                    "case_id": case.id,
                    "account_id": case.account_id,
                    "details": {"incident": incident_id},
                }
                for case in acked
            ],
        )
        said = line("Acknowledged by ", who(actor), f" with all of incident #{incident_id}.")
        for case in acked:
            # The incident's message and thread stand for the others; a case with a message
            # or a PagerDuty alert of its own is told as acknowledging it alone tells it.
            if case.own_alert or pager_follow_up(case) is not None:
                held = await cases.get_case(session, case_id=case.id or 0)
                assert held is not None
                await queue_case_change(session, held, said, now)
        count = len(acked)
        return Changed(
            "acknowledged",
            {},
            line(f"{count} cases acknowledged by ", who(actor), "."),
            f"You acknowledged incident #{incident_id} and {count} cases.",
        )

    return await _act(sessions, incident_id=incident_id, now=now, change=change)


async def reauth_links(
    sessions: Sessions,
    *,
    incident_id: int,
    actor: str,
    now: datetime,
    maker: LinkMaker | None,
    send: bool = False,
) -> ActionResult:
    """Make a re-authentication link for every case of the incident a link can fix, and with
    ``send`` send each to its end user, one every ``links.BULK_PACE``."""
    refused = actions.links_refused(maker, send=send)
    if refused is not None:
        return refused
    assert maker is not None
    channel = maker.outreach.channel if send else None

    async def change(
        session: AsyncSession, incident: Incident, locked: set[int]
    ) -> Changed | ActionResult:
        made: list[tuple[str, str]] = []
        for case, account in await _unresolved(session, incident_id):
            if case.kind not in LINKABLE_KINDS or not account.email or case.id not in locked:
                continue
            link = await links.make(session, case, account, actor=actor, now=now, maker=maker)
            if send:
                after = links.BULK_PACE * len(made)
                await links.reach_out(
                    session, case, account, link, now=now, outreach=maker.outreach, after=after
                )
            made.append((account.email, link.url))
            case.status = CaseStatus.WAITING_ON_USER
            await record_change(
                session,
                case,
                actor=actor,
                action="reauth_link",
                now=now,
                line=actions.link_line(actor, channel, incident=incident_id),
                details={"email": account.email, "incident": incident_id, "sent": channel},
            )
        if not made:
            return ActionResult(
                ActionOutcome.ALREADY,
                f"No case of incident #{incident_id} needs a re-authentication link.",
                incident,
            )
        if send:
            return Changed(
                "reauth_link",
                {"sent": channel},
                line(
                    f"{len(made)} re-authentication links made by ",
                    who(actor),
                    f" and {_sent_words(channel)}; waiting on the end users.",
                ),
                f"Sending {len(made)} end users of incident #{incident_id} their own link, one "
                f"every {links.BULK_PACE.total_seconds():g} s (about "
                f"{_minutes(len(made))}); each card shows when its link is opened.",
            )
        return Changed(
            "reauth_link",
            {},
            line(
                f"{len(made)} re-authentication links made by ",
                who(actor),
                "; waiting on the end users.",
            ),
            f"{len(made)} re-authentication links for incident #{incident_id}: send each end "
            "user their own link.",
            links=tuple(made),
        )

    return await _act(sessions, incident_id=incident_id, now=now, change=change)


def _sent_words(channel: str | None) -> str:
    return "emailed to each" if channel == "nylas" else "sent through your product to each"


def _minutes(count: int) -> str:
    seconds = links.BULK_PACE.total_seconds() * count
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} minutes"


async def retry_all(
    sessions: Sessions,
    *,
    incident_id: int,
    actor: str,
    now: datetime,
    nylas: NylasClient | None,
) -> ActionResult:
    """Retry sync (downgrade, upgrade, re-read) of every stopped v2 case of the incident."""
    if nylas is None:
        return ActionResult(
            ActionOutcome.UNAVAILABLE, "Retry needs the Nylas API credentials to be set."
        )
    async with sessions() as session:
        incident = await _lock(session, incident_id)
        if isinstance(incident, ActionResult):
            return incident
        targets = [
            case.id
            for case, account in await _unresolved(session, incident_id)
            if account.api_version == ApiVersion.V2
            and case.kind == CaseKind.STOPPED
            and case.id is not None
        ]
    if not targets:
        return ActionResult(
            ActionOutcome.ALREADY, f"Incident #{incident_id} has no stopped v2 account to retry."
        )
    limit = asyncio.Semaphore(RETRY_CONCURRENCY)

    async def one(case_id: int) -> ActionResult:
        async with limit:
            return await actions.retry_sync(
                sessions, case_id=case_id, actor=actor, now=now, nylas=nylas
            )

    results = await asyncio.gather(*(one(case_id) for case_id in targets))
    tally: Counter[str] = Counter()
    async with sessions() as session, session.begin():
        for case_id, retried in zip(targets, results, strict=True):
            case = await cases.get_case(session, case_id=case_id)
            if retried.outcome != ActionOutcome.DONE:
                tally["not retried (busy or closed meanwhile)"] += 1
            elif case is not None and case.status == CaseStatus.RESOLVED:
                tally["recovered"] += 1
            else:
                tally["still not syncing"] += 1
        summary = ", ".join(f"{n} {what}" for what, n in sorted(tally.items()))
        found = await store.lock_incident(session, incident_id=incident_id)
        if found is not None:
            said = line("Retry all by ", who(actor), f": {summary}.")
            await queue_line(session, found, said, now)
    return ActionResult(ActionOutcome.DONE, f"Retry all for incident #{incident_id}: {summary}.")
