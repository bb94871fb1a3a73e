"""What operators do to a case, callable from Slack buttons, the slash command and tests.

Each action runs in one transaction that locks the case row, so two clicks at once make one
change: the second finds it done. Every action, allowed or refused, is in the audit log, and
every change queues the update of the case's message and a line in its thread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import cases
from storage.models import Account, Case, CaseStatus
from workflows.notify import queue_case_change

SNOOZE_CHOICES = {"1h": timedelta(hours=1), "4h": timedelta(hours=4), "24h": timedelta(hours=24)}
MAX_NOTE = 1000

Sessions = async_sessionmaker[AsyncSession]


@dataclass(frozen=True, slots=True)
class ActionResult:
    outcome: str  # "done", "already", "stale", "missing", "refused", "unavailable"
    message: str  # one sentence for the operator who acted, shown privately
    case: Case | None = None

    @property
    def changed(self) -> bool:
        return self.outcome == "done"


def slack_actor(user_id: str) -> str:
    return f"slack:{user_id}"


def who(actor: str) -> str:
    """How an actor appears in Slack: a mention for Slack users."""
    return f"<@{actor.removeprefix('slack:')}>" if actor.startswith("slack:") else actor


# A change: given the session and the locked, open case, apply it and return (audit action,
# details, thread line, message to the operator), or an ActionResult to stop with no change.
Change = Callable[
    [AsyncSession, Case], Awaitable["tuple[str, dict[str, object], str, str] | ActionResult"]
]


async def _act(
    sessions: Sessions, *, case_id: int, actor: str, now: datetime, change: Change
) -> ActionResult:
    async with sessions() as session, session.begin():
        case = await session.get(Case, case_id, with_for_update=True)
        if case is None:
            return ActionResult("missing", f"Case #{case_id} does not exist.")
        if case.status == CaseStatus.RESOLVED:
            return ActionResult(
                "stale", f"Case #{case_id} is already resolved: {case.resolution}", case
            )
        outcome = await change(session, case)
        if isinstance(outcome, ActionResult):
            return outcome
        action, details, line, message = outcome
        quote = str(details["note"]) if "note" in details else None
        case.updated_at = now
        session.add(case)
        await cases.record_event(
            session,
            actor=actor,
            action=action,
            at=now,
            case_id=case.id,
            account_id=case.account_id,
            details=details,
        )
        await queue_case_change(session, case, line, now, quote=quote)
    return ActionResult("done", message, case)


async def refuse(
    sessions: Sessions, *, case_id: int, action: str, actor: str, now: datetime
) -> ActionResult:
    """Record a refused action; nothing else changes."""
    async with sessions() as session, session.begin():
        case = await cases.get_case(session, case_id=case_id)
        await cases.record_event(
            session,
            actor=actor,
            action="refused",
            at=now,
            case_id=case.id if case else None,
            account_id=case.account_id if case else None,
            details={"action": action},
        )
    return ActionResult("refused", f"You are not allowed to {action} cases.", case)


async def acknowledge(
    sessions: Sessions, *, case_id: int, actor: str, now: datetime
) -> ActionResult:
    """Mark a case as taken care of by ``actor``; further escalation stops."""

    async def change(
        session: AsyncSession, case: Case
    ) -> tuple[str, dict[str, object], str, str] | ActionResult:
        if case.acknowledged_at is not None:
            by = who(case.acknowledged_by or "someone")
            return ActionResult(
                "already", f"Case #{case_id} was already acknowledged by {by}.", case
            )
        if case.status == CaseStatus.OPEN:
            case.status = CaseStatus.ACKNOWLEDGED
        case.acknowledged_at, case.acknowledged_by = now, actor
        return (
            "acknowledged",
            {},
            f"Acknowledged by {who(actor)}.",
            f"You acknowledged case #{case_id}.",
        )

    return await _act(sessions, case_id=case_id, actor=actor, now=now, change=change)


async def snooze(
    sessions: Sessions, *, case_id: int, actor: str, now: datetime, duration: str
) -> ActionResult:
    """Silence a case (and its escalation) for 1 h, 4 h or 24 h."""
    if duration not in SNOOZE_CHOICES:
        return ActionResult("missing", f"Snooze for {', '.join(SNOOZE_CHOICES)}, not {duration!r}.")
    until = now + SNOOZE_CHOICES[duration]

    async def change(
        session: AsyncSession, case: Case
    ) -> tuple[str, dict[str, object], str, str] | ActionResult:
        case.status, case.snoozed_until = CaseStatus.SNOOZED, until
        stamp = until.strftime("%Y-%m-%d %H:%M UTC")
        return (
            "snoozed",
            {"until": until.isoformat(), "for": duration},
            f"Snoozed for {duration} by {who(actor)}, until {stamp}.",
            f"Case #{case_id} is snoozed until {stamp}.",
        )

    return await _act(sessions, case_id=case_id, actor=actor, now=now, change=change)


async def resolve(
    sessions: Sessions, *, case_id: int, actor: str, now: datetime, note: str
) -> ActionResult:
    """Close a case by hand, with the operator's note as its resolution."""
    note = " ".join(note.split())[:MAX_NOTE] or "no note"

    async def change(
        session: AsyncSession, case: Case
    ) -> tuple[str, dict[str, object], str, str] | ActionResult:
        case.status, case.resolved_at, case.resolved_by = CaseStatus.RESOLVED, now, actor
        case.resolution = note
        return (
            "resolved",
            {"note": note},
            f"Resolved by {who(actor)}:",
            f"You resolved case #{case_id}.",
        )

    return await _act(sessions, case_id=case_id, actor=actor, now=now, change=change)


LinkBuilder = Callable[[Account], str]


async def send_reauth_link(
    sessions: Sessions, *, case_id: int, actor: str, now: datetime, build: LinkBuilder | None
) -> ActionResult:
    """Make the end user's re-authentication link; the case then waits on the end user."""
    if build is None:
        return ActionResult(
            "unavailable",
            "Re-authentication links need NYLAS_CLIENT_ID and NYLAS_REDIRECT_URI to be set.",
        )
    link: list[str] = []

    async def change(
        session: AsyncSession, case: Case
    ) -> tuple[str, dict[str, object], str, str] | ActionResult:
        account = await cases.get_account(session, account_id=case.account_id)
        if account is None or not account.email:
            return ActionResult(
                "unavailable", f"Case #{case_id}: the account's email is not known yet.", case
            )
        link.append(build(account))
        case.status = CaseStatus.WAITING_ON_USER
        return (
            "reauth_link",
            {"email": account.email},
            f"Re-authentication link made by {who(actor)}; waiting on the end user.",
            f"Send this link to {account.email} to re-authenticate:\n{link[0]}",
        )

    return await _act(sessions, case_id=case_id, actor=actor, now=now, change=change)


async def end_snoozes(sessions: Sessions, *, now: datetime) -> int:
    """Wake the cases whose snooze is over; return how many."""
    async with sessions() as session, session.begin():
        stmt = select(Case).where(
            col(Case.status) == CaseStatus.SNOOZED, col(Case.snoozed_until) <= now
        )
        woken = list((await session.exec(stmt.with_for_update(skip_locked=True))).all())
        for case in woken:
            acked = case.acknowledged_at is not None
            case.status = CaseStatus.ACKNOWLEDGED if acked else CaseStatus.OPEN
            case.snoozed_until, case.updated_at = None, now
            session.add(case)
            await cases.record_event(
                session,
                actor="system",
                action="snooze_ended",
                at=now,
                case_id=case.id,
                account_id=case.account_id,
            )
            await queue_case_change(session, case, "Snooze is over.", now)
    return len(woken)
