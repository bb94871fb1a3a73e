"""The ingest worker: turns stored webhook deliveries into applied account events.

For each pending delivery: parse it, ask Nylas for a v2 account's current details (outside any
transaction, so a slow API never holds a database lock), then in one transaction claim the
delivery and apply the event. A crash before the commit leaves the delivery pending; a second
worker racing for it finds it claimed. A failure is retried with backoff, then given up on.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import timedelta

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import inbox
from storage.models import InboxDelivery
from workflows.clock import Clock
from workflows.events import AccountEvent
from workflows.lifecycle import Router, apply_event
from workflows.nylas import NylasClient, NylasError, NylasNotFound
from workflows.nylas.webhooks import parse_entry

log = logging.getLogger("reauthbot.ingest")

MAX_RETRY_DELAY = timedelta(minutes=10)


def retry_delay(attempts: int) -> timedelta:
    """5 s, 10 s, 20 s, … capped at 10 minutes."""
    return min(timedelta(seconds=5 * 2**attempts), MAX_RETRY_DELAY)


async def enrich(event: AccountEvent, nylas: NylasClient | None) -> AccountEvent:
    """Fill a v2 event with the account's current state, email, provider and billing state.

    v2 webhooks carry only the account id, and the state they announce may already be stale;
    the account as Nylas reports it now is what counts. Raises NylasError when Nylas cannot
    say (the delivery is then retried), except 404: the account is gone.
    """
    if event.api_version != "v2":
        return event
    if nylas is None or nylas.api_version != "v2":
        return dataclasses.replace(event, details={**event.details, "enriched": False})
    try:
        remote = await nylas.get_account(event.account_id)
    except NylasNotFound:
        return dataclasses.replace(
            event, state="deleted", details={**event.details, "trigger_state": event.state}
        )
    return dataclasses.replace(
        event,
        state=remote.sync_state or event.state,
        email=remote.email,
        provider=remote.provider,
        billing_state=remote.billing_state,
        details={**event.details, "trigger_state": event.state},
    )


async def process_delivery(
    sessions: async_sessionmaker[AsyncSession],
    delivery: InboxDelivery,
    *,
    nylas: NylasClient | None,
    clock: Clock,
    route: Router,
) -> str:
    """Process one delivery; return what happened ("applied", "taken", "retry", "failed")."""
    assert delivery.id is not None
    try:
        event = parse_entry(delivery.source, delivery.body)
        event = await enrich(event, nylas)
        async with sessions() as session, session.begin():
            if not await inbox.claim_delivery(session, delivery_id=delivery.id, now=clock()):
                return "taken"
            outcome = await apply_event(session, event, now=clock(), route=route)
    except NylasError as exc:
        return await _defer(sessions, delivery, f"Nylas: {exc}", clock)
    except Exception as exc:
        log.exception("delivery failed", extra={"delivery": delivery.id})
        return await _defer(sessions, delivery, f"{type(exc).__name__}: {exc}", clock)
    log.debug(
        "delivery applied",
        extra={"delivery": delivery.id, "account": event.account_id, "outcome": outcome.action},
    )
    return "applied"


async def _defer(
    sessions: async_sessionmaker[AsyncSession], delivery: InboxDelivery, error: str, clock: Clock
) -> str:
    assert delivery.id is not None
    async with sessions() as session, session.begin():
        status = await inbox.defer_delivery(
            session,
            delivery_id=delivery.id,
            error=error,
            retry_at=clock() + retry_delay(delivery.attempts),
        )
    level = logging.ERROR if status == "failed" else logging.WARNING
    log.log(
        level,
        "delivery %s: %s",
        "given up" if status == "failed" else "will be retried",
        error,
        extra={"delivery": delivery.id, "attempts": delivery.attempts + 1},
    )
    return "failed" if status == "failed" else "retry"


async def drain_inbox(
    sessions: async_sessionmaker[AsyncSession],
    *,
    nylas: NylasClient | None,
    clock: Clock,
    route: Router,
    limit: int = 100,
) -> int:
    """Process the deliveries due now, oldest first; return how many were looked at."""
    async with sessions() as session:
        pending = list(await inbox.pending_deliveries(session, now=clock(), limit=limit))
    for delivery in pending:
        await process_delivery(sessions, delivery, nylas=nylas, clock=clock, route=route)
    return len(pending)
