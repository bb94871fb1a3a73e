"""Storms: when many cases of one email domain (or one v3 integration) open at once.

A storm is a cause, not a coincidence. Two kinds are recognized (the ``[storms]`` policy):

- a domain storm: at least ``threshold`` unresolved cases of one email domain opened within
  ``window``: an administrator, or the domain's mail server, cut access for many at once.
  Public mail domains (gmail.com, outlook.com…) never form one: their users are unrelated.
- an integration storm: at least ``provider_threshold`` cases of v3 grants authenticated
  through one connector credential (``credential_id``, when the grant names it) or else of
  one provider, within ``window`` and spanning at least ``provider_domains`` domains: an
  outage of the provider or a broken credential. The bar is much higher, since an
  application with many grants sees ordinary expiries on each provider every day.

The cases of a storm become one incident with one message, updated in place as cases join
and recover, instead of one alert each. The cases are still tracked one by one; a case whose
own alert was not sent yet never gets one (its post is withdrawn), and a case already posted
keeps its message, is told in its thread, and is listed on the incident as already posted.
Cases of an incident do not escalate one by one: the incident does.

An incident takes new cases only while its storm lasts: once no case joined for ``window``,
or once it has been open for ``max_age``, it is sealed. Its cases stay with it, and the next
case of its domain or integration alerts on its own (and may start a new storm), so that
nobody can silence a domain for good by expiring a few grants. When the last of its cases is
resolved the incident ends and a summary is posted in its thread and to the channel. A case
joins at most one incident, its domain's first.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import actors, cases, outbox
from storage import incidents as store
from storage.cases import AuditLine
from storage.models import (
    Account,
    ApiVersion,
    Case,
    CaseStatus,
    Incident,
    IncidentScope,
    IncidentStatus,
    OutboxKind,
    domain_of,
)
from workflows import words
from workflows.clock import how_long
from workflows.domains import is_public
from workflows.policy import Storms
from workflows.subject import queue_pager_follow_up
from workflows.words import Text

log = logging.getLogger("reauthbot.incidents")

# An incident's message is updated at most this often; a queued update not due within the
# margin is certainly not being sent yet, so it will show a change made now.
SETTLE = timedelta(seconds=3)
SETTLE_MARGIN = timedelta(seconds=1)


def storm_keys(account: Account) -> list[tuple[str, str]]:
    """The groups an account's case may storm with: its domain, then its v3 integration."""
    keys: list[tuple[str, str]] = []
    domain = domain_of(account.email)
    if domain and not is_public(domain):
        keys.append((IncidentScope.DOMAIN, domain))
    if account.api_version == ApiVersion.V3:
        if account.credential_id:
            keys.append((IncidentScope.CREDENTIAL, account.credential_id))
        elif account.provider:
            keys.append((IncidentScope.INTEGRATION, account.provider.strip().lower()))
    return keys


def scope_words(incident: Incident) -> str:
    """ "at example.com", "of the google integration" or "of credential <id>"."""
    if incident.scope == IncidentScope.DOMAIN:
        return f"at {incident.key}"
    if incident.scope == IncidentScope.CREDENTIAL:
        return f"of connector credential {incident.key}"
    return f"of the {incident.key} integration"


def is_over(incident: Incident, storms: Storms, now: datetime) -> bool:
    """Whether the incident's storm is over: quiet for ``window``, or open ``max_age``."""
    return (
        now - incident.last_case_at >= storms.window or now - incident.opened_at >= storms.max_age
    )


def storm_bar(scope: str, storms: Storms) -> tuple[int, int]:
    """The cases and distinct domains a storm of ``scope`` needs."""
    if scope == IncidentScope.DOMAIN:
        return storms.threshold, 1
    return storms.provider_threshold, storms.provider_domains


def headline(incident: Incident, total: int) -> str:
    """ "37 accounts at example.com lost access in 4 min"."""
    span = incident.last_case_at - incident.first_case_at
    # A storm found by one poll lands in seconds: "in 0 min" would say it took no time.
    within = "within a minute" if span < timedelta(minutes=1) else f"in {how_long(span)}"
    noun = "account" if total == 1 else "accounts"
    return f"{total} {noun} {scope_words(incident)} lost access {within}"


def _absorbing(incident: Incident | None) -> bool:
    return (
        incident is not None
        and incident.status == IncidentStatus.OPEN
        and incident.sealed_at is None
    )


async def open_for(
    session: AsyncSession, account: Account, *, storms: Storms | None, now: datetime
) -> Incident | None:
    """The incident a case of this account would join now (locked), if any.

    An incident whose storm is over is sealed on the way: the case stands alone.
    """
    if storms is None:
        return None
    # An incident found (and locked) earlier in this transaction is still this transaction's,
    # unless this transaction ended or sealed it: a storm's cases come one after the other.
    locked: dict[tuple[str, str], Incident] = session.info.setdefault(_LOCKED, {})
    for scope, key in storm_keys(account):
        incident = locked.get((scope, key))
        if not _absorbing(incident):
            incident = await store.open_incident(session, scope=scope, key=key)
        if incident is None:
            continue
        if is_over(incident, storms, now):
            await seal(session, incident, now=now)
            locked.pop((scope, key), None)
            continue
        locked[(scope, key)] = incident
        return incident
    return None


