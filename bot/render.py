"""Plain-text rendering of cases, used by the log sink and the CLI.

Nothing here is Slack markup, so nothing is escaped for Slack; but outside text (emails,
provider names, states, notes) is kept to one line (``inline``), so that an email with a line
break in it cannot add a line to the log that looks like the service wrote it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from storage.incidents import IncidentView
from storage.models import Account, Case, CaseKind, IncidentStatus, ReauthLink
from workflows.enduser import link_line, outreach_failure
from workflows.incidents import headline
from workflows.words import plain

# How a case kind reads in plain text (the log sink, the CLI): what the account does, after
# its email. Slack words kinds in bot.slack.blocks.KIND_TITLES.
KIND_WORDS: dict[str, str] = {
    CaseKind.REAUTH: "needs re-authentication",
    CaseKind.STOPPED: "stopped syncing",
    CaseKind.SUPPORT: "has a sync error that needs Nylas support",
    CaseKind.STUCK: "is stuck in a transient sync state",
    CaseKind.DUPLICATE: "has a duplicate account (billed twice)",
    CaseKind.UNKNOWN: "is in a state reauthbot does not know",
}


def inline(text: str) -> str:
    """Outside text on one line: unprintable characters (line breaks, tabs…) as escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def when(value: datetime | None) -> str:
    """Format a timestamp the same way everywhere: ISO 8601 in UTC, to the second."""
    return "-" if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def alert_text(case: Case, account: Account, link: ReauthLink | None = None) -> str:
    """Describe a case in one paragraph: who, what, since when, its status, and what the end
    user did with its newest re-authentication ``link``."""
    who = inline(account.email or account.id)
    what = KIND_WORDS.get(case.kind, inline(case.kind))
    provider = inline(account.provider or "unknown")
    lines = [
        f"Case #{case.id}: {who} {what}",
        f"account {inline(account.id)} ({account.api_version}, provider {provider})",
        f"state {inline(case.state or '-')} since {when(case.opened_at)}; status {case.status}",
    ]
    if link is not None:
        lines.append(inline(plain(link_line(case, link))))
        if (failure := outreach_failure(case, link)) is not None:
            lines.append(inline(failure))
    if case.resolution:
        lines.append(f"resolution: {inline(case.resolution)}")
    return "\n".join(lines)


def thread_line(payload: Mapping[str, Any]) -> str:
    """A thread line in plain text (people by their id), then what someone typed, on one line."""
    quote = payload.get("quote")
    return inline(str(payload.get("text", "")) + (f" {quote}" if quote else ""))


def incident_text(view: IncidentView) -> str:
    """Describe an incident in one paragraph: the storm, and where its cases are now."""
    incident = view.incident
    lines = [
        f"Incident #{incident.id}: {inline(headline(incident, view.total))}",
        f"{view.unresolved} of {view.total} unresolved; "
        + ", ".join(f"{n} {status}" for status, n in sorted(view.by_status.items())),
    ]
    if view.sample:
        lines.append(
            "accounts: "
            + ", ".join(
                inline(m.label) + (" (already posted)" if m.posted else "") for m in view.sample
            )
        )
    if incident.status == IncidentStatus.ENDED:
        lines.append(f"ended {when(incident.ended_at)}")
    return "\n".join(lines)


# What to do about a webhook destination that does not deliver, in plain words (the Slack
# message says the same with markup).
WEBHOOK_ADVICE = (
    "Fix the endpoint so it answers 200 within 10 seconds, then reactivate the destination in "
    "the Nylas Dashboard. While it is failed, Nylas does not resend what it failed to deliver; "
    "reauthbot's reconciliation poll catches up account states meanwhile."
)


def webhook_notice_text(payload: Mapping[str, Any]) -> str:
    """Describe a webhook destination alert in one paragraph, open or resolved."""
    destination = f"{payload.get('destination_id')} ({payload.get('url')})"
    status = payload.get("status")
    since = _parse_when(payload.get("since"))
    resolved = _parse_when(payload.get("resolved_at"))
    if resolved is None:
        return (
            f"Nylas webhook destination {destination} is {status} since {when(since)}: "
            f"account events are not delivered. {WEBHOOK_ADVICE}"
        )
    if payload.get("resolution") == "active":
        return (
            f"Resolved: Nylas webhook destination {destination} was {status} since {when(since)} "
            f"and is active again ({when(resolved)})."
        )
    return (
        f"Resolved: Nylas webhook destination {destination} ({status} since {when(since)}) no "
        f"longer exists or no longer delivers account events ({when(resolved)})."
    )


def _parse_when(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None
