"""Block Kit for the alert about a Nylas webhook destination that does not deliver.

The payload is plain data from ``workflows.webhook_watch``; the id, URL and status come from
Nylas, so each is escaped here before it goes into mrkdwn.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from bot.slack.blocks import clip, context, escape, header, section, slack_date

MAX_URL = 500  # of a destination URL shown, before escaping


def webhook_notice_text(payload: Mapping[str, Any]) -> str:
    """The notification text: which destination, and whether it is resolved."""
    name = escape(clip(str(payload.get("destination_id", "")), 255))
    status = escape(clip(str(payload.get("status", "")), 32))
    if payload.get("resolved_at"):
        return f"Resolved: Nylas webhook destination {name} delivers account events again"
    return f"Nylas webhook destination {name} is {status}: account events are not delivered"


def webhook_notice_blocks(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The alert: which destination, since when, what to do; or that it is resolved."""
    name = _code(str(payload.get("destination_id", "")))
    url = _code(clip(str(payload.get("url", "")), MAX_URL))
    status = escape(clip(str(payload.get("status", "")), 32))
    version = escape(str(payload.get("api_version", "")))
    since = _when(payload.get("since"))
    resolved_at = _when(payload.get("resolved_at"))
    about = context(f"Nylas API {version} · reauthbot checks the destinations every poll interval")
    if resolved_at is not None:
        if payload.get("resolution") == "active":
            title, what = "Resolved: Nylas webhook destination active again", "is active again"
        else:
            title = "Resolved: Nylas webhook destination gone"
            what = "no longer exists or no longer delivers account events"
        was = f"was *{status}*" + (f" since {slack_date(since)}" if since else "")
        return [
            header(title),
            section(
                f"Destination {name} ({url}) {was}; it {what} ({slack_date(resolved_at)}). "
                "Account events Nylas failed to deliver meanwhile are not resent; "
                "the reconciliation poll has caught up account states."
            ),
            about,
        ]
    since_text = f" since {slack_date(since)}" if since else ""
    if payload.get("since_reported") is True:
        since_text += " (as Nylas reports it)"
    elif payload.get("since_reported") is False:
        since_text += " (when reauthbot first saw it)"
    return [
        header(f"Nylas webhook destination {clip(str(payload.get('status', '')), 32)}"),
        section(
            f"*Nylas is not delivering account events to reauthbot.* Destination {name} "
            f"({url}) is *{status}*{since_text}."
        ),
        section(
            "*What to do*\n"
            "1. Fix the endpoint so it answers `200` within 10 seconds "
            "(is the service up? does the URL reach `/nylas/webhook`?).\n"
            "2. Reactivate the destination in the Nylas Dashboard.\n"
            "While it is `failed`, Nylas does not resend what it failed to deliver; "
            "reauthbot's reconciliation poll catches up account states meanwhile."
        ),
        about,
    ]


def _code(text: str) -> str:
    """Show text from outside as inline code; a backtick in it would end the span early."""
    shown = escape(text.replace("`", "'"))
    return f"`{shown}`"


def _when(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None
