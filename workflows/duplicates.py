"""Duplicate accounts: one mailbox connected under two account ids, billed twice.

When an end user changes their IMAP/SMTP or Exchange server settings and re-authenticates,
Nylas makes a new account id for the same mailbox; the old one stays and is billed until it
is removed. So when an account (v2) or grant (v3) appears with an email that another live
account of the same API version already has, the older one is flagged: its open case becomes
a "duplicate" case naming the newer id (or one is opened), and an operator with the
``revoke`` permission can delete it from Slack.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import actors, cases
from storage.models import Account, CaseKind
from workflows.diagnosis import refresh
from workflows.notify import record_change
from workflows.opening import Router, open_case_for

log = logging.getLogger("reauthbot.duplicates")


def _live_with_email(emails: Iterable[str], api_version: str) -> tuple[Any, ...]:
    # Compared as given and lower-cased, so that the index on the email column serves it.
    wanted = sorted({v for e in emails if e for v in (e.strip(), e.strip().lower())})
    return (
        col(Account.email).in_(wanted),
        col(Account.api_version) == api_version,
        sa.func.coalesce(col(Account.sync_state), "") != "deleted",
    )


async def emails_with_duplicates(
    session: AsyncSession, *, emails: Iterable[str], api_version: str
) -> list[str]:
    """The emails among ``emails`` that more than one live account has (lower-cased)."""
    # Counted in the database: a reconciliation asks this for every page of new accounts,
    # and building an ORM object for each of them cost more than the page's other reads.
    # Folded here, as Python lower-cases what SQLite's lower() leaves alone (non-ASCII).
    stmt = (
        select(col(Account.email), sa.func.count())
        .where(*_live_with_email(emails, api_version))
        .group_by(col(Account.email))
    )
    seen: dict[str, int] = {}
    for email, n in (await session.exec(stmt)).all():
        key = (email or "").lower()
        seen[key] = seen.get(key, 0) + n
    return sorted(email for email, n in seen.items() if n > 1)


async def known_emails(
    session: AsyncSession, *, emails: Iterable[str], api_version: str
) -> set[str]:
    """The emails among ``emails`` that a live account already has (stripped, lower-cased)."""
    stmt = select(col(Account.email)).where(*_live_with_email(emails, api_version)).distinct()
    return {(email or "").strip().lower() for email in (await session.exec(stmt)).all()}


async def flag(
    session: AsyncSession,
    *,
    email: str,
    api_version: str,
    now: datetime,
    route: Router,
    keep: str | None = None,
) -> list[str]:
    """Flag every live account with ``email`` but one; return their ids.

    The one kept is ``keep`` (the account that just showed the email) or else the newest
    (first seen last); the others are the duplicates.
    """
    rows = [
        a
        for a in (
            await session.exec(
                select(Account)
                .where(*_live_with_email([email], api_version))
                .order_by(col(Account.first_seen_at), col(Account.id))
            )
        ).all()
        if (a.email or "").lower() == email.strip().lower()
    ]
    if len(rows) < 2:
        return []
    newest = next((a for a in rows if a.id == keep), rows[-1])
    flagged = []
    for old in rows:
        if old.id == newest.id:
            continue
        if await _flag_one(session, old, newest, now=now, route=route):
            flagged.append(old.id)
    return flagged


async def _flag_one(
    session: AsyncSession, old: Account, new: Account, *, now: datetime, route: Router
) -> bool:
    words = (
        f"{new.email} is now connected as account {new.id}; this account ({old.id}) is the "
        "old one and is billed too until it is deleted."
    )
    details: dict[str, object] = {"email": new.email, "old": old.id, "new": new.id}
    case = await cases.get_open_case(session, account_id=old.id)
    if case is not None:
        if case.kind == CaseKind.DUPLICATE and case.related_account_id == new.id:
            return False
        case.kind, case.related_account_id = CaseKind.DUPLICATE, new.id
        await refresh(session, case=case, account=old, now=now)
        await record_change(
            session,
            case,
            actor=actors.SYSTEM,
            action="duplicate",
            now=now,
            line=f"Duplicate account: {words}",
            details=details,
        )
    else:
        outcome = await open_case_for(
            session,
            old,
            kind=CaseKind.DUPLICATE,
            state=old.sync_state,
            broken_since=now,
            actor=actors.SYSTEM,
            now=now,
            route=route,
            audit={**details, "event": "duplicate"},
        )
        opened = await cases.get_case(session, case_id=outcome.case_id or 0)
        assert opened is not None
        opened.related_account_id = new.id
        session.add(opened)
    log.warning("duplicate account", extra={"old": old.id, "new": new.id})
    return True
