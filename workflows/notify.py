"""Queue what Slack must show when a case changes."""

from __future__ import annotations

from datetime import datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from storage import cases, outbox
from storage.models import Case, CaseStatus, OutboxKind
from workflows import links, words
from workflows.incidents import member_changed
from workflows.subject import queue_pager_follow_up
from workflows.words import Text


async def queue_case_change(
    session: AsyncSession,
    case: Case,
    line: Text,
    now: datetime,
    *,
    quote: str | None = None,
    thread: bool = True,
) -> None:
    """Queue the in-place update of the case's message and one line in its thread.

    ``line`` is plain text and the people it names (``workflows.words``); ``quote`` is text
    someone typed, shown after it. The sink escapes both, so neither can ping or link anyone.
    Without ``thread``, only the message is updated.
    """
    assert case.slack_channel is not None, "a case gets its channel when it opens"
    channel = case.slack_channel
    await queue_pager_follow_up(session, case, now)
    if case.incident_id is not None:
        await member_changed(session, case, now)
    if not case.own_alert:
        return  # its incident's message stands for it
    await outbox.enqueue(session, channel=channel, kind=OutboxKind.UPDATE, now=now, case_id=case.id)
    if not thread:
        return
    await outbox.enqueue(
        session,
        channel=channel,
        kind=OutboxKind.THREAD,
        now=now,
        case_id=case.id,
        payload={**words.payload(line), "quote": quote, "at": now.isoformat()},
    )


async def record_change(
    session: AsyncSession,
    case: Case,
    *,
    actor: str,
    action: str,
    now: datetime,
    line: Text,
    details: dict[str, object] | None = None,
    quote: str | None = None,
) -> None:
    """Save a changed case, audit who changed it and how, and queue what Slack must show."""
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
    if case.status in (CaseStatus.RESOLVED, CaseStatus.SNOOZED):
        await links.case_closed(session, case, now=now)
    await queue_case_change(session, case, line, now, quote=quote)
