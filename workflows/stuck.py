"""Stuck sync states: a v2 account that stays in a transient state too long gets a case.

``partial``, ``downloading`` and ``initializing`` usually pass on their own, so the lifecycle
never opens a case for them. Nylas' account sync-state guide sets the bounds: an existing
account partial for more than 24 hours wants Nylas Support, a newly authenticated one may stay
partial for up to a week, a historical sync may keep an account busy for up to a week, and an
account with only the ``email.send`` scope always stays initializing (an operator marks it
send-only, or the policy turns the initializing check off). The ``[stuck]`` policy holds the
limits; ``open_stuck_cases`` runs on a schedule and opens a ``stuck`` case for each account
over its limit.

The clock is ``Account.state_since``, which repeats of the same state do not reset. One stuck
case is opened per stay in a state: once an operator resolves it, it is not opened again until
the account has left the state and come back.

Two processes may sweep at once. On PostgreSQL each batch locks its accounts with ``FOR UPDATE
SKIP LOCKED`` (the lock ``apply_event`` takes too), so the other process takes other accounts;
whatever slips past the locks is settled by the unique index on open cases, and the account
that loses is skipped without undoing the rest of its batch.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import ColumnElement, and_, exists, or_
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession
from sqlmodel.sql.expression import SelectOfScalar

from storage import actors, cases
from storage.models import Account, ApiVersion, Case, CaseKind, CaseStatus
from workflows.clock import how_long
from workflows.lifecycle import Router, open_case_for
from workflows.policy import Stuck
from workflows.states import SEND_ONLY_RESOLUTION

log = logging.getLogger("reauthbot.stuck")

Sessions = async_sessionmaker[AsyncSession]

# The v2 sync states that may get stuck (v3 grants have no transient states).
STUCK_STATES = ("partial", "downloading", "initializing")


def is_new(account: Account, limits: Stuck, now: datetime) -> bool:
    """Whether the account was first seen or (re)connected less than ``partial_new`` ago."""
    began = max(account.first_seen_at, account.connected_at or account.first_seen_at)
    return began > now - limits.partial_new


def _over(limits: Stuck, now: datetime) -> list[ColumnElement[bool]]:
    """Per state, the accounts in it for longer than its limit allows, in SQL."""
    in_state = {state: col(Account.sync_state) == state for state in STUCK_STATES}
    since = col(Account.state_since)
    new_limit = limits.limit_for("partial", new=True)
    assert new_limit is not None
    # Bounds are computed here, so both engines only compare timestamps.
    settled = now - limits.partial_new
    old_account = and_(
        col(Account.first_seen_at) <= settled,
        or_(col(Account.connected_at).is_(None), col(Account.connected_at) <= settled),
    )
    over = [
        and_(in_state["partial"], since <= now - limits.partial, old_account),
        and_(in_state["partial"], since <= now - new_limit),
        and_(in_state["downloading"], since <= now - limits.downloading),
    ]
    if limits.initializing is not None:
        # A send-only account stays initializing for good: an operator said so.
        receives = col(Account.send_only).is_not(True)
        over.append(and_(in_state["initializing"], receives, since <= now - limits.initializing))
    return over


def _due(limits: Stuck, now: datetime, *, after: str | None, limit: int) -> SelectOfScalar[Account]:
    """Accounts over their state's limit that have no open case and no stuck case of this stay.

    A stuck case closed as send-only does not count once the mark is undone: the operator took
    back what closed it.
    """
    known = exists().where(
        col(Case.account_id) == col(Account.id),
        or_(
            col(Case.status) != CaseStatus.RESOLVED,
            and_(
                col(Case.kind) == CaseKind.STUCK,
                col(Case.opened_at) >= col(Account.state_since),
                or_(col(Case.resolution).is_(None), col(Case.resolution) != SEND_ONLY_RESOLUTION),
            ),
        ),
    )
    stmt = select(Account).where(
        col(Account.api_version) == ApiVersion.V2, or_(*_over(limits, now)), ~known
    )
    if after is not None:
        stmt = stmt.where(col(Account.id) > after)
    return stmt.order_by(col(Account.id)).limit(limit).with_for_update(skip_locked=True)


async def open_stuck_cases(
    sessions: Sessions, *, limits: Stuck, now: datetime, route: Router, limit: int = 500
) -> int:
    """Open a stuck case for every account over its state's limit; return how many opened."""
    opened = lost = failed = 0
    after: str | None = None
    while True:
        async with sessions() as session, session.begin():
            batch = list((await session.exec(_due(limits, now, after=after, limit=limit))).all())
            for account in batch:
                account_id = account.id
                try:
                    done = await open_stuck_case(
                        session, account, limits=limits, now=now, route=route
                    )
                except Exception:
                    # One account's failure must not keep the others from their alerts.
                    failed += 1
                    log.exception("cannot open a stuck case", extra={"account": account_id})
                    continue
                if done:
                    opened += 1
                else:
                    lost += 1
        if len(batch) < limit:
            break
        after = batch[-1].id
    if opened or lost or failed:
        log.info(
            "stuck accounts checked",
            extra={"opened": opened, "opened_elsewhere": lost, "failed": failed},
        )
    return opened


async def open_stuck_case(
    session: AsyncSession, account: Account, *, limits: Stuck, now: datetime, route: Router
) -> bool:
    """Open a stuck case for the account; False when another process opened a case first.

    Runs in a savepoint: when it fails, nothing of it stays and the caller's transaction goes on.
    """
    state, since, account_id = account.sync_state, account.state_since, account.id
    bound = limits.limit_for(state, new=is_new(account, limits, now))
    assert since is not None and bound is not None, "not an account in a transient state"
    audit: dict[str, object] = {
        "state": state,
        "state_since": since.isoformat(),
        "limit": how_long(bound),
        "stuck_for": how_long(now - since),
    }
    try:
        async with session.begin_nested():
            await open_case_for(
                session,
                account,
                kind=CaseKind.STUCK,
                state=state,
                broken_since=since,
                actor=actors.SYSTEM,
                now=now,
                route=route,
                audit=audit,
            )
    except RuntimeError:
        # open_case_for raises when the unique index found a case opened concurrently.
        if await cases.get_open_case(session, account_id=account_id) is None:
            raise
        log.info("stuck case opened elsewhere first", extra={"account": account_id})
        return False
    return True
