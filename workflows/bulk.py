"""Bulk actions on an incident: acknowledge all, re-auth links for all, retry all.

Each applies the same change as the single-case action to every unresolved case of the
incident it fits, audits each case, and tells the incident's thread once. Acknowledging and
making links run in one transaction with the incident locked, so two clicks at once make one
change. Retrying calls Nylas per case through ``workflows.actions.retry_sync``, which holds
each case while its call is made.
"""

from __future__ import annotations

import asyncio
import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import cases
from storage import incidents as store
from storage.incidents import LINKABLE_KINDS
from storage.models import Account, ApiVersion, Case, CaseKind, CaseStatus, Incident, IncidentStatus
from workflows import actions
from workflows.actions import ActionOutcome, LinkBuilder, who
from workflows.incidents import queue_line, queue_pager, queue_update
from workflows.notify import record_change
from workflows.nylas import NylasClient
from workflows.words import Text, line, plain

Sessions = async_sessionmaker[AsyncSession]

RETRY_CONCURRENCY = 4  # Nylas calls in flight for "Retry all"


@dataclass(frozen=True, slots=True)
class BulkResult:
    outcome: ActionOutcome
    message: str  # for the operator who acted, shown privately; plain text
    links: tuple[tuple[str, str], ...] = field(default=())  # (email, link) for "links"
    said: Text | None = None  # the message with the people it names, when it names any

    @property
    def changed(self) -> bool:
        return self.outcome == ActionOutcome.DONE

    @property
    def words(self) -> Text:
        """The message as a renderer shows it: with its people when it names any."""
        return self.said if self.said is not None else self.message

    def links_csv(self) -> str:
        """The links as CSV (email, link), ready to copy into a mail merge or a spreadsheet.

        Every cell is quoted (RFC 4180), and a cell a spreadsheet would read as a formula
        (starting with =, +, -, @, a tab or a carriage return) is prefixed with a single quote,
        so that an end user's email address cannot run anything when the file is opened.
        """
        out = io.StringIO()
        # Lines end in "\n" rather than RFC 4180's CRLF: the CSV is shown in Slack to be copied.
        writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
        writer.writerow(["email", "link"])
        writer.writerows([[inert_cell(email), inert_cell(link)] for email, link in self.links])
        return out.getvalue()


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def inert_cell(value: str) -> str:
    """A CSV cell a spreadsheet shows as text, never evaluates (OWASP's advice)."""
    return f"'{value}" if value.startswith(FORMULA_STARTS) else value


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


async def _lock(session: AsyncSession, incident_id: int) -> Incident | BulkResult:
    incident = await store.lock_incident(session, incident_id=incident_id)
    if incident is None:
        return BulkResult(ActionOutcome.MISSING, f"Incident #{incident_id} does not exist.")
    if incident.status != IncidentStatus.OPEN:
        return BulkResult(ActionOutcome.STALE, f"Incident #{incident_id} has ended.")
    return incident


async def _unresolved(session: AsyncSession, incident_id: int) -> list[tuple[Case, Account]]:
    rows = await store.members(session, incident_id=incident_id)
    return [(c, a) for c, a in rows if c.status != CaseStatus.RESOLVED]


async def refuse(
    sessions: Sessions, *, incident_id: int, action: str, actor: str, now: datetime
) -> BulkResult:
    """Record a refused bulk action; nothing else changes."""
    async with sessions() as session, session.begin():
        await cases.record_event(
            session,
            actor=actor,
            action="refused",
            at=now,
            details={"action": f"{action} all", "incident": incident_id},
        )
    return BulkResult(ActionOutcome.REFUSED, f"You are not allowed to {action} cases.")


async def acknowledge_all(
    sessions: Sessions, *, incident_id: int, actor: str, now: datetime
) -> BulkResult:
    """Acknowledge the incident and every case of it not acknowledged yet."""
    async with sessions() as session, session.begin():
        locked = await _lock_members(session, incident_id)
        incident = await _lock(session, incident_id)
        if isinstance(incident, BulkResult):
            return incident
        if incident.acknowledged_at is not None:
            by = who(incident.acknowledged_by or "someone")
            said = line(f"Incident #{incident_id} was acknowledged by ", by, ".")
            return BulkResult(ActionOutcome.ALREADY, plain(said), said=said)
        incident.acknowledged_at, incident.acknowledged_by = now, actor
        incident.escalation_due_at = None
        session.add(incident)
        await queue_pager(session, incident, "acknowledge", now)
        count = 0
        for case, _ in await _unresolved(session, incident_id):
            if case.acknowledged_at is not None or case.id not in locked:
                continue
            if case.status == CaseStatus.OPEN:
                case.status = CaseStatus.ACKNOWLEDGED
            case.acknowledged_at, case.acknowledged_by = now, actor
            await record_change(
                session,
                case,
                actor=actor,
                action="acknowledged",
                now=now,
                line=line("Acknowledged by ", who(actor), f" with all of incident #{incident_id}."),
                details={"incident": incident_id},
            )
            count += 1
        await queue_line(
            session, incident, line(f"{count} cases acknowledged by ", who(actor), "."), now
        )
        await queue_update(session, incident, now)
    return BulkResult(
        ActionOutcome.DONE, f"You acknowledged incident #{incident_id} and {count} cases."
    )


