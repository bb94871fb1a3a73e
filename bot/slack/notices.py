"""Block Kit for notices: messages about no one case, such as the daily digest.

A notice's payload is plain data from ``workflows``: a title, a notification text and lines
of plain text, or the facts of a webhook destination alert (payload "about"). Every part of
it is escaped, since lines may quote emails and ids.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot.slack import cleanup, webhook_notices
from bot.slack.blocks import MAX_SECTION, clip, escape, header, section
from workflows.cleanup import ABOUT as CLEANUP
from workflows.webhook_watch import ABOUT as WEBHOOK_DESTINATION

MAX_LINE = 500  # one line of a notice, before escaping
MAX_LINES = 40  # at most this many lines are shown


def notice_text(payload: Mapping[str, Any]) -> str:
    """The notification text of a notice (also what old clients and screen readers show)."""
    if payload.get("about") == WEBHOOK_DESTINATION:
        return webhook_notices.webhook_notice_text(payload)
    if payload.get("about") == CLEANUP:
        return cleanup.cleanup_text(payload)
    return escape(clip(str(payload.get("text") or payload.get("title") or "reauthbot"), 1000))


def notice_blocks(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A header with the title, then the lines as a list, in as few sections as fit."""
    if payload.get("about") == WEBHOOK_DESTINATION:
        return webhook_notices.webhook_notice_blocks(payload)
    if payload.get("about") == CLEANUP:
        return cleanup.cleanup_blocks(payload)
    title = str(payload.get("title") or "reauthbot")
    blocks: list[dict[str, Any]] = [header(title)]
    lines = [str(line) for line in payload.get("lines") or []][:MAX_LINES]
    chunk = ""
    for line in lines:
        item = f"• {escape(clip(line, MAX_LINE))}"
        if chunk and len(chunk) + 1 + len(item) > MAX_SECTION:
            blocks.append(section(chunk))
            chunk = ""
        chunk = f"{chunk}\n{item}" if chunk else item
    if chunk:
        blocks.append(section(chunk))
    return blocks
