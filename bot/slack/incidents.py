"""Block Kit rendering of an incident: one message for a storm of cases, with bulk actions."""

from __future__ import annotations

from typing import Any

from bot import card as cards
from bot.card import IncidentCard
from bot.slack.blocks import (
    context,
    escape,
    header,
    permalink,
    pieces,
    section,
)
from storage.incidents import IncidentView
from storage.models import IncidentStatus
from workflows.incidents import headline


def incident_fallback(view: IncidentView) -> str:
    """The notification text of an incident's message."""
    incident = view.incident
    state = "ended" if incident.status == IncidentStatus.ENDED else "storm"
    return escape(f"Incident #{incident.id} ({state}): {headline(incident, view.total)}")


def incident_blocks(view: IncidentView, *, outreach: str | None = None) -> list[dict[str, Any]]:
    """The incident's message: its card (``bot.card.incident_card``) as Block Kit."""
    return card_blocks(cards.incident_card(view, outreach=outreach))


def card_blocks(card: IncidentCard) -> list[dict[str, Any]]:
    """An incident's card as Block Kit: what happened, where its cases are, bulk actions."""
    blocks: list[dict[str, Any]] = [
        header(card.header),
        section("\n".join(_summary(card))),
    ]
    if card.ended:
        blocks += [context(pieces(note)) for note in card.notes]
        return blocks
    if card.unresolved is not None:
        blocks.append(context(escape(card.unresolved)))
    if card.new_members or card.posted_members:
        blocks.append(section(_members(card)))
    blocks += [context(pieces(note)) for note in card.notes]
    blocks.append(
        context(
            "Cases that joined the storm are not posted one by one: *Show cases* (or "
            f"`/reauth list --incident {card.incident_id}`) lists them with their own buttons."
        )
    )
    elements = [_button(a.id, a.label, card, a.style) for a in card.actions]
    blocks.append(
        {"type": "actions", "block_id": f"incident-{card.incident_id}", "elements": elements}
    )
    return blocks


def _summary(card: IncidentCard) -> list[str]:
    first, *rest = [pieces(line) for line in card.summary]
    return [f"*Incident #{card.incident_id}*: {first}", *rest]


def _members(card: IncidentCard) -> str:
    """The first unresolved cases: new ones by name, those with their own alert linked to it."""
    new = [escape(label) for label in card.new_members]
    posted = [
        f"<{permalink(channel, ts)}|{escape(label)}>" for label, channel, ts in card.posted_members
    ]
    lines = []
    if new:
        lines.append(f"*Accounts:* {', '.join(new)}")
    if posted:
        lines.append(f"*Already posted* (their own alert): {', '.join(posted)}")
    if card.more > 0:
        lines.append(f"and {card.more} more")
    return "\n".join(lines)


def _button(
    action_id: str, text: str, card: IncidentCard, style: str | None = None
) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "action_id": action_id,
        "value": str(card.incident_id),
        "text": {"type": "plain_text", "text": text},
    }
    if style:
        button["style"] = style
    return button
