"""Apply an account event: update the snapshot, then open, update or resolve the case.

``apply_event`` runs inside the caller's transaction and writes everything the event causes
(account snapshot, case, audit events, outbox rows) so that all of it commits or none does.
An event older than the state the snapshot holds is recorded in the audit log, not applied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from storage import cases, outbox
from storage.models import Account, Case, CaseStatus, OutboxKind
from workflows.events import AccountEvent
from workflows.notify import record_change
from workflows.states import Health, classify

log = logging.getLogger("reauthbot.lifecycle")

# Chooses the channel of a case's alert from the account's email (routing by domain).
Router = Callable[[str | None], str]


@dataclass(frozen=True, slots=True)
class Outcome:
    action: str  # "opened", "updated", "resolved", "stale", "recorded", "unchanged"
    case_id: int | None = None


def actor_of(event: AccountEvent) -> str:
    """Who changed the account: Nylas (webhook), polling, or an operator's retry or revoke."""
    return "nylas" if event.source == "webhook" else event.source


async def apply_event(
    session: AsyncSession, event: AccountEvent, *, now: datetime, route: Router
) -> Outcome:
    """Apply one event to the account and its case; see the module docstring."""
    account = await session.get(Account, event.account_id, with_for_update=True)
    if account is None:
        account = Account(
            id=event.account_id, api_version=event.api_version, first_seen_at=now, updated_at=now
        )
        session.add(account)
    open_case = await cases.get_open_case(session, account_id=event.account_id)
    case_id = open_case.id if open_case else None
    audit = {
        "event": event.event_type,
        "state": event.state,
        "source": event.source,
        "occurred_at": event.occurred_at.isoformat(),
        **event.details,
    }

    if account.state_at is not None and event.occurred_at < account.state_at:
        await cases.record_event(
            session,
            actor=actor_of(event),
            action="stale_event",
            at=now,
            case_id=case_id,
            account_id=account.id,
            details={
                **audit,
                "current_state": account.sync_state,
                "current_state_at": account.state_at.isoformat(),
            },
        )
        return Outcome("stale", case_id)

    for name in ("email", "provider", "billing_state"):
        value = getattr(event, name)
        if value is not None:
            setattr(account, name, value)
    account.updated_at = now
    if event.state is None:
        await cases.record_event(
            session,
            actor=actor_of(event),
            action="account_event",
            at=now,
            case_id=case_id,
            account_id=account.id,
            details=audit,
        )
        return Outcome("recorded", case_id)

    if account.sync_state != event.state or account.state_since is None:
        account.state_since = event.occurred_at
    account.sync_state = event.state
    account.state_at = event.occurred_at
    session.add(account)
    await session.flush()

    rule = classify(account.api_version, event.state)
    if rule.health is Health.BROKEN:
        assert rule.kind is not None
        if open_case is None:
            return await open_case_for(
                session,
                account,
                kind=rule.kind,
                state=event.state,
                broken_since=event.occurred_at,
                actor=actor_of(event),
                now=now,
                route=route,
                audit=audit,
            )
        if open_case.state == event.state and open_case.kind == rule.kind:
            return Outcome("unchanged", open_case.id)
        return await _update(session, open_case, event, rule.kind, now=now, audit=audit)
    if open_case is not None:
        return await _resolve(session, open_case, event, rule.words, now=now, audit=audit)
    return Outcome("unchanged")


async def open_case_for(
    session: AsyncSession,
    account: Account,
    *,
    kind: str,
    state: str | None,
    broken_since: datetime,
    actor: str,
    now: datetime,
    route: Router,
    audit: dict[str, object],
) -> Outcome:
    """Open a case for the account and queue its alert (the caller checked none is open)."""
    # The case records where its alert goes; the message ts is added once it is posted.
    channel = route(account.email)
    case = await cases.open_case(
        session,
        account_id=account.id,
        kind=kind,
        state=state,
        now=now,
        channel=channel,
        broken_since=min(broken_since, now),
    )
    if case is None:  # another worker opened it between our read and insert
        raise RuntimeError(f"case for account {account.id} opened concurrently; retry")
    assert case.id is not None
    await cases.record_event(
        session,
        actor=actor,
        action="opened",
        at=now,
        case_id=case.id,
        account_id=account.id,
        details=audit,
    )
    await outbox.enqueue(
        session,
        channel=channel,
        kind=OutboxKind.POST,
        now=now,
        case_id=case.id,
        dedupe_key=f"case:{case.id}:post",
    )
    log.info("case opened", extra={"case": case.id, "account": account.id, "kind": kind})
    return Outcome("opened", case.id)


async def _update(
    session: AsyncSession,
    case: Case,
    event: AccountEvent,
    kind: str,
    *,
    now: datetime,
    audit: dict[str, object],
) -> Outcome:
    assert case.id is not None
    before = case.state
    case.state, case.kind = event.state, kind
    await record_change(
        session,
        case,
        actor=actor_of(event),
        action="state_changed",
        now=now,
        line=f"State changed from {before} to {event.state}.",
        details={**audit, "previous_state": before},
    )
    return Outcome("updated", case.id)


async def _resolve(
    session: AsyncSession,
    case: Case,
    event: AccountEvent,
    words: str,
    *,
    now: datetime,
    audit: dict[str, object],
) -> Outcome:
    assert case.id is not None
    if event.state == "deleted":
        reason = "The account was deleted in Nylas."
    elif event.details.get("reauthenticated"):
        reason = "The end user re-authenticated."
    else:
        reason = f"The account recovered: {words} ({event.state})."
    case.status, case.resolved_at, case.resolved_by = CaseStatus.RESOLVED, now, actor_of(event)
    case.resolution = reason
    await record_change(
        session,
        case,
        actor=actor_of(event),
        action="resolved",
        now=now,
        line=f"Resolved: {reason}",
        details={**audit, "reason": reason},
    )
    log.info("case resolved", extra={"case": case.id, "account": case.account_id})
    return Outcome("resolved", case.id)