async def reauth_links(
    sessions: Sessions,
    *,
    incident_id: int,
    actor: str,
    now: datetime,
    build: LinkBuilder | None,
) -> BulkResult:
    """Make a re-authentication link for every case of the incident a link can fix."""
    if build is None:
        return BulkResult(
            ActionOutcome.UNAVAILABLE,
            "Re-authentication links need NYLAS_CLIENT_ID and NYLAS_REDIRECT_URI to be set.",
        )
    links: list[tuple[str, str]] = []
    async with sessions() as session, session.begin():
        locked = await _lock_members(session, incident_id)
        incident = await _lock(session, incident_id)
        if isinstance(incident, BulkResult):
            return incident
        for case, account in await _unresolved(session, incident_id):
            if case.kind not in LINKABLE_KINDS or not account.email or case.id not in locked:
                continue
            links.append((account.email, build(account)))
            case.status = CaseStatus.WAITING_ON_USER
            await record_change(
                session,
                case,
                actor=actor,
                action="reauth_link",
                now=now,
                line=line(
                    "Re-authentication link made by ",
                    who(actor),
                    f" with all of incident #{incident_id}; waiting on the end user.",
                ),
                details={"email": account.email, "incident": incident_id},
            )
        if not links:
            return BulkResult(
                ActionOutcome.ALREADY,
                f"No case of incident #{incident_id} needs a re-authentication link.",
            )
        await queue_line(
            session,
            incident,
            line(
                f"{len(links)} re-authentication links made by ",
                who(actor),
                "; waiting on the end users.",
            ),
            now,
        )
        await queue_update(session, incident, now)
    return BulkResult(
        ActionOutcome.DONE,
        f"{len(links)} re-authentication links for incident #{incident_id}: send each end user "
        "their own link.",
        links=tuple(links),
    )


async def retry_all(
    sessions: Sessions,
    *,
    incident_id: int,
    actor: str,
    now: datetime,
    nylas: NylasClient | None,
) -> BulkResult:
    """Retry sync (downgrade, upgrade, re-read) of every stopped v2 case of the incident."""
    if nylas is None:
        return BulkResult(
            ActionOutcome.UNAVAILABLE, "Retry needs the Nylas API credentials to be set."
        )
    async with sessions() as session:
        incident = await store.lock_incident(session, incident_id=incident_id)
        if incident is None:
            return BulkResult(ActionOutcome.MISSING, f"Incident #{incident_id} does not exist.")
        if incident.status != IncidentStatus.OPEN:
            return BulkResult(ActionOutcome.STALE, f"Incident #{incident_id} has ended.")
        targets = [
            case.id
            for case, account in await _unresolved(session, incident_id)
            if account.api_version == ApiVersion.V2
            and case.kind == CaseKind.STOPPED
            and case.id is not None
        ]
    if not targets:
        return BulkResult(
            ActionOutcome.ALREADY, f"Incident #{incident_id} has no stopped v2 account to retry."
        )
    limit = asyncio.Semaphore(RETRY_CONCURRENCY)

    async def one(case_id: int) -> actions.ActionResult:
        async with limit:
            return await actions.retry_sync(
                sessions, case_id=case_id, actor=actor, now=now, nylas=nylas
            )

    results = await asyncio.gather(*(one(case_id) for case_id in targets))
    tally: Counter[str] = Counter()
    async with sessions() as session, session.begin():
        for case_id, result in zip(targets, results, strict=True):
            case = await cases.get_case(session, case_id=case_id)
            if result.outcome != ActionOutcome.DONE:
                tally["not retried (busy or closed meanwhile)"] += 1
            elif case is not None and case.status == CaseStatus.RESOLVED:
                tally["recovered"] += 1
            else:
                tally["still not syncing"] += 1
        summary = ", ".join(f"{n} {what}" for what, n in sorted(tally.items()))
        incident = await store.lock_incident(session, incident_id=incident_id)
        if incident is not None:
            said = line("Retry all by ", who(actor), f": {summary}.")
            await queue_line(session, incident, said, now)
    return BulkResult(ActionOutcome.DONE, f"Retry all for incident #{incident_id}: {summary}.")
