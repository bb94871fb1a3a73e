"""Apply an account event: update the snapshot, then open, update or resolve the case.

``apply_event`` runs inside the caller's transaction and writes everything the event causes
(account snapshot, case, audit events, outbox rows) so that all of it commits or none does.
An event older than the state the snapshot holds is recorded in the audit log, not applied;
so is an event of the other API version than the account's (v2 account ids and v3 grant ids
are separate spaces: a v2 delivery never changes a v3 grant, nor a v3 one a v2 account).

A v2 account that is stopped and no longer billed (``cancelled`` or ``deleted``) was stopped
on purpose: it gets no case, and an open case of it is resolved as such. An event saying the
account was (re)connected sets ``Account.connected_at``: a new account may stay partial longer.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from storage import actors, cases
from storage.cases import AuditLine
from storage.models import Account, Case, CaseKind, CaseStatus
from workflows import duplicates
from workflows.billing import on_purpose_words, stopped_on_purpose
from workflows.diagnosis import refresh
from workflows.enduser import REAUTHENTICATED, RECOVERED
from workflows.events import AccountEvent
from workflows.notify import record_change
from workflows.opening import Outcome, Router, open_case_for
from workflows.policy import Storms
from workflows.states import Health, classify

__all__ = [
    "Outcome",
    "Router",
    "actor_of",
    "apply_event",
    "audit_of",
    "open_case_for",
    "record_not_applied",
]

log = logging.getLogger("reauthbot.lifecycle")


# Triggers that say the account was connected, or connected again, just now.
CONNECTING = ("account.connected", "grant.created")


def connects(event: AccountEvent) -> bool:
    """Whether the event says the account was (re)connected: its first sync starts again."""
    if event.event_type in CONNECTING:
        return True
    return event.event_type == "grant.updated" and bool(event.details.get("reauthenticated"))


def actor_of(event: AccountEvent) -> str:
    """Who changed the account: Nylas (webhook), polling, or an operator's retry or revoke."""
    return actors.NYLAS if event.source == "webhook" else event.source


def audit_of(event: AccountEvent) -> dict[str, object]:
    """What the audit log records of an event."""
    return {
        "event": event.event_type,
        "state": event.state,
        "source": event.source,
        "occurred_at": event.occurred_at.isoformat(),
        **event.details,
    }


async def record_not_applied(
    session: AsyncSession,
    event: AccountEvent,
    *,
    now: datetime,
    reason: str,
    case_id: int | None = None,
) -> Outcome:
    """Record in the audit log (and the log) an event that is deliberately left unapplied."""
    await cases.record_event(session, **not_applied_line(event, now, reason, case_id))
    return Outcome("not_applied", case_id)


def not_applied_line(
    event: AccountEvent, now: datetime, reason: str, case_id: int | None = None
) -> AuditLine:
    """The audit line of an event left unapplied (``record_event``'s arguments), logged."""
    log.warning(
        "%s event not applied: %s",
        event.api_version,
        reason,
        extra={"account": event.account_id[:64], "event": event.event_type},
    )
    return {
        "actor": actor_of(event),
        "action": "event_not_applied",
        "at": now,
        "case_id": case_id,
        "account_id": event.account_id,
        "details": {**audit_of(event), "api_version": event.api_version, "reason": reason},
    }


def other_version(account: Account, event: AccountEvent) -> str:
    """Why an event of the other API version than the account's is not applied."""
    return (
        f"account {account.id} is a {account.api_version} account; "
        f"a {event.api_version} event never changes it"
    )


def is_stale(account: Account, event: AccountEvent) -> bool:
    """Whether the event is older than the state the account holds (recorded, not applied)."""
    return account.state_at is not None and event.occurred_at < account.state_at


def stale_line(
    account: Account, event: AccountEvent, now: datetime, case_id: int | None
) -> AuditLine:
    """The audit line of a stale event (``record_event``'s arguments)."""
    assert account.state_at is not None
    return {
        "actor": actor_of(event),
        "action": "stale_event",
        "at": now,
        "case_id": case_id,
        "account_id": account.id,
        "details": {
            **audit_of(event),
            "current_state": account.sync_state,
            "current_state_at": account.state_at.isoformat(),
        },
    }


def update_snapshot(account: Account, event: AccountEvent, now: datetime) -> None:
    """Apply a (not stale) event to the account's snapshot, in memory."""
    for name in ("email", "provider", "billing_state", "credential_id"):
        value = getattr(event, name)
        if value is not None:
            setattr(account, name, value)
    account.updated_at = now
    if connects(event):
        account.connected_at = min(event.occurred_at, now)
    if event.state is not None:
        if account.sync_state != event.state or account.state_since is None:
            account.state_since = event.occurred_at
        account.sync_state = event.state
        account.state_at = event.occurred_at


