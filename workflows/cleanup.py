"""The month-end billing clean-up: delete the broken accounts Nylas would bill next month.

Nylas bills an invalid grant until it is deleted, and a v2 account until it is cancelled or
deleted, for the whole month (UTC). Its advice: ask the end user to re-authenticate, wait a
grace period, then delete the accounts of those who did not before the month ends.

Five days before each month ends (UTC), ``queue_cleanup`` lists the open re-authentication and
stopped cases broken for longer than ``[cleanup] grace`` whose account is billed, with what they
cost (``[billing] price_per_account``), in one notice with a **Delete** button. It is recorded
once per month (``cleanup_runs``), whichever replica or restart gets there first. Deleting takes
the operator typing the number of accounts, and deletes only the cases listed: one at a time,
``PACE`` apart, each after reading the account from Nylas again (one that syncs again, or that
Nylas no longer bills, is kept). Each deletion is audited on its case and resolves it.

Deletion is never offered on a single case: it is a month-end decision about accounts whose
end users had their chance, not a fix.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import cases, outbox
from storage import cleanup as store
from storage.models import (
    Account,
    ApiVersion,
    Case,
    CaseKind,
    CaseStatus,
    CleanupRun,
    OutboxKind,
)
from workflows.actions import (
    finish_hold,
    gone_event,
    hold_for_nylas,
    reported_event,
    syncs_again,
    who,
)
from workflows.billing import NOT_BILLED, still_billed
from workflows.clock import Clock, how_long
from workflows.lifecycle import apply_event
from workflows.notify import record_change
from workflows.nylas import NylasClient, NylasError, NylasNotFound
from workflows.policy import Billing, Cleanup
from workflows.subject import ActionOutcome, ActionResult
from workflows.words import line

log = logging.getLogger("reauthbot.cleanup")

Sessions = async_sessionmaker[AsyncSession]

ABOUT = "cleanup"  # the payload "about" of the clean-up notice
WINDOW = timedelta(days=5)  # before the month ends (UTC)
PACE = timedelta(seconds=0.5)  # between two deletions
KINDS = (CaseKind.REAUTH, CaseKind.STOPPED)  # the end user had to act, and did not
MAX_LISTED = 20  # accounts named in the notice; the others are "and N more"
PROGRESS_EVERY = 10  # deletions between two updates of the notice
RESOLUTION = "Deleted for billing: broken past the grace period at the end of the month."

# How each listed case came out, as the notice counts them.
DELETED = "deleted"
GONE = "already gone"
RECOVERED = "kept: syncing again"
NOT_BILLED_NOW = "kept: no longer billed"
CLOSED = "skipped: resolved or busy meanwhile"
FAILED = "failed"
OUTCOMES = (DELETED, GONE, RECOVERED, NOT_BILLED_NOW, CLOSED, FAILED)


def month_of(now: datetime) -> str:
    """The month ``now`` falls in, UTC, as "2026-02"."""
    return now.astimezone(UTC).strftime("%Y-%m")


def month_end(now: datetime) -> datetime:
    """The first instant of the next month, UTC: when Nylas starts billing the next one."""
    at = now.astimezone(UTC)
    year, month = (at.year + 1, 1) if at.month == 12 else (at.year, at.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


def in_window(now: datetime) -> bool:
    """Whether ``now`` is within the last ``WINDOW`` of its month (UTC)."""
    return month_end(now) - WINDOW <= now.astimezone(UTC)


def notice_key(month: str) -> str:
    return f"cleanup:{month}"


def grace_words(grace: timedelta) -> str:
    return how_long(grace)


def cost_words(billing: Billing, accounts: int) -> str | None:
    """What ``accounts`` billed accounts cost a month, "12.50 USD"; None without a price."""
    cost = billing.cost(accounts)
    if cost is None:
        return None
    return f"{_money(cost)} {billing.currency}"


def _money(amount: Decimal) -> str:
    """Cents always shown, and finer fractions of a price kept: 12.50, 0.125."""
    cents = amount.quantize(Decimal("0.01"))
    return f"{cents if cents == amount else amount.normalize():f}"


async def count_at_risk(session: AsyncSession, *, now: datetime, cleanup: Cleanup) -> int:
    """How many billed accounts are broken past the grace period right now."""
    return await store.count_past_grace(
        session, broken_before=now - cleanup.grace, kinds=KINDS, not_billed=NOT_BILLED
    )


async def queue_cleanup(
    sessions: Sessions,
    *,
    now: datetime,
    channel: str,
    cleanup: Cleanup,
    billing: Billing,
) -> bool:
    """Offer this month's clean-up in ``channel``; False outside the window, when no account
    is past the grace period, or when this month's was offered already."""
    if not in_window(now):
        return False
    month = month_of(now)
    async with sessions() as session, session.begin():
        if await store.get_run(session, month=month) is not None:
            return False
        rows = await store.past_grace(
            session, broken_before=now - cleanup.grace, kinds=KINDS, not_billed=NOT_BILLED
        )
        if not rows:
            return False
        ids = [case.id for case, _ in rows if case.id is not None]
        payload = notice_payload(month, rows, now=now, cleanup=cleanup, billing=billing)
        created = await store.create_run(
            session, month=month, channel=channel, case_ids=ids, notice=payload, now=now
        )
        if not created:
            return False
        await outbox.enqueue(
            session,
            channel=channel,
            kind=OutboxKind.NOTICE,
            now=now,
            payload=payload,
            dedupe_key=notice_key(month),
        )
    log.info("billing clean-up offered", extra={"month": month, "accounts": len(ids)})
    return True


