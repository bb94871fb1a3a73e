"""Block Kit rendering of an incident: one message for a storm of cases, with bulk actions."""

from __future__ import annotations

from typing import Any

from bot.slack import ids
from bot.slack.blocks import KIND_TITLES, context, escape, header, section, slack_date
from storage.incidents import IncidentView
from storage.models import CaseStatus, IncidentStatus
from workflows.incidents import headline

STATUS_NAMES = {
    CaseStatus.OPEN: "open",
    CaseStatus.ACKNOWLEDGED: "acknowledged",
    CaseStatus.WAITING_ON_USER: "waiting on the end user",
    CaseStatus.SNOOZED: "snoozed",
    CaseStatus.RESOLVED: "resolved",
}


def incident_fallback(view: IncidentView) -> str:
    """The notification text of an incident's message."""
    incident = view.incident
    state = "ended" if incident.status == IncidentStatus.ENDED else "storm"
    return escape(f"Incident #{incident.id} ({state}): {headline(incident, view.total)}")


def _tally(view: IncidentView) -> str:
    parts = [
        f"{view.by_status[status]} {words}"
        for status, words in STATUS_NAMES.items()
        if view.by_status.get(status)
    ]
    return ", ".join(parts) or "no cases"


def incident_blocks(view: IncidentView) -> list[dict[str, Any]]:
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
        more = view.unresolved - len(view.sample)
        listed = ", ".join(escape(s) for s in view.sample)
        blocks.append(section(f"*Accounts:* {listed}" + (f" and {more} more" if more > 0 else "")))
    if incident.acknowledged_by:
        by = incident.acknowledged_by.removeprefix("slack:")
        blocks.append(context(f"Acknowledged by <@{by}>." if by.isalnum() else "Acknowledged."))
    blocks.append(context("The cases are not posted one by one; `/reauth list` shows them."))
    elements = []
    if incident.acknowledged_at is None:
        elements.append(_button(ids.INCIDENT_ACK, "Acknowledge all", view, "primary"))
    if view.linkable:
        elements.append(_button(ids.INCIDENT_LINKS, f"Re-auth links ({view.linkable})", view))
    if view.retryable:
        elements.append(_button(ids.INCIDENT_RETRY, f"Retry all ({view.retryable})", view))
    if elements:
        blocks.append(
            {"type": "actions", "block_id": f"incident-{incident.id}", "elements": elements}
        )
    return blocks


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
