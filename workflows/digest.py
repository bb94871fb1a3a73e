"""The daily digest: what is open, what waited longest, and what the last day resolved.

It is queued in the outbox as one ``notice`` message per UTC day, keyed by the date, so two
processes (or one restarted) that run the job on the same day queue it once between them. The
message is plain data (a title, a notification text and lines of plain text, anything an end
user could have typed in them unescaped); each sink renders and escapes it its own way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import outbox, reports
from storage.models import CaseKind, OutboxKind
from storage.reports import Tally
from workflows.clock import how_long
from workflows.stats import OutreachFigures, case_stats

DAY = timedelta(days=1)
# How the kinds of case read in the digest, counted ("3 need re-authentication"). The digest
# is a notice of plain lines that every sink shows, so its words live here, not in bot/.
KIND_WORDS: dict[str, str] = {
    CaseKind.REAUTH: "need re-authentication",
    CaseKind.STOPPED: "sync stopped",
    CaseKind.SUPPORT: "need Nylas Support",
    CaseKind.STUCK: "stuck in a transient state",
    CaseKind.DUPLICATE: "duplicate accounts",
    CaseKind.UNKNOWN: "unknown state",
}


@dataclass(frozen=True, slots=True)
class OldestCase:
    case_id: int
    account_id: str
    email: str | None
    age: timedelta  # from opening to the digest's time


@dataclass(frozen=True, slots=True)
class Digest:
    now: datetime
    open_total: int
    open_by_kind: tuple[Tally, ...]  # every kind with open cases, largest first
    oldest: OldestCase | None  # the unresolved case opened first; None when none is open
    resolved: int  # cases resolved within the 24 h before ``now``, however
    recovered: int  # of those, fixed without an operator (see workflows.stats)
    billed: int  # open cases whose account Nylas still bills (workflows.billing)
    outreach: OutreachFigures  # what became of the links over the last day (workflows.stats)


async def build_digest(session: AsyncSession, *, now: datetime) -> Digest:
    """Compute the digest's figures as of ``now``; "the last day" is ``[now - 24 h, now]``."""
    stats = await case_stats(session, now=now, window=DAY)
    found = await reports.oldest_open_case(session)
    oldest = None
    if found is not None:
        case, account = found
        assert case.id is not None
        oldest = OldestCase(case.id, account.id, account.email, now - case.opened_at)
    return Digest(
        now=now,
        open_total=stats.open_total,
        open_by_kind=stats.open_by_kind,
        oldest=oldest,
        resolved=stats.resolved,
        recovered=stats.fixed_without_operator,
        billed=stats.open_billed,
        outreach=stats.outreach,
    )


def digest_key(now: datetime) -> str:
    """The outbox dedupe key of the digest of ``now``'s UTC day."""
    return f"digest:{now.astimezone(UTC).date().isoformat()}"


async def queue_digest(
    sessions: async_sessionmaker[AsyncSession], *, now: datetime, channel: str
) -> bool:
    """Queue the digest of ``now``'s day for ``channel``; False if that day's is queued already."""
    async with sessions() as session, session.begin():
        digest = await build_digest(session, now=now)
        queued = await outbox.enqueue(
            session,
            channel=channel,
            kind=OutboxKind.NOTICE,
            now=now,
            payload=digest_payload(digest),
            dedupe_key=digest_key(now),
        )
    return queued is not None


def digest_payload(digest: Digest) -> dict[str, Any]:
    """The notice: a title, the notification text, and the digest in lines of plain text."""
    day = digest.now.astimezone(UTC).date().isoformat()
    cases = _count(digest.open_total, "open case")
    text = f"reauthbot daily digest: {cases}, {digest.resolved} resolved in the last 24 h"
    return {"title": f"reauthbot daily digest, {day}", "text": text, "lines": digest_lines(digest)}


def digest_lines(digest: Digest) -> list[str]:
    """The digest in plain words, one figure per line."""
    if digest.open_total:
        kinds = ", ".join(
            f"{t.count} {KIND_WORDS.get(t.key or '', t.key)}" for t in digest.open_by_kind
        )
        lines = [f"Open: {_count(digest.open_total, 'case')} ({kinds})."]
    else:
        lines = ["Open: no cases. Every tracked mailbox is syncing."]
    if digest.oldest is not None:
        oldest = digest.oldest
        who = oldest.email or "email not known"
        lines.append(
            f"Oldest open: case #{oldest.case_id}, {who} (account {oldest.account_id}), "
            f"open for {how_long(oldest.age)}."
        )
    lines.append(
        f"Resolved in the last 24 h: {digest.resolved}, of which {digest.recovered} "
        "recovered without an operator."
    )
    lines.append(outreach_line(digest.outreach))
    if digest.billed:
        lines.append(f"Still billed by Nylas: {_count(digest.billed, 'open case')}.")
    return lines


def outreach_line(figures: OutreachFigures) -> str:
    """What became of the re-authentication links over the last day, in one line."""
    if figures.nothing:
        return "Outreach in the last 24 h: no outreach yet."
    parts = []
    if (share := figures.fixed_share) is not None:
        parts.append(
            f"{figures.fixed} of {_count(figures.sent, 'end user')} reached re-authenticated "
            f"({share:.0%})"
        )
    else:
        parts.append("no end user reached")
    if (median := figures.median_time_to_reauthenticate) is not None:
        parts.append(f"median {how_long(median)} from the first link to re-authentication")
    if figures.opened_not_completed:
        parts.append(f"{figures.opened_not_completed} opened the link without re-authenticating")
    return f"Outreach in the last 24 h: {'; '.join(parts)}."


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
