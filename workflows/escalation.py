"""Escalation: a case nobody acknowledges reaches whoever is on call.

The ``[escalation]`` policy lists levels, each due some time after the case opened, run again
``repeat`` times while the case stays unacknowledged. One run of all levels is a round; round
``r`` of a level is due at ``r × (the last level's after) + after``. So with levels at 15m and
1h and ``repeat = 1`` the steps are due at 15m, 1h, 1h15m and 2h.

A case's progress lives on its row (``escalation_step``, ``escalation_due_at``), so a restart
neither loses nor repeats a step, and the sweep locks due cases with ``FOR UPDATE SKIP
LOCKED`` so two processes never run the same step. Only cases that are open (not
acknowledged, snoozed, waiting on the user or resolved) escalate: acknowledging or resolving
stops the policy, a snooze pauses it. A case opened in a maintenance window never escalates
(``workflows.mutes``). When several steps fell due at once (after a snooze or
downtime), only the latest runs; the ones passed over are recorded, not sent.

Nylas resends the notifications a v3 grant missed only if the user re-authenticates within
72 hours; when less than 12 hours of that window remain and the last level has not run yet,
the last level runs at once.

An incident escalates for all of its cases, by the same policy and the same steps: cases and
incidents are both ``workflows.subject.AlertSubject``, and only what a step says of each (its
direct message and PagerDuty trigger) and what it leaves in the audit log differ.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import pairwise
from typing import Protocol

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import actors, cases, outbox
from storage.models import (
    Account,
    ApiVersion,
    Case,
    CaseStatus,
    Incident,
    IncidentStatus,
    OutboxKind,
)
from workflows.clock import how_long
from workflows.incidents import scope_words
from workflows.policy import Escalation, EscalationLevel
from workflows.states import classify
from workflows.subject import AlertSubject, about
from workflows.words import Part, Person, line, payload

log = logging.getLogger("reauthbot.escalation")

Sessions = async_sessionmaker[AsyncSession]

RESEND_WINDOW = timedelta(hours=72)  # v3: missed notifications are resent within this
DEADLINE_MARGIN = timedelta(hours=12)  # escalate to the last level when less remains


@dataclass(frozen=True, slots=True)
class Step:
    index: int
    round: int  # 0 for the first run of the levels
    level: int  # index into the policy's levels
    offset: timedelta  # after the case opened

    @property
    def name(self) -> str:
        return f"level {self.level + 1}" + (f", repeat {self.round}" if self.round else "")


def plan(policy: Escalation) -> list[Step]:
    """Every step of the policy in order, with its offset from the opening of a case."""
    if not policy.levels:
        return []
    cycle = max(policy.levels[-1].after, timedelta(minutes=1))
    return [
        Step(index=r * len(policy.levels) + i, round=r, level=i, offset=r * cycle + level.after)
        for r in range(policy.repeat + 1)
        for i, level in enumerate(policy.levels)
    ]


SWEEP = timedelta(seconds=30)
SWEEP_FLOOR = timedelta(seconds=1)


def sweep_period(policy: Escalation) -> timedelta:
    """How often to look for due escalation steps: every 30 s, or more often for close steps.

    A step runs at the first sweep after it falls due, and is passed over when the next step
    is due by then. Sweeping every half of the shortest wait between steps (from the opening of
    a case to the first step, and from each step to the next) sends each step at most half that
    wait late, before the next is due; but never more than once a second.
    """
    offsets = [timedelta(0), *(step.offset for step in plan(policy))]
    waits = [later - earlier for earlier, later in pairwise(offsets) if later > earlier]
    return max(min([SWEEP, *(wait / 2 for wait in waits)]), SWEEP_FLOOR)


def resend_deadline(case: Case, account: Account | None) -> datetime | None:
    """When Nylas stops resending missed notifications (v3 grants only)."""
    if account is None or account.api_version != ApiVersion.V3:
        return None
    return (case.broken_since or case.opened_at) + RESEND_WINDOW


def _deadline_step(steps: list[Step], done: int, levels: int) -> int | None:
    """The first round's last level, while it has not run yet."""
    last = levels - 1
    return last if done <= last < len(steps) else None


def choose(
    steps: list[Step], *, done: int, opened_at: datetime, deadline: datetime | None, now: datetime
) -> tuple[int | None, str]:
    """The step to run now (None: none), and why ("schedule" or "deadline")."""
    due = [s.index for s in steps[done:] if opened_at + s.offset <= now]
    levels = max((s.level for s in steps), default=-1) + 1
    urgent = _deadline_step(steps, done, levels)
    pressed = deadline is not None and now >= deadline - DEADLINE_MARGIN
    if pressed and urgent is not None and (not due or max(due) < urgent):
        return urgent, "deadline"
    return (max(due), "schedule") if due else (None, "schedule")


