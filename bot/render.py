"""Plain-text rendering of cases, used by the log sink and the CLI.

A case's or an incident's card (``bot.card``) renders here to terminal lines, as
``bot.slack.blocks`` renders it to Block Kit: the same facts, advice and actions.

Nothing here is Slack markup, so nothing is escaped for Slack; but outside text (emails,
provider names, states, notes) is kept to one line (``inline``), so that an email with a line
break in it cannot add a line to the log that looks like the service wrote it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from bot.card import (
    Action,
    CaseCard,
    Code,
    IncidentCard,
    Moment,
    Words,
    case_card,
    incident_card,
)
from storage.incidents import IncidentView
from storage.models import Account, Case, ReauthLink
from workflows import diagnosis
from workflows.words import plain


def inline(text: str) -> str:
    """Outside text on one line: unprintable characters (line breaks, tabs…) as escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def when(value: datetime | None) -> str:
    """Format a timestamp the same way everywhere: ISO 8601 in UTC, to the second."""
    return "-" if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def pieces(words: Words) -> str:
    """A card's sentence in plain text: people by their id, moments in UTC, every piece from
    outside kept to one line."""
    out = []
    for piece in words:
        if isinstance(piece, Moment):
            out.append(when(piece.at))
        elif isinstance(piece, Code):
            out.append(inline(piece.text))
        else:
            out.append(inline(str(piece)))
    return "".join(out)


def action_text(action: Action) -> str:
    """An action as a terminal shows it: ``[Snooze: 1 hour | 4 hours]``, ``[Resolve]``."""
    label = action.label
    if action.choices:
        label += ": " + " | ".join(choice for _, choice in action.choices)
    if action.confirm:
        label += " (asks to confirm)"
    return f"[{label}]"


def card_lines(card: CaseCard) -> list[str]:
    """A case's card as terminal lines: the header first, then the same facts, advice and
    actions as its Slack message, one line each (outside text never breaks a line)."""
    lines = [inline(card.header), f"{inline(card.who)} {inline(card.what)}."]
    width = max(len(fact.label) for fact in card.facts)
    lines += [f"  {fact.label.ljust(width)}  {pieces(fact.value)}" for fact in card.facts]
    if card.link is not None:
        lines.append(inline(plain(card.link)))
        if card.link_failure is not None:
            lines.append(inline(card.link_failure))
    if card.resolution is not None:
        lines.append(f"Resolution: {pieces(card.resolution)}")
    if card.impact is not None:
        lines.append(f"Why it matters: {inline(card.impact)}")
    if card.deadline is not None:
        lines.append(pieces(card.deadline))
    if card.duplicate is not None:
        lines.append(f"Duplicate: {pieces(card.duplicate)}")
    if card.next_step:
        lines.append(f"Next step: {inline(card.next_step)}")
    if card.causes:
        lines.append("Likely cause:")
        for cause in card.causes:
            lines.append(f"  - {_finding(cause.title)}: {_finding(cause.advice)}")
            lines += [f"    {_finding(e)}" for e in cause.evidence]
    if card.actions:
        lines.append("Actions: " + " ".join(action_text(a) for a in card.actions))
    return lines


def incident_lines(card: IncidentCard) -> list[str]:
    """An incident's card as terminal lines, like its Slack message."""
    first, *rest = [pieces(line) for line in card.summary]
    lines = [inline(card.header), f"Incident #{card.incident_id}: {first}", *rest]
    if card.unresolved is not None:
        lines.append(inline(card.unresolved))
    if card.new_members:
        lines.append("Accounts: " + ", ".join(inline(label) for label in card.new_members))
    if card.posted_members:
        posted = ", ".join(inline(label) for label, _, _ in card.posted_members)
        lines.append(f"Already posted (their own alert): {posted}")
    if card.more > 0:
        lines.append(f"and {card.more} more")
    lines += [pieces(note) for note in card.notes]
    if card.actions:
        lines.append("Actions: " + " ".join(action_text(a) for a in card.actions))
    return lines


def alert_text(case: Case, account: Account, link: ReauthLink | None = None) -> str:
    """A case's card in plain text, with what the end user did with its newest ``link``."""
    return "\n".join(card_lines(case_card(case, account, link=link)))


def _finding(text: str) -> str:
    """A finding's text: the people diagnosis mentions by id, as the card's other people."""
    return inline(diagnosis.MENTION.sub(r"@\1", text))


def thread_line(payload: Mapping[str, Any]) -> str:
    """A thread line in plain text (people by their id), then what someone typed, on one line."""
    quote = payload.get("quote")
    return inline(str(payload.get("text", "")) + (f" {quote}" if quote else ""))


def incident_text(view: IncidentView) -> str:
    """An incident's card in plain text: the storm, and where its cases are now."""
    return "\n".join(incident_lines(incident_card(view)))


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