async def seal(session: AsyncSession, incident: Incident, *, now: datetime) -> None:
    """End the incident's storm: it keeps its cases, and later ones alert on their own."""
    incident.sealed_at, incident.updated_at = now, now
    session.add(incident)
    await session.flush()
    await queue_line(
        session,
        incident,
        f"The storm is over: new cases {scope_words(incident)} are posted on their own again.",
        now,
    )
    await queue_update(session, incident, now)
    log.info("storm: incident sealed", extra={"incident": incident.id})


async def opened_into(
    session: AsyncSession, incident: Incident, case: Case, *, now: datetime
) -> None:
    """Account for a case opened straight into ``incident`` (``open_case(incident_id=…)``).

    It never had an alert of its own, so there is nothing to withdraw: its audit line is
    written with the caller's next one, and the incident's message is refreshed.
    """
    await _joined(session, incident, case, now, alert_withdrawn=False, own_alert=False)
    await _grown(session, incident, [case], now=now, new=False)


async def _joined(
    session: AsyncSession, incident: Incident, case: Case, now: datetime, **details: object
) -> None:
    """The case's audit line saying it joined the incident (written with the next flush)."""
    assert incident.id is not None and case.id is not None
    await cases.record_event(session, **joined_line(incident, case, now, **details), flush=False)


def joined_line(incident: Incident, case: Case, now: datetime, **details: object) -> AuditLine:
    """The audit line of a case joining an incident (``record_event``'s arguments)."""
    return {
        "actor": actors.SYSTEM,
        "action": "joined_incident",
        "at": now,
        "case_id": case.id,
        "account_id": case.account_id,
        "details": {"incident": incident.id, **details},
    }


async def opened_many_into(
    session: AsyncSession, incident: Incident, opened: list[Case], *, now: datetime
) -> None:
    """``opened_into`` for cases the caller opened into ``incident`` and audited itself
    (``joined_line`` with ``alert_withdrawn=False, own_alert=False``): refresh its message."""
    await _grown(session, incident, opened, now=now, new=False)


async def place(
    session: AsyncSession, case: Case, account: Account, *, storms: Storms | None, now: datetime
) -> Incident | None:
    """Put a just-opened case into a storm if it is part of one; None: it stands alone."""
    if storms is None:
        return None
    incident = await open_for(session, account, storms=storms, now=now)
    if incident is not None:
        await _join(session, incident, [case], now=now)
        return incident
    since = now - storms.window
    for scope, key in storm_keys(account):
        need_cases, need_domains = storm_bar(scope, storms)
        n, domains = await store.loose_tally(session, scope=scope, key=key, since=since)
        if n < need_cases or domains < need_domains:
            continue  # a provider's storm of few domains is theirs, not the provider's
        rows = await store.recent_loose_cases(session, scope=scope, key=key, since=since)
        loose = [case for case, _ in rows]
        first = min(c.opened_at for c in loose)
        incident = await store.create_incident(
            session, scope=scope, key=key, now=now, first_case_at=first
        )
        if incident is None:  # another process opened it first: join theirs
            incident = await store.open_incident(session, scope=scope, key=key)
            if incident is None:
                raise RuntimeError(f"incident for {scope} {key} vanished; retry")
            await _join(session, incident, [case], now=now)
            return incident
        await _join(session, incident, loose, now=now, new=True)
        log.warning(
            "storm: incident opened",
            extra={"incident": incident.id, "scope": scope, "key": key, "cases": len(loose)},
        )
        return incident
    return None


async def _join(
    session: AsyncSession,
    incident: Incident,
    joining: list[Case],
    *,
    now: datetime,
    new: bool = False,
) -> None:
    assert incident.id is not None
    for case in joining:
        assert case.id is not None
        case.incident_id = incident.id
        # The incident escalates for all of its cases.
        case.escalation_due_at = None
        withdrawn = await outbox.withdraw(session, dedupe_key=f"case:{case.id}:post", now=now)
        if withdrawn:
            case.own_alert = False
            # What was queued for its alert (an operator acted before the storm was seen)
            # has no message to go to: the incident's message stands for the case now.
            await outbox.withdraw_followups(session, case_id=case.id, now=now)
        elif case.slack_channel is not None:
            await outbox.enqueue(
                session,
                channel=case.slack_channel,
                kind=OutboxKind.THREAD,
                now=now,
                case_id=case.id,
                payload={
                    "text": f"Part of incident #{incident.id}: a storm {scope_words(incident)}."
                },
            )
        session.add(case)
        await _joined(session, incident, case, now, alert_withdrawn=withdrawn)
    await _grown(session, incident, joining, now=now, new=new)


