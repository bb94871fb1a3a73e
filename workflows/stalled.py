"""Stalled links: the end user opened the re-authentication link and did not finish.

Opening a link redirects to the provider's sign-in through Nylas' hosted authentication; a
user who opened it a day ago and whose mailbox is still not connected most likely hit an error
there (a wrong account picked, consent refused, an admin policy). ``flag_stalled_links`` runs
on a schedule: each such link, if it is its case's newest, is marked ``stalled_at`` once, and
the case's thread says so (its card, re-rendered, ends its link line with the same warning).

Two replicas may sweep at once: each batch locks its links and cases with ``FOR UPDATE SKIP
LOCKED`` on PostgreSQL, and a link is flagged only while ``stalled_at`` is empty.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import actors
from storage import links as store
from storage.models import Case, ReauthLink
from workflows.enduser import STALL_AFTER, STALLED_LINE
from workflows.notify import record_change

log = logging.getLogger("reauthbot.stalled")

Sessions = async_sessionmaker[AsyncSession]


async def flag_stalled_links(sessions: Sessions, *, now: datetime, limit: int = 500) -> int:
    """Flag every link opened over a day ago whose case still waits; return how many."""
    flagged = failed = 0
    after: int | None = None
    while True:
        async with sessions() as session, session.begin():
            batch = await store.opened_and_waiting(
                session, opened_before=now - STALL_AFTER, after=after, limit=limit
            )
            for link, case in batch:
                link_id = link.id
                try:
                    async with session.begin_nested():
                        await flag(session, link, case, now=now)
                except Exception:
                    # One case's failure must not keep the others from their warning.
                    failed += 1
                    log.exception("cannot flag a stalled link", extra={"link": link_id})
                    continue
                flagged += 1
        if len(batch) < limit:
            break
        after = batch[-1][0].id
    if flagged or failed:
        log.info("stalled links flagged", extra={"flagged": flagged, "failed": failed})
    return flagged


async def flag(session: AsyncSession, link: ReauthLink, case: Case, *, now: datetime) -> None:
    """Mark the link stalled and tell the case's thread."""
    link.stalled_at = now
    session.add(link)
    await record_change(
        session,
        case,
        actor=actors.SYSTEM,
        action="link_stalled",
        now=now,
        line=STALLED_LINE,
        details={"link": link.id, "opened_at": _iso(link.first_opened_at)},
    )


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None
