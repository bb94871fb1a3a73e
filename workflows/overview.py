"""The queue as one operator sees it: the cases they took on, and the open queue at a glance."""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel.ext.asyncio.session import AsyncSession

from storage import reports
from storage.models import Account, Case, CaseStatus
from storage.reports import Tally

CaseRow = tuple[Case, Account]


@dataclass(frozen=True, slots=True)
class Overview:
    mine: tuple[CaseRow, ...]  # unresolved cases the operator acknowledged, newest first
    more_mine: bool  # more of them than ``mine`` holds
    newest: tuple[CaseRow, ...]  # the newest unresolved cases, anyone's
    more_open: bool  # more unresolved cases than ``newest`` holds
    by_status: tuple[Tally, ...]  # unresolved cases per status, largest first
    by_kind: tuple[Tally, ...]  # unresolved cases per kind, largest first
    oldest_unacknowledged: CaseRow | None  # the open case that has waited longest for someone

    @property
    def open_total(self) -> int:
        return sum(t.count for t in self.by_status)


async def overview(
    session: AsyncSession, *, actor: str, mine: int = 20, newest: int = 10
) -> Overview:
    """Gather what ``actor`` (``slack:U…``) took on, and the state of the open queue."""
    own, more_own = await reports.list_open_cases(session, acknowledged_by=actor, limit=mine)
    recent, more_recent = await reports.list_open_cases(session, limit=newest)
    return Overview(
        mine=tuple(own),
        more_mine=more_own,
        newest=tuple(recent),
        more_open=more_recent,
        by_status=tuple(await reports.count_open_cases(session, by="status")),
        by_kind=tuple(await reports.count_open_cases(session, by="kind")),
        oldest_unacknowledged=await reports.oldest_open_case(session, statuses=[CaseStatus.OPEN]),
    )