async def _grown(
    session: AsyncSession, incident: Incident, joining: list[Case], *, now: datetime, new: bool
) -> None:
    """The incident has new cases: stretch its time span and queue its message."""
    if incident.slack_channel is None:
        incident.slack_channel = joining[0].slack_channel
    for case in joining:
        incident.first_case_at = min(incident.first_case_at, case.opened_at)
        incident.last_case_at = max(incident.last_case_at, case.opened_at)
    incident.updated_at = now
    session.add(incident)
    await session.flush()
    if new:
        await outbox.enqueue(
            session,
            channel=incident.slack_channel or "",
            kind=OutboxKind.POST,
            now=now,
            incident_id=incident.id,
            dedupe_key=f"incident:{incident.id}:post",
        )
    else:
        await queue_update(session, incident, now)


async def queue_update(session: AsyncSession, incident: Incident, now: datetime) -> None:
    """Queue the re-rendering of the incident's message, at most one per ``SETTLE``.

    During a storm cases join many times a second; the message is rendered once they settle,
    from the incident as it is then, instead of once per case.
    """
    assert incident.id is not None
    # Within a transaction, an update this one queued or found is known without asking again
    # (a storm's cases join one after the other); its end forgets it (below).
    known: dict[int, datetime] = session.info.setdefault(_UPDATES_DUE, {})
    due = known.get(incident.id)
    if due is not None and due > now + SETTLE_MARGIN:
        return
    due = await outbox.update_waiting(session, incident_id=incident.id, after=now + SETTLE_MARGIN)
    if due is not None:
        known[incident.id] = due
        return
    await outbox.enqueue(
        session,
        channel=incident.slack_channel or "",
        kind=OutboxKind.UPDATE,
        now=now,
        incident_id=incident.id,
        available_at=now + SETTLE,
    )
    known[incident.id] = now + SETTLE


# What a transaction knows of incidents without asking again: the updates of their messages
# it queued or found, and the open incidents it locked. Forgotten when it ends.
_UPDATES_DUE = "reauthbot.incident_updates_due"
_LOCKED = "reauthbot.incidents_locked"


@event.listens_for(Session, "after_soft_rollback")
def _forget_rolled_back(session: Session, previous: SessionTransaction) -> None:
    # What a rolled-back transaction (or savepoint) queued or read may be gone.
    session.info.pop(_UPDATES_DUE, None)
    session.info.pop(_LOCKED, None)


@event.listens_for(Session, "after_commit")
def _forget_committed(session: Session) -> None:
    # Once committed, the notifier may send the updates, and others may take the locks.
    session.info.pop(_UPDATES_DUE, None)
    session.info.pop(_LOCKED, None)


async def queue_line(
    session: AsyncSession, incident: Incident, text: Text, now: datetime, *, broadcast: bool = False
) -> None:
    """Queue one line in the incident's thread (plain text and the people it names)."""
    await outbox.enqueue(
        session,
        channel=incident.slack_channel or "",
        kind=OutboxKind.THREAD,
        now=now,
        incident_id=incident.id,
        payload={**words.payload(text), "broadcast": broadcast, "at": now.isoformat()},
    )


async def member_changed(session: AsyncSession, case: Case, now: datetime) -> None:
    """A case of an incident changed: refresh the incident, and end it after its last case."""
    assert case.incident_id is not None
    incident = await store.lock_incident(session, incident_id=case.incident_id)
    if incident is None or incident.status != IncidentStatus.OPEN:
        return
    incident.updated_at = now
    session.add(incident)
    await session.flush()
    if case.status == CaseStatus.RESOLVED and not await store.count_unresolved(
        session, incident_id=incident.id or 0
    ):
        incident.status, incident.ended_at = IncidentStatus.ENDED, now
        incident.escalation_due_at = None
        await queue_pager_follow_up(session, incident, now)
        await queue_line(session, incident, await summary(session, incident), now, broadcast=True)
        log.info("storm: incident ended", extra={"incident": incident.id})
    await queue_update(session, incident, now)


RESOLVER_WORDS = {
    actors.NYLAS: "recovered on their own",
    "poll": "recovered on their own (seen by polling)",
    actors.SLACK: "resolved by an operator",
    "retry": "recovered after a retry",
    "revoke": "deleted",
    "delete": "deleted",
    actors.SYSTEM: "closed by reauthbot",
}


async def summary(session: AsyncSession, incident: Incident) -> str:
    """The closing line of an incident: how many, how long, and how they were resolved."""
    rows = await store.members(session, incident_id=incident.id or 0)
    ended = incident.ended_at or incident.updated_at
    how: Counter[str] = Counter()
    for case, _ in rows:
        if case.resolution and "re-authenticated" in case.resolution:
            how["re-authenticated"] += 1
        else:
            by = actors.source(case.resolved_by or actors.SYSTEM)
            how[RESOLVER_WORDS.get(by, by)] += 1
    parts = ", ".join(f"{n} {words}" for words, n in how.most_common())
    return (
        f"Incident #{incident.id} ended: all {len(rows)} accounts {scope_words(incident)} are "
        f"resolved, {how_long(ended - incident.first_case_at)} after the first lost access"
        f" ({parts})."
    )
