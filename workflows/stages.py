"""The ingest worker's stages: a batch of account events applied in a few statements.

``workflows.ingest`` parses and enriches the deliveries of a batch; here the batch goes on,
every stage taking all of it and doing its database work in a statement per table:

1. claim: the deliveries are marked done (those another worker claimed are left out);
2. load: the accounts (locked), their open cases, and the other accounts with their emails;
3. plan: each event is decided in delivery order, in memory, exactly as ``apply_event``
   decides it: stale, recorded, not applied, unchanged, or a case to open;
4. place: the cases to open are put into the storms (incidents) taking cases, or stand alone;
5. write: the account snapshots, the new cases, the audit lines, the alerts of the cases that
   stand alone, and the incidents' refreshed messages;
6. diagnose: the findings of the cases that stand alone (they are posted with them).

A case that a maintenance window covers (``workflows.mutes``) stands alone without an alert:
it joins no storm, counts towards none, and records the window.

What is rare goes through ``apply_event`` on its own, in its place in the batch: updating or
resolving an open case, flagging a duplicate account, and the case that makes a storm (the
one that opens an incident). The stages write what came before it first, and take up what
comes after it afresh, so every event sees what the events before it did, and no stage goes
back to an earlier one. Everything runs in the caller's transaction.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from storage import cases, inbox, outbox
from storage import incidents as store
from storage import mutes as mute_store
from storage.cases import AuditLine
from storage.models import (
    Account,
    Case,
    CaseKind,
    CaseStatus,
    Incident,
    Mute,
    OutboxKind,
    built,
    domain_of,
)
from workflows import incidents
from workflows.billing import stopped_on_purpose
from workflows.diagnosis import refresh
from workflows.events import AccountEvent
from workflows.lifecycle import (
    Router,
    actor_of,
    apply_event,
    audit_of,
    is_stale,
    not_applied_line,
    other_version,
    stale_line,
    update_snapshot,
)
from workflows.mutes import matching, muted_line
from workflows.policy import Storms
from workflows.states import Health, classify

log = logging.getLogger("reauthbot.lifecycle")

# Why a v2 delivery is kept in the audit log only when there is no v2 client to re-read the
# account with (v3 mode with NYLAS_ACCEPT_V2_WEBHOOKS, or v2 credentials missing).
NOT_REREAD = (
    "a v2 delivery is applied only after re-reading the account from the Nylas v2 API, "
    "and no v2 API client is configured"
)

_ACCOUNT_COLUMNS = tuple(c.name for c in Account.__table__.columns)  # type: ignore[attr-defined]


@dataclass(slots=True)
class _Opening:
    """A case to open: for its account as the event left it."""

    position: int  # of its event in the run
    event: AccountEvent
    account: Account
    case: Case
    audit: dict[str, object]
    incident: Incident | None = None
    mute: Mute | None = None  # the maintenance window it opens in: no alert, no storm


@dataclass
class _Plan:
    """What a run of events does, decided in memory; ``stop``: the event it ends before."""

    accounts: dict[str, Account]
    new: set[str]  # accounts to insert
    changed: set[str] = field(default_factory=set)  # accounts to write back
    lines: list[AuditLine | _Opening] = field(default_factory=list)
    openings: list[_Opening] = field(default_factory=list)
    stop: int | None = None
    # The ids of ``accounts`` by lower-cased email: a batch's duplicate check looks there,
    # not through every account of the batch.
    emails: dict[str, set[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for account in self.accounts.values():
            self.emails.setdefault((account.email or "").lower(), set()).add(account.id)

    def hold(self, account: Account) -> None:
        """Keep ``account`` as the batch leaves it."""
        before = self.accounts.get(account.id)
        if before is not None:
            self.emails[(before.email or "").lower()].discard(account.id)
        self.emails.setdefault((account.email or "").lower(), set()).add(account.id)
        self.accounts[account.id] = account


@dataclass
class _Known:
    """What the load stage read: the snapshots, open cases and other holders of the emails."""

    accounts: dict[str, Account]
    open_cases: dict[str, Case]
    others: list[tuple[str, str, str]]  # (id, email, api_version) of accounts not in the batch


class Contended(RuntimeError):
    """Another worker claimed a delivery of the run: apply the deliveries one by one."""


async def apply_batch(
    session: AsyncSession,
    items: Sequence[tuple[int, AccountEvent]],
    *,
    now: datetime,
    route: Router,
    storms: Storms | None,
    step_aside: Callable[[], bool] = lambda: False,
) -> tuple[int, int]:
    """Claim and apply the ``(delivery id, event)`` items, in order, in the caller's transaction.

    Returns how many deliveries were applied and how many items were gone through: when
    ``step_aside`` says so, between runs, the rest is left pending for the next pass. Raises
    ``Contended`` when another worker claimed some of several deliveries (a delivery alone
    that was claimed is skipped).
    """
    applied = done = 0
    while done < len(items):
        if done and step_aside():
            break
        await session.flush()  # what the session holds is read from the database below
        used, ran = await _apply_run(session, items[done:], now=now, route=route, storms=storms)
        applied, done = applied + ran, done + used
    return applied, done


async def _apply_run(
    session: AsyncSession,
    items: Sequence[tuple[int, AccountEvent]],
    *,
    now: datetime,
    route: Router,
    storms: Storms | None,
) -> tuple[int, int]:
    """Apply a run of the items: the stages for all up to the first rare one, which is then
    applied alone; return how many items it went through, and how many it applied."""
    events = [event for _, event in items]
    known = await _load(session, events)
    plan = _plan(events, known, now=now, route=route)
    muting = await mute_store.active(session, now=now) if plan.openings else []
    _mute(plan.openings, muting)
    seals: list[Incident] = []
    if storms is not None and plan.openings:
        keys = [key for o in plan.openings for key in incidents.storm_keys(o.account)]
        taking = await store.absorbing(session, keys=keys)
        tallies = await _tallies(session, keys, now - storms.window)
        seals, crossing = _place(plan.openings, taking, tallies, storms, now)
        if crossing is not None:  # that case makes a storm: the run ends before it
            plan = _plan(events[:crossing], known, now=now, route=route)
            _mute(plan.openings, muting)
            seals, _ = _place(plan.openings, taking, tallies, storms, now)
            plan.stop = crossing
    used = len(events) if plan.stop is None else plan.stop + 1
    wanted = [delivery for delivery, _ in items[:used]]
    claimed = await inbox.claim_deliveries(session, delivery_ids=wanted, now=now)
    if len(claimed) < len(wanted):
        if len(wanted) > 1:
            raise Contended(f"{len(wanted) - len(claimed)} deliveries claimed by another worker")
        return 1, 0  # nothing was written: it is the other worker's
    for incident in seals:
        await incidents.seal(session, incident, now=now)
    await _write(session, plan, now=now)
    if plan.stop is not None:
        await apply_event(session, events[plan.stop], now=now, route=route, storms=storms)
    return used, used


# --- load ------------------------------------------------------------------------------------


async def _load(session: AsyncSession, events: Sequence[AccountEvent]) -> _Known:
    ids = [e.account_id for e in events]
    accounts = await cases.accounts_for_update(session, account_ids=ids)
    open_cases = await cases.open_cases_of(session, account_ids=list(accounts))
    emails = sorted({e.email for e in events if e.email})
    others = [
        row
        for row in await cases.live_accounts_with_emails(session, emails=emails)
        if row[0] not in accounts
    ]
    return _Known(accounts, open_cases, others)


async def _tallies(
    session: AsyncSession, keys: Sequence[tuple[str, str]], since: datetime
) -> dict[tuple[str, str], Counter[str | None]]:
    """The loose cases of each storm key, by email domain: a grouped count per scope."""
    tallies: dict[tuple[str, str], Counter[str | None]] = {}
    for scope in sorted({scope for scope, _ in keys}):
        wanted = sorted({key for s, key in keys if s == scope})
        found = await store.loose_by_domain(session, scope=scope, keys=wanted, since=since)
        for key, by_domain in found.items():
            tallies[(scope, key)] = by_domain
    return tallies


# --- plan ------------------------------------------------------------------------------------


def _copy(account: Account) -> Account:
    return built(Account, {name: getattr(account, name) for name in _ACCOUNT_COLUMNS})


def _plan(events: Sequence[AccountEvent], known: _Known, *, now: datetime, route: Router) -> _Plan:
    """Decide the events in order, as ``apply_event`` would, until one it must apply alone."""
    plan = _Plan(accounts=dict(known.accounts), new=set())
    open_cases = dict(known.open_cases)
    for position, event in enumerate(events):
        if not _decide(plan, open_cases, known, position, event, now=now, route=route):
            plan.stop = position
            break
    return plan


def _decide(
    plan: _Plan,
    open_cases: dict[str, Case],
    known: _Known,
    position: int,
    event: AccountEvent,
    *,
    now: datetime,
    route: Router,
) -> bool:
    """Add what ``event`` does to ``plan``; False when it is to be applied alone."""
    if event.details.get("reread") is False:
        plan.lines.append(not_applied_line(event, now, NOT_REREAD))
        return True
    before = plan.accounts.get(event.account_id)
    case = open_cases.get(event.account_id) if before is not None else None
    case_id = case.id if case is not None else None
    if before is None:
        fresh = {"id": event.account_id, "api_version": event.api_version}
        before = built(Account, {**fresh, "first_seen_at": now, "updated_at": now})
    elif before.api_version != event.api_version:
        plan.lines.append(not_applied_line(event, now, other_version(before, event), case_id))
        return True
    if is_stale(before, event):
        plan.lines.append(stale_line(before, event, now, case_id))
        return True
    account = _copy(before)
    update_snapshot(account, event, now)
    new_email = bool(account.email) and account.email != before.email
    if new_email and _may_have_duplicate(plan, known, account):
        return False  # duplicates.flag flags one of them
    audit = audit_of(event)

    def keep(line: AuditLine | _Opening | None = None) -> bool:
        if event.account_id not in plan.accounts:
            plan.new.add(event.account_id)
        plan.changed.add(event.account_id)
        plan.hold(account)
        if line is not None:
            plan.lines.append(line)
        return True

    if event.state is None:
        return keep(_line(event, "account_event", now, account.id, case_id, audit))
    rule = classify(account.api_version, event.state)
    duplicate = case is not None and case.kind == CaseKind.DUPLICATE
    if rule.health is Health.BROKEN and stopped_on_purpose(account) and not duplicate:
        if case is None:
            details = {**audit, "billing_state": account.billing_state}
            return keep(_line(event, "stopped_on_purpose", now, account.id, None, details))
        if case.busy_until is not None and case.busy_until > now:
            return keep()  # a retry's own downgrade: unchanged
        return False  # resolved as stopped on purpose
    if rule.health is Health.BROKEN:
        assert rule.kind is not None
        if case is None:
            new_case = _new_case(account, event, rule.kind, now, route)
            opening = _Opening(position, event, account, new_case, audit)
            open_cases[account.id] = opening.case
            plan.openings.append(opening)
            return keep(opening)
        kind = CaseKind.DUPLICATE if case.kind == CaseKind.DUPLICATE else rule.kind
        return (case.state == event.state and case.kind == kind) and keep()
    if case is not None and duplicate and rule.health is not Health.GONE:
        return case.state == event.state and keep()
    if case is not None:
        return (case.kind == CaseKind.STUCK and case.state == event.state) and keep()
    return keep()


def _line(
    event: AccountEvent,
    action: str,
    now: datetime,
    account_id: str,
    case_id: int | None,
    details: dict[str, object],
) -> AuditLine:
    return {
        "actor": actor_of(event),
        "action": action,
        "at": now,
        "case_id": case_id,
        "account_id": account_id,
        "details": details,
    }


def _new_case(
    account: Account, event: AccountEvent, kind: str, now: datetime, route: Router
) -> Case:
    return built(
        Case,
        {
            "account_id": account.id,
            "kind": kind,
            "state": event.state,
            "status": CaseStatus.OPEN,
            "opened_at": now,
            "updated_at": now,
            # The case records where its alert goes; the message ts is added once it is posted.
            "slack_channel": route(account.email),
            "broken_since": min(event.occurred_at, now),
            "incident_id": None,
            "own_alert": True,
        },
    )


def _may_have_duplicate(plan: _Plan, known: _Known, account: Account) -> bool:
    """Whether another live account of the API version has the email ``account`` now shows
    (``duplicates.flag`` would then flag one of them)."""
    email = (account.email or "").strip()
    wanted, folded = {email, email.lower()}, email.lower()

    def same(other_id: str, other_email: str | None, api_version: str) -> bool:
        return (
            other_id != account.id
            and other_email in wanted
            and (other_email or "").lower() == folded
            and api_version == account.api_version
        )

    if any(same(i, e, v) for i, e, v in known.others):
        return True
    held = (plan.accounts[i] for i in plan.emails.get(folded, ()))
    return any(same(a.id, a.email, a.api_version) and a.sync_state != "deleted" for a in held)


# --- place -----------------------------------------------------------------------------------


def _mute(openings: Sequence[_Opening], muting: Sequence[Mute]) -> None:
    """Mark the cases to open that a maintenance window in force covers."""
    for opening in openings:
        opening.mute = matching(muting, opening.account)
        if opening.mute is not None:
            opening.case.muted_by, opening.case.own_alert = opening.mute.id, False


def _place(
    openings: Sequence[_Opening],
    taking: dict[tuple[str, str], Incident],
    tallies: dict[tuple[str, str], Counter[str | None]],
    storms: Storms,
    now: datetime,
) -> tuple[list[Incident], int | None]:
    """Put each case to open into the incident taking its cases, as ``open_for`` would, or
    count it loose; return the incidents whose storm is over (to seal) and the position of
    the first event whose case makes a new storm (``place`` opens its incident), if any."""
    taking = dict(taking)
    seals: list[Incident] = []
    loose: dict[tuple[str, str], Counter[str | None]] = {}
    for opening in openings:
        opening.incident = None
        if opening.mute is not None:
            continue  # muted: neither joins a storm nor counts towards one
        keys = incidents.storm_keys(opening.account)
        for storm in keys:
            incident = taking.get(storm)
            if incident is None:
                continue
            if incidents.is_over(incident, storms, now):
                seals.append(incident)
                del taking[storm]
                continue
            opening.incident = incident
            break
        if opening.incident is not None:
            continue
        domain = domain_of(opening.account.email)
        for scope, key in keys:
            counted = loose.setdefault((scope, key), Counter(tallies.get((scope, key), {})))
            counted[domain] += 1
            need_cases, need_domains = incidents.storm_bar(scope, storms)
            domains = sum(1 for d, n in counted.items() if d is not None and n)
            if sum(counted.values()) >= need_cases and domains >= need_domains:
                return seals, opening.position
    return seals, None


# --- write -----------------------------------------------------------------------------------


async def _write(session: AsyncSession, plan: _Plan, *, now: datetime) -> None:
    await cases.write_accounts(
        session,
        new=[plan.accounts[i] for i in sorted(plan.new)],
        changed=[plan.accounts[i] for i in sorted(plan.changed - plan.new)],
    )
    for opening in plan.openings:
        if opening.incident is not None:
            opening.case.incident_id = opening.incident.id
            opening.case.own_alert = False
    opened = await cases.open_many(session, opening=[o.case for o in plan.openings])
    if opened < len(plan.openings):  # another worker opened one between our read and insert
        raise RuntimeError("a case was opened concurrently; retry")
    lines: list[AuditLine] = []
    for line in plan.lines:
        if isinstance(line, dict):
            lines.append(line)
            continue
        case = line.case
        lines.append(_line(line.event, "opened", now, case.account_id, case.id, line.audit))
        if line.mute is not None:
            lines.append(muted_line(line.mute, case, now))
        if line.incident is not None:
            joined = incidents.joined_line(
                line.incident, case, now, alert_withdrawn=False, own_alert=False
            )
            lines.append(joined)
    await cases.record_events(session, lines=lines)
    alone = [o for o in plan.openings if o.incident is None]
    posted = [o for o in alone if o.mute is None]
    await outbox.enqueue_many(
        session,
        kind=OutboxKind.POST,
        now=now,
        messages=[
            {
                "channel": o.case.slack_channel,
                "case_id": o.case.id,
                "dedupe_key": f"case:{o.case.id}:post",
            }
            for o in posted
        ],
    )
    into: dict[int, tuple[Incident, list[Case]]] = {}
    for opening in plan.openings:
        if opening.incident is not None:
            assert opening.incident.id is not None
            into.setdefault(opening.incident.id, (opening.incident, []))[1].append(opening.case)
    for incident, members in into.values():
        await incidents.opened_many_into(session, incident, members, now=now)
    for opening in alone:  # diagnose: the findings go out with the case's own alert
        case = cases.attach(session, opening.case)
        await refresh(session, case=case, account=opening.account, now=now)
    for opening in plan.openings:
        case = opening.case
        log.info(
            "case opened", extra={"case": case.id, "account": case.account_id, "kind": case.kind}
        )