def notice_payload(
    month: str,
    rows: Sequence[tuple[Case, Account]],
    *,
    now: datetime,
    cleanup: Cleanup,
    billing: Billing,
) -> dict[str, Any]:
    """The facts of the notice, as plain data; the sinks word and escape them."""
    listed = [
        {
            "case": case.id,
            "label": account.email or account.id,
            "account": account.id,
            "since": (case.broken_since or case.opened_at).isoformat(),
        }
        for case, account in rows[:MAX_LISTED]
    ]
    return {
        "about": ABOUT,
        "key": notice_key(month),
        "month": month,
        "count": len(rows),
        "grace": grace_words(cleanup.grace),
        "ends": month_end(now).isoformat(),
        "cost": cost_words(billing, len(rows)),
        "accounts": listed,
        "more": max(len(rows) - len(listed), 0),
        "started_by": None,
        "done": 0,
        "tally": {},
        "finished": False,
    }


def notice_text(payload: dict[str, Any]) -> str:
    """The notice in one plain sentence: its notification text, and the log line."""
    count = int(payload.get("count") or 0)
    accounts = _count(count, "broken account")
    cost = payload.get("cost")
    at_risk = f" ({cost} at risk)" if cost else ""
    if payload.get("finished"):
        return f"Billing clean-up of {payload.get('month')}: {tally_words(payload.get('tally'))}."
    return (
        f"Billing clean-up: {accounts} past the {payload.get('grace')} grace period will be "
        f"billed again next month{at_risk}."
    )


def tally_words(tally: Any) -> str:
    counts = dict(tally or {})
    parts = [f"{counts[o]} {o}" for o in OUTCOMES if counts.get(o)]
    return ", ".join(parts) or "nothing done"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# --- deleting -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Deletion:
    """A confirmed deletion of one month's listed cases, to run with ``run_deletion``."""

    month: str
    case_ids: tuple[int, ...]
    actor: str


async def refuse(sessions: Sessions, *, month: str, actor: str, now: datetime) -> ActionResult:
    """Record a refused clean-up; nothing else changes."""
    async with sessions() as session, session.begin():
        await cases.record_event(
            session,
            actor=actor,
            action="refused",
            at=now,
            details={"action": "delete for billing", "month": month},
        )
    return ActionResult(ActionOutcome.REFUSED, "You are not allowed to delete accounts.")


async def offered(sessions: Sessions, *, month: str) -> int | None:
    """How many accounts the clean-up of ``month`` listed; None if it was never offered or
    its deletion has started."""
    async with sessions() as session:
        run = await store.get_run(session, month=month)
    if run is None or run.started_at is not None:
        return None
    return len(run.case_ids)