def next_due(
    steps: list[Step], *, done: int, opened_at: datetime, deadline: datetime | None
) -> datetime | None:
    """When the next step falls due, counting the deadline; None when no step is left."""
    if done >= len(steps):
        return None
    due = opened_at + steps[done].offset
    levels = max(s.level for s in steps) + 1
    if deadline is not None and _deadline_step(steps, done, levels) is not None:
        due = min(due, deadline - DEADLINE_MARGIN)
    return due


def _people(ids: list[str]) -> list[Part]:
    """Users and user groups named one after another (the renderer makes them mentions)."""
    parts: list[Part] = []
    for i, user in enumerate(ids):
        parts += [" "] if i else []
        parts.append(Person(user))
    return parts


class _Escalation(Protocol):
    """One subject as escalation sees it: what its steps say, and what a step leaves behind."""

    @property
    def subject(self) -> AlertSubject: ...

    @property
    def deadline(self) -> datetime | None:
        """When its last level must have run, if ever."""
        ...

    def calls(self, why: str) -> tuple[str, dict[str, object]]:
        """The direct message to send and the PagerDuty trigger, for a step run because ``why``."""
        ...

    async def escalated(
        self, session: AsyncSession, step: Step, level: EscalationLevel, reason: str, now: datetime
    ) -> None:
        """Record that ``step`` ran."""
        ...


@dataclass(frozen=True, slots=True)
class _CaseEscalation:
    subject: Case
    account: Account | None
    deadline: datetime | None

    def calls(self, why: str) -> tuple[str, dict[str, object]]:
        case, account = self.subject, self.account
        email = account.email if account is not None and account.email else case.account_id
        version = account.api_version if account is not None else ApiVersion.V3
        state = classify(version, case.state).words if case.state else case.kind
        return f"Case #{case.id} ({email}) needs you: {why}.", {
            "summary": f"reauthbot case #{case.id}: {email} — {state}; {why}",
            "details": {
                "case": case.id,
                "account": case.account_id,
                "email": email,
                "state": case.state,
                "kind": case.kind,
                "opened_at": case.opened_at.isoformat(),
            },
        }

    async def escalated(
        self, session: AsyncSession, step: Step, level: EscalationLevel, reason: str, now: datetime
    ) -> None:
        case = self.subject
        await cases.record_event(
            session,
            actor=actors.SYSTEM,
            action="escalated",
            at=now,
            case_id=case.id,
            account_id=case.account_id,
            details={
                "step": step.index,
                "level": step.level + 1,
                "round": step.round,
                "reason": reason,
                "mention": level.mention,
                "dm": level.dm,
                "pagerduty": level.pagerduty,
            },
        )
        log.info(
            "case escalated",
            extra={
                "case": case.id,
                "escalation_level": step.level + 1,
                "round": step.round,
                "reason": reason,
            },
        )


@dataclass(frozen=True, slots=True)
class _IncidentEscalation:
    subject: Incident
    deadline: datetime | None = None  # a storm has no resend window of its own

    def calls(self, why: str) -> tuple[str, dict[str, object]]:
        incident = self.subject
        what = f"storm {scope_words(incident)}"
        return f"Incident #{incident.id} ({what}) needs you: {why}.", {
            "summary": f"reauthbot incident #{incident.id}: {what}; {why}",
            "details": {
                "incident": incident.id,
                "scope": incident.scope,
                "key": incident.key,
                "opened_at": incident.opened_at.isoformat(),
            },
        }

    async def escalated(
        self, session: AsyncSession, step: Step, level: EscalationLevel, reason: str, now: datetime
    ) -> None:
        # An incident's steps are told in its thread; its cases keep their own audit.
        log.info(
            "incident escalated",
            extra={"incident": self.subject.id, "escalation_level": step.level + 1},
        )


