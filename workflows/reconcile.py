"""Reconciliation: list every account from Nylas, compare with the stored snapshots, and
apply the differences through the same lifecycle as webhooks, so a missed webhook is caught.

Accounts are read a page at a time; only the page in hand and the set of ids seen (needed to
notice accounts that disappeared) are held in memory. Accounts missing from a *complete*
listing are treated as deleted, unless so many are missing that the listing itself is suspect.
A row Nylas lists but reauthbot cannot read or store (a 409-character email, a NUL) is skipped,
logged and counted; its id still counts as seen, so the account is not taken for deleted.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import Account, Case, domain_of
from workflows import duplicates
from workflows.billing import stopped_on_purpose
from workflows.clock import Clock
from workflows.diagnosis import refresh_opened
from workflows.events import AccountEvent
from workflows.lifecycle import Router, actor_of, apply_event, audit_of, open_case_for
from workflows.nylas import NylasClient, RemoteAccount, SkippedAccount
from workflows.policy import Storms
from workflows.states import Health, classify

log = logging.getLogger("reauthbot.reconcile")

PAGE = 500
# A listing that lacks more than this share of known accounts is not trusted to delete them.
MAX_MISSING_SHARE = 0.2


@dataclass
class ReconcileReport:
    seen: int = 0
    new: int = 0
    changed: int = 0
    missing: int = 0
    skipped: int = 0  # rows of the listing that could not be read or stored
    opened: int = 0
    resolved: int = 0
    complete: bool = False
    skipped_missing: bool = False

    def summary(self) -> str:
        text = (
            f"{self.seen} accounts checked: {self.new} new, {self.changed} changed, "
            f"{self.missing} gone; {self.opened} cases opened, {self.resolved} resolved"
        )
        if self.skipped:
            text += f"; {self.skipped} unusable rows skipped"
        if self.skipped_missing:
            text += " (missing accounts not applied: the listing looked incomplete)"
        return text


Progress = Callable[[ReconcileReport], None]


async def reconcile(
    sessions: async_sessionmaker[AsyncSession],
    nylas: NylasClient,
    *,
    clock: Clock,
    route: Router,
    progress: Progress | None = None,
    page_size: int = PAGE,
    storms: Storms | None = None,
) -> ReconcileReport:
    """Run one reconciliation pass; raises NylasError if the listing cannot be completed."""
    report = ReconcileReport()
    seen: set[str] = set()
    page: list[RemoteAccount] = []

    def skip(bad: SkippedAccount) -> None:
        report.skipped += 1
        if bad.id is not None:
            seen.add(bad.id)

    async for remote in nylas.iter_accounts(skipped=skip):
        page.append(remote)
        if len(page) >= page_size:
            await _apply_page(sessions, page, report, seen, clock=clock, route=route, storms=storms)
            page = []
            if progress:
                progress(report)
    if page:
        await _apply_page(sessions, page, report, seen, clock=clock, route=route, storms=storms)
    report.complete = True
    await _apply_missing(sessions, nylas.api_version, seen, report, clock=clock, route=route)
    if progress:
        progress(report)
    log.info("reconciliation done: %s", report.summary())
    return report


async def _flag_duplicates(
    session: AsyncSession, snapshots: list[dict[str, object]], *, now: datetime, route: Router
) -> None:
    """New accounts stored without the lifecycle may be a second id of a known mailbox."""
    by_version: dict[str, list[str]] = {}
    for row in snapshots:
        if row["email"]:
            by_version.setdefault(str(row["api_version"]), []).append(str(row["email"]))
    for version, emails in by_version.items():
        for email in await duplicates.emails_with_duplicates(
            session, emails=emails, api_version=version
        ):
            await duplicates.flag(session, email=email, api_version=version, now=now, route=route)


def _count(report: ReconcileReport, action: str) -> None:
    if action == "opened":
        report.opened += 1
    elif action == "resolved":
        report.resolved += 1


def _snapshot(remote: RemoteAccount, state: str, now: datetime) -> dict[str, object]:
    """The row of a new account, as the lifecycle would write it for its first event."""
    return {
        "id": remote.id,
        "api_version": remote.api_version,
        "email": remote.email,
        "email_domain": domain_of(remote.email),
        "provider": remote.provider,
        "sync_state": state,
        "billing_state": remote.billing_state,
        "credential_id": remote.credential_id,
        "state_at": now,
        "state_since": now,
        "first_seen_at": now,
        "updated_at": now,
        "details": {},
    }


def _poll_event(remote: RemoteAccount, state: str, now: datetime) -> AccountEvent:
    return AccountEvent(
        account_id=remote.id,
        api_version=remote.api_version,
        event_type="poll",
        state=state,
        occurred_at=now,
        source="poll",
        email=remote.email,
        provider=remote.provider,
        billing_state=remote.billing_state,
        credential_id=remote.credential_id,
    )


def _email_key(email: str | None) -> str | None:
    return email.strip().lower() if email else None


async def _plainly_new(
    session: AsyncSession, broken: list[RemoteAccount], new: list[RemoteAccount], now: datetime
) -> set[str]:
    """The ids of the new broken accounts whose case opens the plain way.

    An account stopped on purpose, or one whose email another account has (stored, or new in
    this page), goes through the whole lifecycle instead, one by one.
    """
    repeats = Counter(key for remote in new if (key := _email_key(remote.email)))
    known: set[str] = set()
    by_version: dict[str, list[str]] = {}
    for remote in broken:
        if remote.email:
            by_version.setdefault(remote.api_version, []).append(remote.email)
    for version, emails in by_version.items():
        known |= await duplicates.known_emails(session, emails=emails, api_version=version)
    plain = set()
    for remote in broken:
        key = _email_key(remote.email)
        on_purpose = stopped_on_purpose(remote)
        if not on_purpose and (key is None or (repeats[key] == 1 and key not in known)):
            plain.add(remote.id)
    return plain


async def _apply_page(
    sessions: async_sessionmaker[AsyncSession],
    page: Sequence[RemoteAccount],
    report: ReconcileReport,
    seen: set[str],
    *,
    clock: Clock,
    route: Router,
    storms: Storms | None,
) -> None:
    """Apply a page of the listing in one transaction.

    Known accounts that changed go through the lifecycle, one event each. New accounts are
    stored with one multi-row insert; a case is opened for each broken one, and the cases
    opened so are diagnosed together (a new account has no history to read one by one).
    """
    now = clock()
    async with sessions() as session, session.begin():
        ids = [remote.id for remote in page]
        stored = {
            a.id: a for a in (await session.exec(select(Account).where(col(Account.id).in_(ids))))
        }
        new = [remote for remote in page if remote.id not in stored]
        broken = [
            remote
            for remote in new
            if classify(remote.api_version, remote.sync_state or "unknown").health is Health.BROKEN
        ]
        plain = await _plainly_new(session, broken, new, now) if broken else set()
        snapshots: list[dict[str, object]] = []
        for remote in page:
            seen.add(remote.id)
            report.seen += 1
            known = stored.get(remote.id)
            state = remote.sync_state or "unknown"
            if known is None:
                report.new += 1
                if remote.id in plain or classify(remote.api_version, state).health in (
                    Health.HEALTHY,
                    Health.TRANSIENT,
                ):
                    # A new account needs a snapshot, not the whole lifecycle.
                    snapshots.append(_snapshot(remote, state, now))
                    continue
            elif known.sync_state == state and (known.email, known.billing_state) == (
                remote.email or known.email,
                remote.billing_state or known.billing_state,
            ):
                continue
            else:
                report.changed += 1
            event = _poll_event(remote, state, now)
            outcome = await apply_event(session, event, now=now, route=route, storms=storms)
            _count(report, outcome.action)
        if snapshots:
            # One multi-row insert: building ORM objects for thousands of rows costs seconds.
            await session.exec(insert(Account), params=snapshots)
            if plain:
                await _open_plain_cases(
                    session,
                    [r for r in page if r.id in plain],
                    report,
                    now=now,
                    route=route,
                    storms=storms,
                )
            healthy = [row for row in snapshots if row["id"] not in plain]
            await _flag_duplicates(session, healthy, now=now, route=route)


async def _open_plain_cases(
    session: AsyncSession,
    broken: list[RemoteAccount],
    report: ReconcileReport,
    *,
    now: datetime,
    route: Router,
    storms: Storms | None,
) -> None:
    """Open the cases of new broken accounts just stored, in listing order, as their first
    event would (see ``_plainly_new``), and diagnose those that stand alone together."""
    accounts = {
        a.id: a
        for a in await session.exec(
            select(Account).where(col(Account.id).in_([r.id for r in broken]))
        )
    }
    diagnose_later: list[tuple[Case, Account]] = []
    for remote in broken:
        account = accounts[remote.id]
        state = remote.sync_state or "unknown"
        kind = classify(remote.api_version, state).kind
        assert kind is not None
        event = _poll_event(remote, state, now)
        outcome = await open_case_for(
            session,
            account,
            kind=kind,
            state=state,
            broken_since=now,
            actor=actor_of(event),
            now=now,
            route=route,
            audit=audit_of(event),
            storms=storms,
            diagnose_later=diagnose_later,
        )
        _count(report, outcome.action)
    await refresh_opened(session, diagnose_later, now=now)


async def _apply_missing(
    sessions: async_sessionmaker[AsyncSession],
    api_version: str,
    seen: set[str],
    report: ReconcileReport,
    *,
    clock: Clock,
    route: Router,
) -> None:
    async with sessions() as session:
        stmt = select(Account.id).where(
            Account.api_version == api_version, col(Account.sync_state) != "deleted"
        )
        missing = [
            account_id for account_id in (await session.exec(stmt)) if account_id not in seen
        ]
    known = len(seen) + len(missing)
    if missing and len(missing) > max(10, MAX_MISSING_SHARE * known):
        report.skipped_missing = True
        log.error(
            "the account listing lacks %d of %d known accounts; not marking them deleted",
            len(missing),
            known,
        )
        return
    now = clock()
    for start in range(0, len(missing), PAGE):
        async with sessions() as session, session.begin():
            for account_id in missing[start : start + PAGE]:
                report.missing += 1
                event = AccountEvent(
                    account_id=account_id,
                    api_version=api_version,
                    event_type="poll",
                    state="deleted",
                    occurred_at=now,
                    source="poll",
                    details={"reason": "absent from the account listing"},
                )
                _count(report, (await apply_event(session, event, now=now, route=route)).action)