async def apply_event(
    session: AsyncSession,
    event: AccountEvent,
    *,
    now: datetime,
    route: Router,
    storms: Storms | None = None,
) -> Outcome:
    """Apply one event to the account and its case; see the module docstring."""
    account = await session.get(Account, event.account_id, with_for_update=True)
    open_case: Case | None = None
    if account is None:  # new: no case yet, and it is written once, below
        account = Account(
            id=event.account_id, api_version=event.api_version, first_seen_at=now, updated_at=now
        )
    else:
        open_case = await cases.get_open_case(session, account_id=event.account_id)
    case_id = open_case.id if open_case else None
    if account.api_version != event.api_version:
        reason = other_version(account, event)
        return await record_not_applied(session, event, now=now, reason=reason, case_id=case_id)
    audit = audit_of(event)

    if is_stale(account, event):
        await cases.record_event(session, **stale_line(account, event, now, case_id))
        return Outcome("stale", case_id)

    email_before = account.email
    update_snapshot(account, event, now)
    session.add(account)
    if account.email and account.email != email_before:
        # Flagged against the account as it is now: a deleted one is nobody's newer copy.
        await session.flush()
        flagged = await duplicates.flag(
            session,
            email=account.email,
            api_version=account.api_version,
            now=now,
            route=route,
            keep=account.id,
        )
        if flagged:  # flagging may have opened or changed cases: read this account's again
            open_case = await cases.get_open_case(session, account_id=account.id)
            case_id = open_case.id if open_case else None
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
    await session.flush()

    rule = classify(account.api_version, event.state)
    duplicate = open_case is not None and open_case.kind == CaseKind.DUPLICATE
    if rule.health is Health.BROKEN and stopped_on_purpose(account) and not duplicate:
        return await _stopped_on_purpose(session, account, open_case, event, now=now, audit=audit)
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
                storms=storms,
            )
        # A duplicate stays a duplicate whatever its state: it is billed either way.
        kind = CaseKind.DUPLICATE if open_case.kind == CaseKind.DUPLICATE else rule.kind
        if open_case.state == event.state and open_case.kind == kind:
            return Outcome("unchanged", open_case.id)
        return await _update(session, open_case, event, kind, now=now, audit=audit)
    if open_case is not None and duplicate and rule.health is not Health.GONE:
        if open_case.state == event.state:
            return Outcome("unchanged", open_case.id)
        return await _update(session, open_case, event, open_case.kind, now=now, audit=audit)
    if open_case is not None:
        # A stuck case is about this very state lasting too long: a repeat of it is no news.
        if open_case.kind == CaseKind.STUCK and open_case.state == event.state:
            return Outcome("unchanged", open_case.id)
        reason = _recovery(event, rule.words)
        return await _resolve(session, open_case, event, reason, now=now, audit=audit)
    return Outcome("unchanged")


async def _stopped_on_purpose(
    session: AsyncSession,
    account: Account,
    case: Case | None,
    event: AccountEvent,
    *,
    now: datetime,
    audit: dict[str, object],
) -> Outcome:
    if case is None:
        await cases.record_event(
            session,
            actor=actor_of(event),
            action="stopped_on_purpose",
            at=now,
            account_id=account.id,
            details={**audit, "billing_state": account.billing_state},
        )
        return Outcome("recorded")
    if case.busy_until is not None and case.busy_until > now:
        # A retry downgrades the account before it upgrades it again: that stop is ours, and
        # the retry applies what it ends in.
        return Outcome("unchanged", case.id)
    reason = on_purpose_words(account)
    return await _resolve(session, case, event, reason, now=now, audit=audit)


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
    account = await session.get(Account, case.account_id)
    if account is not None:
        await refresh(session, case=case, account=account, now=now)
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


def _recovery(event: AccountEvent, words: str) -> str:
    if event.state == "deleted":
        return "The account was deleted in Nylas."
    if event.details.get("reauthenticated"):
        return REAUTHENTICATED
    return f"{RECOVERED} {words} ({event.state})."


async def _resolve(
    session: AsyncSession,
    case: Case,
    event: AccountEvent,
    reason: str,
    *,
    now: datetime,
    audit: dict[str, object],
) -> Outcome:
    assert case.id is not None
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
