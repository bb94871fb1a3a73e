"""Block Kit rendering of an incident: one message for a storm of cases, with bulk actions."""

from __future__ import annotations

from typing import Any

from bot.slack import ids
from bot.slack.blocks import (
    KIND_TITLES,
    OUTREACH_ALL_BUTTONS,
    STATUS_WORDS,
    context,
    escape,
    header,
    mention,
    permalink,
    section,
    slack_date,
)
from storage import actors
from storage.incidents import IncidentView
from storage.models import IncidentStatus
from workflows.incidents import headline


def incident_fallback(view: IncidentView) -> str:
    """The notification text of an incident's message."""
    incident = view.incident
    state = "ended" if incident.status == IncidentStatus.ENDED else "storm"
    return escape(f"Incident #{incident.id} ({state}): {headline(incident, view.total)}")


def _tally(view: IncidentView) -> str:
    parts = [
        f"{view.by_status[status]} {words.lower()}"
        for status, words in STATUS_WORDS.items()
        if view.by_status.get(status)
    ]
    return ", ".join(parts) or "no cases"


def incident_blocks(view: IncidentView, *, outreach: str | None = None) -> list[dict[str, Any]]:
    """The incident's message: what happened, where its cases are, and bulk actions."""
    incident = view.incident
    ended = incident.status == IncidentStatus.ENDED
    title = headline(incident, view.total)
    blocks: list[dict[str, Any]] = [
        header(f"{'Ended' if ended else 'Storm'}: {title}"),
        section(
            f"*Incident #{incident.id}*: {view.total} cases, {_tally(view)}.\n"
            f"First at {slack_date(incident.first_case_at)}, "
            f"latest at {slack_date(incident.last_case_at)}."
        ),
    ]
    if ended:
        blocks.append(context(f"Ended {slack_date(incident.ended_at or incident.updated_at)}."))
        return blocks
    if view.by_kind:
        kinds = ", ".join(
            f"{n} {KIND_TITLES.get(kind, kind).lower()}"
            for kind, n in sorted(view.by_kind.items(), key=lambda kv: (-kv[1], kv[0]))
        )
        blocks.append(context(f"Unresolved: {escape(kinds)}."))
    if view.sample:
        blocks.append(section(_members(view)))
    if incident.acknowledged_by:
        by = actors.name(incident.acknowledged_by)
        blocks.append(context(f"Acknowledged by {mention(by)}."))
    if incident.sealed_at is not None:
        blocks.append(
            context(
                f"The storm was over at {slack_date(incident.sealed_at)}: new cases are posted "
                "on their own again."
            )
        )
    blocks.append(
        context(
            "Cases that joined the storm are not posted one by one: *Show cases* (or "
            f"`/reauth list --incident {incident.id}`) lists them with their own buttons."
        )
    )
    elements = [_button(ids.INCIDENT_SHOW, "Show cases", view)]
    if incident.acknowledged_at is None:
        elements.append(_button(ids.INCIDENT_ACK, "Acknowledge all", view, "primary"))
    if view.linkable:
        elements.append(_button(ids.INCIDENT_LINKS, f"Re-auth links ({view.linkable})", view))
        if outreach is not None:
            label = f"{OUTREACH_ALL_BUTTONS[outreach]} ({view.linkable})"
            elements.append(_button(ids.INCIDENT_SEND_LINKS, label, view))
    if view.retryable:
        elements.append(_button(ids.INCIDENT_RETRY, f"Retry all ({view.retryable})", view))
    blocks.append({"type": "actions", "block_id": f"incident-{incident.id}", "elements": elements})
    return blocks


def _members(view: IncidentView) -> str:
    """The first unresolved cases: new ones by name, those with their own alert linked to it."""
    new = [escape(m.label) for m in view.sample if not m.posted]
    posted = [
        f"<{permalink(m.channel or '', m.ts or '')}|{escape(m.label)}>"
        for m in view.sample
        if m.posted
    ]
    more = view.unresolved - len(view.sample)
    lines = []
    if new:
        lines.append(f"*Accounts:* {', '.join(new)}")
    if posted:
        lines.append(f"*Already posted* (their own alert): {', '.join(posted)}")
    if more > 0:
        lines.append(f"and {more} more")
    return "\n".join(lines)


def _button(
    action_id: str, text: str, view: IncidentView, style: str | None = None
) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "action_id": action_id,
        "value": str(view.incident.id),
        "text": {"type": "plain_text", "text": text},
    }
    if style:
        button["style"] = style
    return button
