"""The ingest worker: turns stored webhook deliveries into applied account events.

For each pending delivery: parse it, ask Nylas for a v2 account's current details (outside any
transaction, so a slow API never holds a database lock), then claim the delivery and apply the
event in the same transaction. A crash before the commit leaves the delivery pending; a second
worker racing for it finds it claimed. A failure is retried with backoff, then given up on;
Nylas being unavailable is waited out for a day first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import inbox
from storage.models import ApiVersion, InboxDelivery
from workflows import stages
from workflows.clock import Clock
from workflows.episodes import NYLAS, Episodes
from workflows.events import AccountEvent
from workflows.lifecycle import Router
from workflows.nylas import (
    NylasClient,
    NylasError,
    NylasNotFound,
    NylasRateLimited,
    NylasUnavailable,
)
from workflows.nylas.webhooks import parse_entry
from workflows.policy import Storms

log = logging.getLogger("reauthbot.ingest")

MAX_RETRY_DELAY = timedelta(minutes=10)
# Nylas being away (5xx, timeouts, rate limits) is waited out past inbox.MAX_ATTEMPTS, which
# would otherwise drop a v2 delivery after two minutes of outage, until it is this old.
WAIT_FOR_NYLAS = timedelta(hours=24)
NYLAS_AWAY = (NylasUnavailable, NylasRateLimited)
# v2 account lookups in flight at once (Nylas allows 500 requests/s per application).
ENRICH_CONCURRENCY = 8
# Deliveries read in one pass: when a backlog has built up, the fixed costs of a pass (reading
# the inbox, the statements of each stage) are shared by many.
BATCH = 500
# Deliveries applied in one transaction: on SQLite, webhook deliveries and clicks wait for it
# (about a millisecond each on a busy machine; the webhook's p99 goal is 50 ms).
PER_TRANSACTION = 25
# ... and while deliveries keep arriving for that one write lock: each of them waits for the
# transaction in progress, so it is kept to a few milliseconds (at 300 deliveries a second
# with a backlog, slices of 25 put the webhook's p99 at 59 ms).
PER_TRANSACTION_CONTENDED = 8


def retry_delay(attempts: int) -> timedelta:
    """5 s, 10 s, 20 s, … capped at 10 minutes."""
    return min(timedelta(seconds=5 * 2 ** min(attempts, 10)), MAX_RETRY_DELAY)


async def enrich(event: AccountEvent, nylas: NylasClient | None) -> AccountEvent:
    """Fill a v2 event with the account's current state, email, provider and billing state.

    v2 webhooks carry only the account id, and the state they announce may already be stale;
    the account as Nylas reports it now is what counts. Raises NylasError when Nylas cannot
    say (the delivery is then retried), except 404: the account is gone. Without a v2 client
    the event comes back marked ``reread: False``, to be recorded and not applied: a signed
    delivery alone must not change an account.
    """
    if event.api_version != ApiVersion.V2:
        return event
    if nylas is None or nylas.api_version != ApiVersion.V2:
        return dataclasses.replace(event, details={**event.details, "reread": False})
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


@dataclasses.dataclass
class _Batch:
    """Deliveries to apply in one transaction, with what each was read as (or why not)."""

    items: list[tuple[InboxDelivery, AccountEvent | Exception]]
    route: Router
    storms: Storms | None
    step_aside: Callable[[], bool]

    async def apply(
        self, session: AsyncSession, now: datetime, *, isolate: bool
    ) -> tuple[int, list[tuple[InboxDelivery, Exception]], int]:
        """Claim and apply them; return how many were applied, those that failed, and how
        many were gone through (the rest, when it stepped aside, is for another transaction).

        Without ``isolate`` they go through the stages together, and a failure is raised (the
        caller rolls everything back); with it, each is applied alone in a savepoint, and a
        failure rolls back only its own changes.
        """
        if not isolate:
            return await self._together(session, now)
        failed: list[tuple[InboxDelivery, Exception]] = []
        applied = 0
        for went, (delivery, event) in enumerate(self.items):
            if applied and self.step_aside():
                return applied, failed, went
            if isinstance(event, Exception):
                failed.append((delivery, event))
                continue
            assert delivery.id is not None
            try:
                async with session.begin_nested():
                    ran, _ = await self._stages(session, [(delivery.id, event)], now)
                    applied += ran
            except Exception as exc:
                log.exception("cannot apply delivery", extra={"delivery": delivery.id})
                failed.append((delivery, exc))
        return applied, failed, len(self.items)

    async def _together(
        self, session: AsyncSession, now: datetime
    ) -> tuple[int, list[tuple[InboxDelivery, Exception]], int]:
        readable = [
            (position, delivery.id or 0, event)
            for position, (delivery, event) in enumerate(self.items)
            if not isinstance(event, Exception)
        ]
        applied, went = await self._stages(session, [(d, e) for _, d, e in readable], now)
        # Those that could not be read fail, up to where the batch stepped aside.
        end = readable[went][0] if went < len(readable) else len(self.items)
        failed = [(d, e) for d, e in self.items[:end] if isinstance(e, Exception)]
        return applied, failed, end

    async def _stages(
        self, session: AsyncSession, items: list[tuple[int, AccountEvent]], now: datetime
    ) -> tuple[int, int]:
        return await stages.apply_batch(
            session,
            items,
            now=now,
            route=self.route,
            storms=self.storms,
            step_aside=self.step_aside,
        )


async def _defer(
    sessions: async_sessionmaker[AsyncSession],
    delivery: InboxDelivery,
    failure: Exception,
    clock: Clock,
    episodes: Episodes | None,
) -> str:
    assert delivery.id is not None
    now = clock()
    error = f"{type(failure).__name__}: {failure}"
    waiting = isinstance(failure, NYLAS_AWAY) and now - delivery.received_at < WAIT_FOR_NYLAS
    retry_at = now + retry_delay(delivery.attempts)
    async with sessions() as session, session.begin():
        status = await inbox.defer_delivery(
            session,
            delivery_id=delivery.id,
            error=error,
            retry_at=retry_at,
            give_up=not waiting,
        )
    level = logging.ERROR if status == "failed" else logging.WARNING
    if waiting and status != "failed" and episodes is not None:
        # Nylas is away: one episode for the outage, each delivery waiting at DEBUG.
        episodes.failed(failure, loop="ingest", what=NYLAS, retry_at=retry_at)
        level = logging.DEBUG
    log.log(
        level,
        "delivery %s: %s",
        "given up" if status == "failed" else "will be retried",
        error,
        extra={"delivery": delivery.id, "attempts": delivery.attempts + 1},
    )
    return "failed" if status == "failed" else "retry"


async def _prepare(
    delivery: InboxDelivery, nylas: NylasClient | None, limit: asyncio.Semaphore
) -> AccountEvent | Exception:
    try:
        event = parse_entry(delivery.source, delivery.body)
        async with limit:
            return await enrich(event, nylas)
    except NylasError as exc:
        return exc  # its class says whether Nylas is away or refused
    except Exception as exc:
        log.exception("cannot read delivery", extra={"delivery": delivery.id})
        return exc


async def _prepare_all(
    pending: list[InboxDelivery], nylas: NylasClient | None
) -> list[AccountEvent | Exception]:
    """Read (and enrich) the deliveries, a slice at a time: parsing hundreds at once would
    keep the event loop, and the webhook deliveries arriving meanwhile, for tens of ms."""
    lookups = asyncio.Semaphore(ENRICH_CONCURRENCY)
    prepared: list[AccountEvent | Exception] = []
    for start in range(0, len(pending), PER_TRANSACTION):
        if start:
            await asyncio.sleep(0)
        chunk = pending[start : start + PER_TRANSACTION]
        prepared += await asyncio.gather(*(_prepare(d, nylas, lookups) for d in chunk))
    return prepared


async def drain_inbox(
    sessions: async_sessionmaker[AsyncSession],
    *,
    nylas: NylasClient | None,
    clock: Clock,
    route: Router,
    readers: async_sessionmaker[AsyncSession] | None = None,
    limit: int = BATCH,
    per_transaction: int = PER_TRANSACTION,
    step_aside: Callable[[], bool] = lambda: False,
    saturated: Callable[[], bool] = lambda: False,
    contended: Callable[[], bool] = lambda: False,
    storms: Storms | None = None,
    episodes: Episodes | None = None,
) -> int:
    """Process the deliveries due now, oldest first, up to ``limit``; return how many were
    looked at.

    They are read all at once, then claimed and applied ``per_transaction`` at a time, each
    slice in one transaction: one commit for many deliveries. If one fails, its slice is
    rolled back and applied again with a savepoint for each delivery, so that the failing
    one rolls back only its own changes and is retried later. A slice is kept small so the
    transaction never holds the write lock for long (webhook deliveries and clicks wait for
    it), and between slices the connection goes to whoever waits for it. ``readers`` are
    sessions that do not take that lock; when ``step_aside`` says incoming deliveries wait to
    be stored, a slice is committed early: acknowledging Nylas comes before processing,
    which the inbox lets lag. While ``saturated`` says deliveries arrive faster than they are
    acknowledged, a pass takes on one transaction's worth: its rest then follows at once.
    While ``contended`` says deliveries keep arriving for the same write lock, slices are
    ``PER_TRANSACTION_CONTENDED`` at most. Deliveries that wait for Nylas to come back are
    reported to ``episodes``, which logs the outage once.
    """
    if saturated():
        # One transaction's worth, and no more read (and parsed) than it will take.
        limit = min(limit, _slice_size(per_transaction, contended))
    async with (readers or sessions)() as session:
        pending = list(await inbox.pending_deliveries(session, now=clock(), limit=limit))
    if not pending:
        return 0
    began = episodes.now() if episodes is not None else None
    prepared = await _prepare_all(pending, nylas)
    if episodes is not None and _read_from_nylas(prepared, nylas):
        episodes.succeeded(NYLAS, began=began)
    items = list(zip(pending, prepared, strict=True))
    applied = done = 0
    while done < len(items):
        if done and saturated():
            break  # the rest stays pending for the next pass
        if done:
            await asyncio.sleep(0)  # a writer waiting for the connection takes it now
        size = _slice_size(per_transaction, contended)
        batch = _Batch(items[done : done + size], route, storms, step_aside)
        ran, went = await _apply_slice(sessions, batch, clock, episodes)
        applied, done = applied + ran, done + went
    log.debug("inbox batch", extra={"looked_at": len(pending), "applied": applied})
    return len(pending)


def _slice_size(per_transaction: int, contended: Callable[[], bool]) -> int:
    """How many deliveries one transaction applies now."""
    return min(per_transaction, PER_TRANSACTION_CONTENDED) if contended() else per_transaction


def _read_from_nylas(prepared: list[AccountEvent | Exception], nylas: NylasClient | None) -> bool:
    """True when a v2 event was read back from Nylas: it answers."""
    if nylas is None or nylas.api_version != ApiVersion.V2:
        return False
    return any(isinstance(e, AccountEvent) and e.api_version == ApiVersion.V2 for e in prepared)


async def _apply_slice(
    sessions: async_sessionmaker[AsyncSession],
    batch: _Batch,
    clock: Clock,
    episodes: Episodes | None,
) -> tuple[int, int]:
    """Apply a slice in a transaction; return how many were applied and gone through."""
    now = clock()
    try:
        # Savepoints cost a third of a millisecond per delivery; deliveries rarely fail.
        async with sessions() as session, session.begin():
            applied, failed, went = await batch.apply(session, now, isolate=False)
    except Exception as exc:
        # One of them failed, and everything was rolled back: apply them again, each in a
        # savepoint of its own, so that only a failing one is left out.
        log.debug("inbox batch rolled back, applying one by one: %s", type(exc).__name__)
        async with sessions() as session, session.begin():
            applied, failed, went = await batch.apply(session, now, isolate=True)
    for delivery, error in failed:
        await _defer(sessions, delivery, error, clock, episodes)
    return applied, went
