"""An alert subject: a case, or an incident standing for a storm of cases.

Both have a parent message in Slack (channel and ts), a status, an escalation (the step done
and when the next is due), who acknowledged them, and a PagerDuty alert of their own. What
an operator does to either ends in one ``ActionResult``; ``run`` is the one way an action
locks its subject, checks it, changes it, audits the change and queues the update of its
message. Escalation and the PagerDuty follow-up work on the ``AlertSubject`` protocol, so a
case and an incident escalate and stand down alike.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Protocol, TypeVar

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import outbox
from storage.models import Case, CaseStatus, Incident, IncidentStatus
from workflows.words import Line, Text, names_someone, plain

Sessions = async_sessionmaker[AsyncSession]


class AlertSubject(Protocol):
    """What a case and an incident share: a parent message, a status and an escalation."""

    id: int | None
    status: str
    opened_at: datetime
    slack_channel: str | None
    slack_ts: str | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    escalation_step: int
    escalation_due_at: datetime | None
    pager_state: str | None  # None (never paged), "triggered", "acknowledged", "resolved"


def about(subject: AlertSubject) -> dict[str, int | None]:
    """The outbox's reference to the subject: ``{"case_id": n}`` or ``{"incident_id": n}``."""
    if isinstance(subject, Incident):
        return {"incident_id": subject.id}
    return {"case_id": subject.id}


def pager_key(*, case_id: int | None = None, incident_id: int | None = None) -> str:
    """The PagerDuty dedup key of a subject: one alert per case, one per incident."""
    if incident_id is not None:
        return f"reauthbot-incident-{incident_id}"
    return f"reauthbot-case-{case_id}"


def dedup_key(subject: AlertSubject) -> str:
    """The PagerDuty dedup key of ``subject``."""
    return pager_key(**about(subject))


def is_closed(subject: AlertSubject) -> bool:
    """Whether the subject is over: a resolved case, an ended incident."""
    if isinstance(subject, Incident):
        return subject.status == IncidentStatus.ENDED
    return subject.status == CaseStatus.RESOLVED


def is_escalating(subject: AlertSubject) -> bool:
    """Whether nobody has taken the subject on: an open case, an unacknowledged incident.

    A case also stops escalating while it is snoozed or waits on the end user.
    """
    if is_closed(subject):
        return False
    if isinstance(subject, Incident):
        return subject.acknowledged_at is None
    return subject.status == CaseStatus.OPEN


def pager_follow_up(subject: AlertSubject) -> str | None:
    """The PagerDuty event that brings its alert in line with the subject, if one is needed."""
    if subject.pager_state in (None, "resolved"):
        return None
    if is_closed(subject):
        return "resolve"
    if not is_escalating(subject) and subject.pager_state == "triggered":
        return "acknowledge"
    return None


async def queue_pager_follow_up(
    session: AsyncSession, subject: AlertSubject, now: datetime
) -> None:
    """Acknowledge or resolve the subject's PagerDuty alert to match the subject."""
    action = pager_follow_up(subject)
    if action is None:
        return
    await outbox.enqueue_page(session, now=now, payload={"action": action}, **about(subject))
    subject.pager_state = "resolved" if action == "resolve" else "acknowledged"
    session.add(subject)


class ActionOutcome(StrEnum):
    """How an operator's action on a case, or on every case of an incident, ended."""

    DONE = "done"  # the action was carried out (a Nylas call that failed is told, and audited)
    ALREADY = "already"  # nothing to do: someone did it first, or it is under way
    STALE = "stale"  # the case is resolved, or the incident has ended
    MISSING = "missing"  # no such case or incident, or an argument that names nothing
    REFUSED = "refused"  # the operator may not do this, or did not confirm it
    UNAVAILABLE = "unavailable"  # reauthbot lacks what it needs (Nylas credentials, an email)


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What an operator's action on a case or an incident did, told in plain words."""

    outcome: ActionOutcome
    message: str  # one sentence for the operator who acted, shown privately; plain text
    subject: Case | Incident | None = None
    said: Line | None = None  # the message with the people it names, when it names any
    links: tuple[tuple[str, str], ...] = field(default=())  # (email, link) made for many

    @property
    def changed(self) -> bool:
        return self.outcome == ActionOutcome.DONE

    @property
    def words(self) -> Text:
        """The message as a renderer shows it: with its people when it names any."""
        return self.said if self.said is not None else self.message

    @property
    def case(self) -> Case | None:
        """The case acted on, when the subject is a case."""
        return self.subject if isinstance(self.subject, Case) else None

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


def result(
    outcome: ActionOutcome,
    text: Text,
    subject: Case | Incident | None = None,
    *,
    links: tuple[tuple[str, str], ...] = (),
) -> ActionResult:
    """An outcome told in words that may name people."""
    said = text if names_someone(text) and not isinstance(text, str) else None
    return ActionResult(outcome, plain(text), subject, said, links)


@dataclass(frozen=True, slots=True)
class Changed:
    """What an action changed: its audit action, the thread line, and the operator's answer."""

    action: str  # as the audit log names it
    details: dict[str, object]  # for the audit log
    said: Text  # the line in the subject's thread
    message: Text  # for the operator who acted
    links: tuple[tuple[str, str], ...] = ()


S = TypeVar("S", Case, Incident)

# Lock the subject for this transaction: the subject, or the result that stops the action.
Lock = Callable[[AsyncSession], Awaitable[S | ActionResult]]
# Apply the action to the locked subject: what changed, or the result that stops it unchanged.
Change = Callable[[AsyncSession, S], Awaitable[Changed | ActionResult]]
# Audit the change and queue what Slack must show of it.
Record = Callable[[AsyncSession, S, Changed], Awaitable[None]]


async def run(
    sessions: Sessions, *, lock: Lock[S], change: Change[S], record: Record[S]
) -> ActionResult:
    """Run one action on a subject in one transaction: lock, check, change, audit, queue.

    Two clicks at once make one change: the second waits for the lock, then finds it done.
    """
    async with sessions() as session, session.begin():
        subject = await lock(session)
        if isinstance(subject, ActionResult):
            return subject
        changed = await change(session, subject)
        if isinstance(changed, ActionResult):
            return changed
        await record(session, subject, changed)
    return result(ActionOutcome.DONE, changed.message, subject, links=changed.links)