async def confirm(
    sessions: Sessions, *, month: str, actor: str, now: datetime, typed: str
) -> Deletion | ActionResult:
    """Start the deletion of ``month``'s listed cases once their number is typed back."""
    async with sessions() as session, session.begin():
        run = await store.lock_run(session, month=month)
        if run is None:
            return ActionResult(ActionOutcome.MISSING, f"No clean-up was offered for {month}.")
        if run.started_at is not None:
            by = run.started_by or "someone"
            return ActionResult(
                ActionOutcome.ALREADY,
                f"The clean-up of {month} was started by {who(by)} already.",
            )
        count = len(run.case_ids)
        if typed.strip() != str(count):
            return ActionResult(
                ActionOutcome.REFUSED,
                f"Type {count}, the number of accounts to delete, to confirm. Nothing was deleted.",
            )
        run.started_by, run.started_at = actor, now
        session.add(run)
        await cases.record_event(
            session,
            actor=actor,
            action="cleanup_started",
            at=now,
            details={"month": month, "accounts": count},
        )
        await _queue_progress(session, run, actor, 0, {}, now, finished=False)
        ids = tuple(run.case_ids)
    return Deletion(month, ids, actor)


async def run_deletion(
    sessions: Sessions,
    nylas: NylasClient,
    deletion: Deletion,
    *,
    clock: Clock,
    pace: timedelta = PACE,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Counter[str]:
    """Delete each listed case's account, ``pace`` apart; return how each came out."""
    tally: Counter[str] = Counter()
    for index, case_id in enumerate(deletion.case_ids):
        if index:
            await sleep(pace.total_seconds())
        try:
            outcome = await delete_for_billing(
                sessions, nylas, case_id=case_id, actor=deletion.actor, now=clock()
            )
        except Exception:
            # One case's failure (the database, a bug) must not leave the rest undone.
            log.exception("billing clean-up of one case failed", extra={"case": case_id})
            outcome = FAILED
        tally[outcome] += 1
        done = index + 1
        if done % PROGRESS_EVERY == 0 and done < len(deletion.case_ids):
            await _progress(sessions, deletion, done, tally, clock(), finished=False)
    await _progress(sessions, deletion, len(deletion.case_ids), tally, clock(), finished=True)
    log.info(
        "billing clean-up done",
        extra={"month": deletion.month, "tally": tally_words(tally)},
    )
    return tally


async def _progress(
    sessions: Sessions,
    deletion: Deletion,
    done: int,
    tally: Counter[str],
    now: datetime,
    *,
    finished: bool,
) -> None:
    async with sessions() as session, session.begin():
        run = await store.lock_run(session, month=deletion.month)
        assert run is not None
        run.tally = dict(tally)
        if finished:
            run.finished_at = now
            await cases.record_event(
                session,
                actor=deletion.actor,
                action="cleanup_finished",
                at=now,
                details={"month": deletion.month, **dict(tally)},
            )
        session.add(run)
        await _queue_progress(session, run, deletion.actor, done, tally, now, finished)
        if finished:
            said = f"Billing clean-up by {who(deletion.actor)}: {tally_words(tally)}."
            await outbox.enqueue(
                session,
                channel=run.channel,
                kind=OutboxKind.NOTICE_THREAD,
                now=now,
                payload={"key": notice_key(deletion.month), "text": said},
            )


async def _queue_progress(
    session: AsyncSession,
    run: CleanupRun,
    actor: str,
    done: int,
    tally: dict[str, int] | Counter[str],
    now: datetime,
    finished: bool,
) -> None:
    """Queue the notice again with how far the deletion is: the original facts, and progress."""
    payload = {**run.notice, "key": notice_key(run.month), "month": run.month}
    payload.update(started_by=actor, done=done, tally=dict(tally), finished=finished)
    await outbox.enqueue(
        session, channel=run.channel, kind=OutboxKind.NOTICE_UPDATE, now=now, payload=payload
    )


async def delete_for_billing(
    sessions: Sessions, nylas: NylasClient, *, case_id: int, actor: str, now: datetime
) -> str:
    """Delete one listed case's account if it is still broken and billed; return the outcome."""
    held = await hold_for_nylas(sessions, case_id=case_id, now=now, what="A billing clean-up")
    if isinstance(held, ActionResult):
        return CLOSED
    case, account = held
    method = "delete-grant" if account.api_version == ApiVersion.V3 else "delete-account"
    if account.api_version != nylas.api_version:
        await finish_hold(
            sessions,
            case_id=case_id,
            actor=actor,
            now=now,
            action="cleanup_failed",
            details={
                "reason": f"a {account.api_version} account; reauthbot talks to the "
                f"{nylas.api_version} API"
            },
            said=line("Billing clean-up by ", who(actor), ": not deleted (other API version)."),
        )
        return FAILED
    # The end user may have re-authenticated since the notice: deleting would undo that.
    try:
        remote = await nylas.get_account(account.id)
    except NylasNotFound:
        return await _already_gone(sessions, case_id, account, actor, now, method)
    except NylasError as exc:
        return await _failed(sessions, case_id, actor, now, method, exc, step="re-read")
    if syncs_again(case, account, remote):
        state = remote.sync_state or "unknown"
        await finish_hold(
            sessions,
            case_id=case_id,
            actor=actor,
            now=now,
            action="cleanup_skipped",
            details={"method": method, "state": state, "reason": "the account syncs again"},
            said=line("Billing clean-up by ", who(actor), f": kept, the account is {state} again."),
            event=reported_event(account, remote, now, "cleanup"),
        )
        return RECOVERED
    if account.api_version == ApiVersion.V2 and remote.billing_state in NOT_BILLED:
        await finish_hold(
            sessions,
            case_id=case_id,
            actor=actor,
            now=now,
            action="cleanup_skipped",
            details={"method": method, "billing_state": remote.billing_state},
            said=line(
                "Billing clean-up by ",
                who(actor),
                f": kept, Nylas no longer bills it (billing state {remote.billing_state}).",
            ),
            event=reported_event(account, remote, now, "cleanup"),
        )
        return NOT_BILLED_NOW
    try:
        await nylas.delete_account(account.id)
    except NylasNotFound:
        # Deleted elsewhere since the re-read, or a retried DELETE that did happen.
        return await _already_gone(sessions, case_id, account, actor, now, method)
    except NylasError as exc:
        return await _failed(sessions, case_id, actor, now, method, exc, step="delete")
    await _deleted(sessions, case_id=case_id, account=account, actor=actor, now=now, method=method)
    return DELETED


async def _already_gone(
    sessions: Sessions, case_id: int, account: Account, actor: str, now: datetime, method: str
) -> str:
    await finish_hold(
        sessions,
        case_id=case_id,
        actor=actor,
        now=now,
        action="cleanup_skipped",
        details={"method": method, "reason": "the account no longer exists in Nylas"},
        said=line("Billing clean-up by ", who(actor), ": the account was already gone."),
        event=gone_event(account, now, "cleanup"),
    )
    return GONE


async def _failed(
    sessions: Sessions,
    case_id: int,
    actor: str,
    now: datetime,
    method: str,
    exc: NylasError,
    *,
    step: str,
) -> str:
    await finish_hold(
        sessions,
        case_id=case_id,
        actor=actor,
        now=now,
        action="cleanup_failed",
        details={"method": method, "step": step, "error": str(exc)},
        said=line("Billing clean-up by ", who(actor), f": not deleted. {exc}"),
    )
    return FAILED


async def _deleted(
    sessions: Sessions, *, case_id: int, account: Account, actor: str, now: datetime, method: str
) -> None:
    """Resolve the case as deleted for billing, audit it, and mark the account deleted."""
    async with sessions() as session, session.begin():
        case = await session.get(Case, case_id, with_for_update=True)
        assert case is not None
        since = case.broken_since or case.opened_at
        case.busy_with, case.busy_until = None, None
        case.status, case.resolved_at, case.resolved_by = CaseStatus.RESOLVED, now, actor
        case.resolution = RESOLUTION
        billed = still_billed(account)
        await record_change(
            session,
            case,
            actor=actor,
            action="deleted_for_billing",
            now=now,
            line=line(
                "Deleted for billing by ",
                who(actor),
                f": broken for {how_long(now - since)}, past the grace period.",
            ),
            details={"method": method, "month": month_of(now), "was_billed": billed},
        )
        await apply_event(
            session,
            gone_event(account, now, "cleanup"),
            now=now,
            route=lambda _: case.slack_channel or "",
        )
