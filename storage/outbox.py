"""The outbox: messages to send, written with the state change that caused them.

The notifier claims rows with a lease (committed before it calls out), sends them, then marks
them sent. Claiming locks candidate rows with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL so two
processes never take the same row; on SQLite, writers are serialized by ``BEGIN IMMEDIATE``
and the lease condition does the same job.

Queuing a message is also what wakes the drains: ``enqueue`` notes the channel in the
session, and once the transaction commits, every listener given to ``on_queued`` (the
drains of this process) hears which channels have new rows. A transaction rolled back tells
nobody. Listeners run on the thread that committed and must not raise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, update
from sqlalchemy.orm import Session, SessionTransaction, aliased
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage._sql import dialect_insert, insert_ignoring_conflict
from storage.models import PAGER_CHANNEL, OutboxKind, OutboxMessage, OutboxStatus

log = logging.getLogger("reauthbot.storage")

QueuedListener = Callable[[frozenset[str]], None]

# The channels a transaction queued messages for, until it ends.
_QUEUED = "reauthbot.outbox_queued"
_listeners: list[QueuedListener] = []


def on_queued(listener: QueuedListener) -> Callable[[], None]:
    """Call ``listener`` with the channels of every committed transaction that queued messages.

    Returns the function that stops it. Listeners are process-wide: a commit through any
    session of this process counts.
    """
    _listeners.append(listener)

    def stop() -> None:
        if listener in _listeners:
            _listeners.remove(listener)

    return stop


@event.listens_for(Session, "after_commit")
def _tell_queued(session: Session) -> None:
    channels = session.info.pop(_QUEUED, None)
    if not channels:
        return
    for listener in list(_listeners):
        try:
            listener(frozenset(channels))
        except Exception:
            # The transaction is committed whatever happens here; the drains poll anyway.
            log.exception("a listener to queued messages failed")


@event.listens_for(Session, "after_soft_rollback")
def _forget_queued(session: Session, previous: SessionTransaction) -> None:
    # A savepoint rolled back may leave rows queued before it: only the outermost rollback
    # forgets (a needless wake costs one empty pass).
    if previous.parent is None:
        session.info.pop(_QUEUED, None)


async def enqueue(
    session: AsyncSession,
    *,
    channel: str,
    kind: str,
    now: datetime,
    case_id: int | None = None,
    incident_id: int | None = None,
    payload: dict[str, Any] | None = None,
    dedupe_key: str | None = None,
    available_at: datetime | None = None,
) -> int | None:
    """Queue a message; return its id, or None if one with the same dedupe key exists.

    ``available_at`` holds it back until then (default: due now).
    """
    values = {
        "channel": channel,
        "kind": kind,
        "case_id": case_id,
        "incident_id": incident_id,
        "payload": payload or {},
        "dedupe_key": dedupe_key,
        "status": OutboxStatus.PENDING,
        "attempts": 0,
        "created_at": now,
        "available_at": available_at or now,
    }
    queued = await insert_ignoring_conflict(session, OutboxMessage, values, unique="dedupe_key")
    if queued is not None:
        session.info.setdefault(_QUEUED, set()).add(channel)
    return queued


async def enqueue_many(
    session: AsyncSession, *, kind: str, now: datetime, messages: Sequence[dict[str, Any]]
) -> None:
    """Queue messages of one kind, due now, in one statement; each is ``enqueue``'s
    ``channel``, ``case_id``, ``incident_id``, ``payload`` and ``dedupe_key`` (a message whose
    dedupe key exists is not queued again)."""
    if not messages:
        return
    rows = [
        {
            "channel": m["channel"],
            "kind": kind,
            "case_id": m.get("case_id"),
            "incident_id": m.get("incident_id"),
            "payload": m.get("payload") or {},
            "dedupe_key": m.get("dedupe_key"),
            "status": OutboxStatus.PENDING,
            "attempts": 0,
            "created_at": now,
            "available_at": now,
        }
        for m in messages
    ]
    stmt = (
        dialect_insert(session, _OUTBOX)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(_OUTBOX.c.channel)
    )
    queued = (await session.exec(stmt, params=rows)).scalars().all()
    if queued:
        session.info.setdefault(_QUEUED, set()).update(queued)


_OUTBOX = OutboxMessage.__table__  # type: ignore[attr-defined]


async def enqueue_page(
    session: AsyncSession,
    *,
    now: datetime,
    payload: dict[str, Any],
    case_id: int | None = None,
    incident_id: int | None = None,
) -> int | None:
    """Queue a PagerDuty event (trigger, acknowledge or resolve) of a case or an incident."""
    return await enqueue(
        session,
        channel=PAGER_CHANNEL,
        kind=OutboxKind.PAGE,
        now=now,
        payload=payload,
        case_id=case_id,
        incident_id=incident_id,
    )


def _claimable(now: datetime) -> Any:
    return (
        (col(OutboxMessage.status) == OutboxStatus.PENDING)
        & (col(OutboxMessage.available_at) <= now)
        & ((col(OutboxMessage.lease_until).is_(None)) | (col(OutboxMessage.lease_until) <= now))
    )


# Messages whose order matters within their subject: the lines of one thread, and the
# trigger, acknowledge and resolve of one PagerDuty alert.
ORDERED_KINDS = ("thread", "page")


def _next_in_line() -> Any:
    """No earlier message of the same subject and kind is still waiting to be sent.

    Without this, a line retried after an outage could be overtaken by the line after it.
    """
    older = aliased(OutboxMessage)
    earlier = (
        select(col(older.id))
        .where(
            col(older.status) == OutboxStatus.PENDING,
            col(older.id) < col(OutboxMessage.id),
            col(older.kind) == col(OutboxMessage.kind),
            col(older.channel) == col(OutboxMessage.channel),
            col(older.case_id).is_not_distinct_from(OutboxMessage.case_id),
            col(older.incident_id).is_not_distinct_from(OutboxMessage.incident_id),
        )
        .exists()
    )
    return col(OutboxMessage.kind).not_in(ORDERED_KINDS) | ~earlier


async def claim(
    session: AsyncSession,
    *,
    owner: str,
    now: datetime,
    lease: timedelta,
    limit: int = 50,
    channel: str | None = None,
    not_channels: Sequence[str] = (),
) -> Sequence[OutboxMessage]:
    """Lease up to ``limit`` due messages to ``owner``, oldest first; commit before sending.

    ``channel`` / ``not_channels`` split the outbox between drains (Slack, PagerDuty and
    outreach to end users).
    Lines of one thread and events of one PagerDuty alert go out one at a time, in order.
    """
    where = _claimable(now) & _next_in_line()
    if channel is not None:
        where &= col(OutboxMessage.channel) == channel
    if not_channels:
        where &= col(OutboxMessage.channel).not_in(not_channels)
    candidates = (
        select(OutboxMessage.id)
        .where(where)
        .order_by(col(OutboxMessage.id))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list((await session.exec(candidates)).all())
    if not ids:
        return []
    await session.exec(
        update(OutboxMessage)
        .where(col(OutboxMessage.id).in_(ids), _claimable(now))
        .values(lease_owner=owner, lease_until=now + lease, attempts=OutboxMessage.attempts + 1)
    )
    stmt = (
        select(OutboxMessage)
        .where(col(OutboxMessage.id).in_(ids), OutboxMessage.lease_owner == owner)
        .order_by(col(OutboxMessage.id))
        .execution_options(populate_existing=True)
    )
    return (await session.exec(stmt)).all()


async def _finish(session: AsyncSession, *, message_id: int, owner: str, **values: Any) -> bool:
    result = await session.exec(
        update(OutboxMessage)
        .where(
            col(OutboxMessage.id) == message_id,
            col(OutboxMessage.lease_owner) == owner,
            col(OutboxMessage.status) == OutboxStatus.PENDING,
        )
        .values(**values)
    )
    return result.rowcount == 1


# ``last_error`` of a message whose send has begun: a message claimed with it was cut off
# mid-send by a crash, and may have reached its recipient.
IN_FLIGHT = "in_flight"


async def mark_in_flight(session: AsyncSession, *, message_id: int, owner: str) -> bool:
    """Note, before sending, that a send has begun (see ``IN_FLIGHT``)."""
    return await _finish(session, message_id=message_id, owner=owner, last_error=IN_FLIGHT)


async def mark_sent(session: AsyncSession, *, message_id: int, owner: str, now: datetime) -> bool:
    """Record a delivered message; False if the lease was lost to another process."""
    return await _finish(
        session,
        message_id=message_id,
        owner=owner,
        status=OutboxStatus.SENT,
        sent_at=now,
        lease_until=None,
    )


async def retry_later(
    session: AsyncSession, *, message_id: int, owner: str, available_at: datetime, error: str
) -> bool:
    """Release the lease and make the message due again at ``available_at``."""
    return await _finish(
        session,
        message_id=message_id,
        owner=owner,
        available_at=available_at,
        lease_owner=None,
        lease_until=None,
        last_error=error[:2000],
    )


async def release(session: AsyncSession, *, message_ids: Sequence[int], owner: str) -> int:
    """Hand back leased messages that were not attempted, due again at once; return how many.

    The claim counted an attempt that did not happen: it is taken back, so the next sender
    does not look for an earlier copy of a message that was never sent.
    """
    if not message_ids:
        return 0
    result = await session.exec(
        update(OutboxMessage)
        .where(
            col(OutboxMessage.id).in_(message_ids),
            col(OutboxMessage.lease_owner) == owner,
            col(OutboxMessage.status) == OutboxStatus.PENDING,
        )
        .values(
            lease_owner=None,
            lease_until=None,
            attempts=col(OutboxMessage.attempts) - 1,
        )
    )
    return result.rowcount


async def mark_failed(session: AsyncSession, *, message_id: int, owner: str, error: str) -> bool:
    """Give up on a message that can never be delivered (a permanent error)."""
    return await _finish(
        session,
        message_id=message_id,
        owner=owner,
        status=OutboxStatus.FAILED,
        lease_until=None,
        last_error=error[:2000],
    )


async def mark_superseded(
    session: AsyncSession, *, message_ids: Sequence[int], owner: str, now: datetime
) -> int:
    """Drop updates made redundant by a later update of the same message (coalescing)."""
    if not message_ids:
        return 0
    result = await session.exec(
        update(OutboxMessage)
        .where(
            col(OutboxMessage.id).in_(message_ids),
            col(OutboxMessage.lease_owner) == owner,
            col(OutboxMessage.status) == OutboxStatus.PENDING,
        )
        .values(status=OutboxStatus.SUPERSEDED, sent_at=now, lease_until=None)
    )
    return result.rowcount


async def withdraw(session: AsyncSession, *, dedupe_key: str, now: datetime) -> bool:
    """Cancel a message nobody has tried to send yet; False when it is sent or on its way.

    A message tried once may have reached Slack even though the answer was lost, so only a
    message never attempted is withdrawn.
    """
    result = await session.exec(
        update(OutboxMessage)
        .where(
            col(OutboxMessage.dedupe_key) == dedupe_key,
            col(OutboxMessage.status) == OutboxStatus.PENDING,
            col(OutboxMessage.attempts) == 0,
            col(OutboxMessage.lease_until).is_(None) | (col(OutboxMessage.lease_until) <= now),
        )
        .values(status=OutboxStatus.SUPERSEDED, sent_at=now, last_error="withdrawn")
    )
    return result.rowcount == 1


async def withdraw_followups(session: AsyncSession, *, case_id: int, now: datetime) -> int:
    """Cancel a case's pending updates, thread lines and DMs once its alert is withdrawn.

    Each needs the alert's message, which will now never be posted, so none of them can have
    reached Slack; left pending they would wait for it forever.
    """
    result = await session.exec(
        update(OutboxMessage)
        .where(
            col(OutboxMessage.case_id) == case_id,
            col(OutboxMessage.status) == OutboxStatus.PENDING,
            col(OutboxMessage.kind).in_((OutboxKind.UPDATE, OutboxKind.THREAD, OutboxKind.DM)),
        )
        .values(status=OutboxStatus.SUPERSEDED, sent_at=now, last_error="withdrawn")
    )
    return result.rowcount


async def update_waiting(
    session: AsyncSession, *, incident_id: int, after: datetime
) -> datetime | None:
    """When an update of the incident's message that is queued and not due before ``after``
    is due (the latest, if several); None if there is none.

    Such an update renders the incident as it will be then, so another one is not needed.
    """
    stmt = select(sa.func.max(col(OutboxMessage.available_at))).where(
        col(OutboxMessage.incident_id) == incident_id,
        col(OutboxMessage.kind) == "update",
        col(OutboxMessage.status) == OutboxStatus.PENDING,
        col(OutboxMessage.attempts) == 0,
        col(OutboxMessage.available_at) > after,
    )
    return (await session.exec(stmt)).one()
