"""What operators do to a case, callable from Slack buttons, the slash command and tests.

Each action runs in one transaction that locks the case row, so two clicks at once make one
change: the second finds it done. Every action, allowed or refused, is in the audit log.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import cases
from storage.models import Case, CaseStatus
from workflows.notify import queue_case_change


@dataclass(frozen=True, slots=True)
class ActionResult:
    outcome: str  # "done", "already", "stale", "missing", "refused"
    message: str  # one sentence for the operator who acted
    case: Case | None = None

    @property
    def changed(self) -> bool:
        return self.outcome == "done"


def slack_actor(user_id: str) -> str:
    return f"slack:{user_id}"


async def refuse(
    sessions: async_sessionmaker[AsyncSession],
    *,
    case_id: int,
    action: str,
    actor: str,
    now: datetime,
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
    sessions: async_sessionmaker[AsyncSession], *, case_id: int, actor: str, now: datetime
) -> ActionResult:
    """Mark a case as taken care of by ``actor``; further escalation stops."""
    async with sessions() as session, session.begin():
        case = await session.get(Case, case_id, with_for_update=True)
        if case is None:
            return ActionResult("missing", f"Case #{case_id} does not exist.")
        if case.status == CaseStatus.RESOLVED:
            return ActionResult(
                "stale", f"Case #{case_id} is already resolved: {case.resolution}", case
            )
        if case.acknowledged_at is not None:
            who = (case.acknowledged_by or "someone").removeprefix("slack:")
            return ActionResult(
                "already", f"Case #{case_id} was already acknowledged by <@{who}>.", case
            )
        case.status, case.acknowledged_at, case.acknowledged_by = (
            CaseStatus.ACKNOWLEDGED,
            now,
            actor,
        )
        case.updated_at = now
        session.add(case)
        await cases.record_event(
            session,
            actor=actor,
            action="acknowledged",
            at=now,
            case_id=case.id,
            account_id=case.account_id,
        )
        await queue_case_change(session, case, f"Acknowledged by {_who(actor)}.", now)
    return ActionResult("done", f"You acknowledged case #{case_id}.", case)


def _who(actor: str) -> str:
    return f"<@{actor.removeprefix('slack:')}>" if actor.startswith("slack:") else actor
