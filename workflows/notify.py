"""Queue what Slack must show when a case changes."""

from __future__ import annotations

from datetime import datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from storage import outbox
from storage.models import Case, OutboxKind


async def queue_case_change(session: AsyncSession, case: Case, line: str, now: datetime) -> None:
    """Queue the in-place update of the case's message and one line in its thread."""
    assert case.slack_channel is not None, "a case gets its channel when it opens"
    channel = case.slack_channel
    await outbox.enqueue(session, channel=channel, kind=OutboxKind.UPDATE, now=now, case_id=case.id)
    await outbox.enqueue(
        session,
        channel=channel,
        kind=OutboxKind.THREAD,
        now=now,
        case_id=case.id,
        payload={"text": line, "at": now.isoformat()},
    )
