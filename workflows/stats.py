"""Figures for ``/reauth stats``: what is open now, and how cases went over a recent window.

The window is ``[now - window, now]``, both ends included; "within the window" means the
timestamp in question (acknowledged, resolved or opened) falls in it. Open cases are counted as
they are at the time of the query, whatever the window.

"Fixed without an operator" is read from the audit log, as the lifecycle and the operator
actions write it. A case resolved within the window counts when all of these hold:

- it was resolved by Nylas or by polling (``resolved_by`` is ``nylas`` or ``poll``), not by an
  operator by hand (``slack:…``), nor by the state read back after an operator's retry
  (``retry``) or revoke (``revoke``);
- the state that resolved it is a recovery, not a deletion: its ``resolved`` event announced a
  healthy or transient state (``running``, ``valid``, ``partial``, …), not ``deleted``;
- no operator acted on it at any time: its audit log has none of ``acknowledged``,
  ``snoozed``, ``reauth_link``, ``retried``, ``retry_failed``, ``revoked`` or
  ``revoke_failed``. A ``refused`` event does not count (the attempt changed nothing), nor do
  automatic ones (``opened``, ``state_changed``, ``snooze_ended``, ``notify_failed``, …).

So a user who re-authenticated after an operator sent the link, or acknowledged the case, is
not counted: the operator may have been the reason.

Outreach (``OutreachFigures``), over the same window, for cases that may get a re-auth link
(``LINKABLE_KINDS``); "re-authenticated" is ``workflows.enduser.reauthenticated``:

- fixed after outreach: of the cases whose newest link was sent to the end user within the
  window, those the end user then re-authenticated;
- the median time from a case's first link to its re-authentication, over the cases
  re-authenticated within the window;
- opened but not completed: cases with a link first opened within the window that the end
  user has not re-authenticated (still open, or resolved another way).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel.ext.asyncio.session import AsyncSession

from storage import link_reports, reports
from storage.incidents import LINKABLE_KINDS
from storage.link_reports import Reauthenticated
from storage.reports import ChronicAccount, ChronicDomain, Tally
from workflows.billing import NOT_BILLED
from workflows.cleanup import count_at_risk
from workflows.enduser import AUTOMATIC_RESOLVERS, RECOVERY_WORDINGS
from workflows.policy import Cleanup
from workflows.states import V2_STATES, V3_STATES, Health

TOP = 5
CHRONIC_CASES = 3  # cases opened within the window that make an account or a domain chronic

# A case the end user re-authenticated, in SQL (workflows.enduser.reauthenticated).
REAUTHENTICATED = Reauthenticated(AUTOMATIC_RESOLVERS, RECOVERY_WORDINGS)
# Audit actions only an operator's change writes (workflows.actions).
OPERATOR_ACTIONS = (
    "acknowledged",
    "snoozed",
    "reauth_link",
    "retried",
    "retry_failed",
    "revoked",
    "revoke_failed",
)
GONE_STATES = tuple(
    sorted({s for t in (V2_STATES, V3_STATES) for s, r in t.items() if r.health is Health.GONE})
)


@dataclass(frozen=True, slots=True)
class OutreachFigures:
    """What became of the re-authentication links over a window (see the module docstring)."""

    sent: int  # re-auth cases whose newest link went out to the end user
    fixed: int  # of those, re-authenticated by the end user afterwards
    median_time_to_reauthenticate: timedelta | None  # from the first link; None when none
    opened_not_completed: int

    @property
    def fixed_share(self) -> float | None:
        """The share of cases reached that the end user fixed; None when none was reached."""
        return self.fixed / self.sent if self.sent else None

    @property
    def nothing(self) -> bool:
        """No outreach, no re-authentication after a link, and no link opened."""
        return (
            not self.sent
            and not self.opened_not_completed
            and (self.median_time_to_reauthenticate is None)
        )


NO_OUTREACH = OutreachFigures(0, 0, None, 0)


async def outreach_figures(
    session: AsyncSession, *, since: datetime, until: datetime
) -> OutreachFigures:
    """Compute the outreach figures of ``[since, until]``."""
    rule = REAUTHENTICATED
    outcome = await link_reports.outreach_outcome(
        session, since=since, until=until, kinds=LINKABLE_KINDS, rule=rule
    )
    times = await link_reports.times_to_reauthenticate(session, since=since, until=until, rule=rule)
    median = (
        timedelta(seconds=round(statistics.median(t.total_seconds() for t in times)))
        if times
        else None
    )
    opened = await link_reports.count_opened_not_completed(
        session, since=since, until=until, rule=rule
    )
    return OutreachFigures(outcome.sent, outcome.reauthenticated, median, opened)


@dataclass(frozen=True, slots=True)
class CaseStats:
    now: datetime
    window: timedelta
    open_total: int
    open_by_kind: tuple[Tally, ...]  # every kind with open cases
    open_by_provider: tuple[Tally, ...]  # the top providers, lower-cased; None: unknown
    open_by_domain: tuple[Tally, ...]  # the top email domains; None: no email known
    open_billed: int  # open cases whose account is billed
    past_grace: int  # of those, re-auth and stopped cases broken past [cleanup] grace
    acknowledged: int  # cases acknowledged within the window
    mean_time_to_acknowledge: timedelta | None  # over those, from opening; None when none
    resolved: int  # cases resolved within the window, however
    mean_time_to_resolve: timedelta | None  # over those, from opening; None when none
    fixed_without_operator: int  # of those resolved, see the module docstring
    chronic_accounts: tuple[ChronicAccount, ...]
    chronic_domains: tuple[ChronicDomain, ...]
    outreach: OutreachFigures

    @property
    def fixed_without_operator_share(self) -> float | None:
        """The share of resolved cases fixed without an operator; None when none resolved."""
        return self.fixed_without_operator / self.resolved if self.resolved else None


async def case_stats(
    session: AsyncSession,
    *,
    now: datetime,
    window: timedelta,
    top: int = TOP,
    cleanup: Cleanup | None = None,
) -> CaseStats:
    """Compute the figures of ``/reauth stats`` for the window ending at ``now``."""
    if window <= timedelta(0) or top < 1:
        raise ValueError(f"window must be positive and top at least 1, not {window}, {top}")
    since = now - window
    cleanup = cleanup or Cleanup()
    by_kind = await reports.count_open_cases(session, by="kind")
    by_provider = await reports.count_open_cases(session, by="provider")
    by_domain = await reports.count_open_cases(session, by="domain")
    acked = await reports.time_to_acknowledge(session, since=since, until=now)
    resolved = await reports.time_to_resolve(session, since=since, until=now)
    unaided = await reports.count_resolved_unaided(
        session,
        since=since,
        until=now,
        resolvers=AUTOMATIC_RESOLVERS,
        gone_states=GONE_STATES,
        operator_actions=OPERATOR_ACTIONS,
    )
    return CaseStats(
        now=now,
        window=window,
        open_total=sum(t.count for t in by_kind),
        open_by_kind=tuple(by_kind),
        open_by_provider=tuple(by_provider[:top]),
        open_by_domain=tuple(by_domain[:top]),
        open_billed=await reports.count_open_billed(session, not_billed=NOT_BILLED),
        past_grace=await count_at_risk(session, now=now, cleanup=cleanup),
        acknowledged=acked.count,
        mean_time_to_acknowledge=acked.mean,
        resolved=resolved.count,
        mean_time_to_resolve=resolved.mean,
        fixed_without_operator=unaided,
        chronic_accounts=tuple(
            await reports.chronic_accounts(session, since=since, until=now, min_cases=CHRONIC_CASES)
        ),
        chronic_domains=tuple(
            await reports.chronic_domains(session, since=since, until=now, min_cases=CHRONIC_CASES)
        ),
        outreach=await outreach_figures(session, since=since, until=now),
    )
