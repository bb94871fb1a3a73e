"""The text of a Nylas Support ticket for a case, with what Nylas asks a ticket to include.

Nylas' guide lists it: the account id, the message id if any, timestamps, the errors seen by us
and by the end user, any custom code, and every troubleshooting step taken so far. All of it
except what the end user sees is in the case, its account and its audit log.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import actors, cases
from storage.models import Account, Case, CaseEvent
from storage.reports import MAX_CASE_NUMBER
from workflows.diagnosis import Finding, plain, refresh
from workflows.states import classify

ERROR_ACTIONS = ("retry_failed", "revoke_failed")


def iso(at: datetime | None) -> str:
    """An ISO 8601 UTC timestamp, or "unknown"."""
    if at is None:
        return "unknown"
    return at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _who(actor: str) -> str:
    user = actors.slack_user(actor)
    if user is not None:
        return f"operator {user} (Slack)"
    return {actors.SYSTEM: "reauthbot", actors.NYLAS: "Nylas webhook"}.get(actor, actor)


def _step(event: CaseEvent) -> str | None:
    """One troubleshooting step from the audit log, or None for a line that is not one."""
    d = event.details
    match event.action:
        case "retried":
            return f"Retry sync ({d.get('steps', 'retry')}); the account was then {d.get('state')}"
        case "retry_failed":
            return f"Retry sync failed: {d.get('error')}"
        case "reauth_link":
            return "Sent the end user a re-authentication link"
        case "revoked":
            return f"Revoked the account's tokens ({d.get('method', 'revoke')})"
        case "revoke_failed":
            return f"Revoking the tokens ({d.get('method', 'revoke')}) failed: {d.get('error')}"
        case "acknowledged":
            return "Acknowledged the case"
        case "snoozed":
            return f"Snoozed the case for {d.get('for')}"
        case "escalated":
            again = f", repeat {d['round']}" if d.get("round") else ""
            paged = "; PagerDuty paged" if d.get("pagerduty") else ""
            return f"Escalated to on-call (level {d.get('level')}{again}{paged})"
    return None


def _states(events: Sequence[CaseEvent]) -> list[str]:
    """Every account state the audit log recorded for the case, in order, with its trigger."""
    lines = []
    for event in events:
        state = event.details.get("state")
        if not state or event.action == "retried":  # a retry's state is listed with the step
            continue
        trigger = event.details.get("event")
        code = event.details.get("code")
        via = ", ".join(str(x) for x in (trigger, f"code {code}" if code else None) if x)
        lines.append(f"{iso(event.at)}  {state}" + (f" ({via})" if via else ""))
    return lines


def support_ticket(
    case: Case,
    account: Account,
    events: Sequence[CaseEvent],
    findings: Sequence[Finding],
    *,
    now: datetime,
) -> str:
    """Return the ticket text for Nylas Support, ready to paste."""
    state = case.state or account.sync_state or "unknown"
    words = classify(account.api_version, state).words
    errors = [f"State recorded: {line}" for line in _states(events)]
    errors += [
        f"{iso(e.at)}  {e.action.replace('_', ' ')}: {e.details.get('error')}"
        for e in events
        if e.action in ERROR_ACTIONS and e.details.get("error")
    ]
    if case.last_error:
        errors.append(f"Last error recorded by reauthbot: {case.last_error}")
    steps = [
        f"{iso(e.at)}  {_who(e.actor)}: {step}" for e in events if (step := _step(e)) is not None
    ]
    # "Nylas Support needed" is why the ticket is written; its advice is for the operator.
    causes = [f"{f.title}: {plain(f.advice)}" for f in findings if f.rule != "support"]
    since = account.state_since if account.sync_state == state else None
    lines = [
        f"Subject: Nylas {account.api_version} account {account.id} is {state}",
        "",
        f"Account ID: {account.id}",
        f"Email: {account.email or 'unknown'}",
        f"Provider: {account.provider or 'unknown'}",
        f"API version: {account.api_version}",
        "Message ID: not applicable",
        f"Problem: {state} ({words}).",
        "",
        "Timestamps (UTC):",
        f"- Broken since: {iso(case.broken_since or case.opened_at)}",
        f"- Case opened: {iso(case.opened_at)}",
        f"- In state {state} since: {iso(since)}",
        f"- Now: {iso(now)}",
        "",
        "Errors we see:",
        *[f"- {line}" for line in errors or ["none recorded"]],
        "",
        "Errors our end user sees: (add them here)",
        "",
        "Custom code: none",
        "",
        "Troubleshooting steps taken so far:",
        *[f"- {line}" for line in steps or ["none yet"]],
    ]
    if causes:
        lines += ["", "Likely causes we found:", *[f"- {c}" for c in causes]]
    lines += ["", f"Our reference: reauthbot case #{case.id}"]
    return "\n".join(lines)


async def ticket_for(session: AsyncSession, *, case_id: int, now: datetime) -> str | None:
    """Return the ticket text of a case, its diagnosis refreshed, or None if there is no case."""
    # PostgreSQL's integer ids stop here; a larger (forged) number names no case.
    if not 0 < case_id <= MAX_CASE_NUMBER:
        return None
    case = await cases.get_case(session, case_id=case_id)
    if case is None:
        return None
    account = await cases.get_account(session, account_id=case.account_id)
    if account is None:
        return None
    events = await cases.case_events(session, case_id=case_id)
    findings = await refresh(session, case=case, account=account, now=now)
    return support_ticket(case, account, events, findings, now=now)


async def hand_out(
    sessions: async_sessionmaker[AsyncSession], *, case_id: int, actor: str, now: datetime
) -> str | None:
    """Return the ticket text of a case for ``actor`` and audit that they took it."""
    async with sessions() as session, session.begin():
        text = await ticket_for(session, case_id=case_id, now=now)
        if text is None:
            return None
        case = await cases.get_case(session, case_id=case_id)
        assert case is not None
        await cases.record_event(
            session,
            actor=actor,
            action="support_ticket",
            at=now,
            case_id=case_id,
            account_id=case.account_id,
        )
    return text