async def _due_cases(session: AsyncSession, now: datetime, limit: int) -> list[_Escalation]:
    """Lock the open cases with a step due (skipping those another process holds)."""
    stmt = (
        select(Case)
        .where(
            col(Case.status) == CaseStatus.OPEN,
            col(Case.incident_id).is_(None),  # the incident escalates for it
            col(Case.muted_by).is_(None),  # opened in a maintenance window: never escalates
            col(Case.escalation_due_at).is_(None) & (col(Case.escalation_step) == 0)
            | (col(Case.escalation_due_at) <= now),
        )
        .order_by(col(Case.id))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    due: list[_Escalation] = []
    for case in (await session.exec(stmt)).all():
        account = await cases.get_account(session, account_id=case.account_id)
        due.append(_CaseEscalation(case, account, resend_deadline(case, account)))
    return due


async def _due_incidents(session: AsyncSession, now: datetime, limit: int) -> list[_Escalation]:
    """Lock the unacknowledged storms with a step due (skipping those another process holds)."""
    stmt = (
        select(Incident)
        .where(
            col(Incident.status) == IncidentStatus.OPEN,
            col(Incident.acknowledged_at).is_(None),
            col(Incident.escalation_due_at).is_(None) & (col(Incident.escalation_step) == 0)
            | (col(Incident.escalation_due_at) <= now),
        )
        .order_by(col(Incident.id))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return [_IncidentEscalation(incident) for incident in (await session.exec(stmt)).all()]


async def escalate_due(
    sessions: Sessions, *, policy: Escalation, now: datetime, limit: int = 100
) -> int:
    """Run every escalation step that is due, of cases then of incidents; return how many ran."""
    steps = plan(policy)
    if not steps:
        return 0
    ran = 0
    for due in (_due_cases, _due_incidents):
        while True:
            async with sessions() as session, session.begin():
                batch = await due(session, now, limit)
                for escalation in batch:
                    ran += await _advance(session, escalation, steps, policy.levels, now)
            if len(batch) < limit:
                break
    return ran


def _why(subject: AlertSubject, reason: str, now: datetime) -> str:
    if reason == "deadline":
        return "less than 12 h remain of the 72 h in which Nylas resends missed notifications"
    return f"no one has acknowledged it for {how_long(now - subject.opened_at)}"


async def _advance(
    session: AsyncSession,
    escalation: _Escalation,
    steps: list[Step],
    levels: list[EscalationLevel],
    now: datetime,
) -> int:
    """Run the subject's due step, if any, and set when its next one falls due."""
    subject, deadline = escalation.subject, escalation.deadline
    assert subject.id is not None
    done = subject.escalation_step
    index, reason = choose(
        steps, done=done, opened_at=subject.opened_at, deadline=deadline, now=now
    )
    if index is not None:
        step = steps[index]
        level = levels[step.level]
        why = _why(subject, reason, now)
        dm_text, page = escalation.calls(why)
        await _tell(
            session,
            level,
            subject=about(subject),
            channel=subject.slack_channel or "",
            dm_text=dm_text,
            page=page,
            said=f"Escalated ({step.name}): {why}",
            now=now,
        )
        if level.pagerduty:
            subject.pager_state = "triggered"
        await escalation.escalated(session, step, level, reason, now)
        done = index + 1
    subject.escalation_step = done
    subject.escalation_due_at = next_due(
        steps, done=done, opened_at=subject.opened_at, deadline=deadline
    )
    session.add(subject)
    return 0 if index is None else 1


async def _tell(
    session: AsyncSession,
    level: EscalationLevel,
    *,
    subject: dict[str, int | None],
    channel: str,
    dm_text: str,
    page: dict[str, object],
    said: str,
    now: datetime,
) -> None:
    """Queue what one level says: a thread line, DMs, a PagerDuty trigger.

    ``subject`` names what escalates: ``{"case_id": n}`` or ``{"incident_id": n}``.
    """
    done: list[list[Part]] = []
    if level.mention:
        done.append(["mentioned ", *_people(level.mention)])
    if level.dm:
        done.append(["sent to ", *_people(level.dm)])
        for user in level.dm:
            await outbox.enqueue(
                session,
                channel=user,
                kind=OutboxKind.DM,
                now=now,
                payload={"text": dm_text},
                **subject,  # type: ignore[arg-type]
            )
    if level.pagerduty:
        done.append(["paged on-call in PagerDuty"])
        await outbox.enqueue_page(
            session,
            now=now,
            payload={"action": "trigger", **page},
            **subject,
        )
    told: list[Part] = [*_people(level.mention), " "] if level.mention else []
    told.append(f"{said}; ")
    nobody: list[list[Part]] = [["nobody to tell"]]
    for i, what in enumerate(done or nobody):
        told += [", "] if i else []
        told += what
    told.append(".")
    await outbox.enqueue(
        session,
        channel=channel,
        kind=OutboxKind.THREAD,
        now=now,
        payload={**payload(line(*told)), "broadcast": bool(level.mention), "at": now.isoformat()},
        **subject,  # type: ignore[arg-type]
    )
