"""The month-end billing clean-up in Slack: its message, the **Delete** button and its modal.

The message's payload is plain data from ``workflows.cleanup``; emails and ids in it are
escaped here. The button is governed by the ``revoke`` permission (turned off while nobody is
named), and deleting takes the number of accounts typed back in a modal. The deletions run
after the modal is answered, paced; the message shows how far they are.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.web.async_client import AsyncWebClient

from bot.services import Services
from bot.slack import ids
from bot.slack.actions import (
    REVOKE_OFF,
    UNKNOWN_VIEW,
    close_view,
    open_modal,
    opened_here,
    tell,
)
from bot.slack.blocks import (
    MAX_SECTION,
    clip,
    context,
    escape,
    header,
    mention,
    notice_modal,
    section,
    slack_date,
)
from bot.slack.operator import operator_of
from storage import actors
from workflows import cleanup
from workflows.cleanup import PACE, tally_words

log = logging.getLogger("reauthbot.slack.cleanup")

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
MAX_LABEL = 320
_MORE_ROOM = 24  # "\nand 1234567 more", and some


def delete_label(count: int) -> str:
    """The button's words: "Delete 3 accounts"."""
    return f"Delete {count} account" if count == 1 else f"Delete {count} accounts"


def cleanup_text(payload: Mapping[str, Any]) -> str:
    """The notification text of the clean-up message."""
    return escape(cleanup.notice_text(dict(payload)))


def _when(raw: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(raw))
    except ValueError:
        return None


def cleanup_blocks(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The message: what would be billed next month, what it costs, and the bulk action."""
    month = str(payload.get("month", ""))
    count = int(payload.get("count") or 0)
    grace = escape(str(payload.get("grace", "")))
    ends = _when(payload.get("ends"))
    cost = payload.get("cost")
    accounts = "1 broken account" if count == 1 else f"{count} broken accounts"
    from_when = f" from {slack_date(ends)}" if ends else " next month"
    summary = (
        f"*{accounts}* broken for longer than the {grace} grace period: Nylas bills "
        f"{'it' if count == 1 else 'them'} again{from_when} unless "
        f"{'it is' if count == 1 else 'they are'} deleted."
    )
    if cost:
        summary += f"\n*Cost at risk:* {escape(str(cost))} a month."
    blocks: list[dict[str, Any]] = [
        header(f"Billing clean-up, {month}"),
        section(summary),
        section(_listed(payload)),
    ]
    started_by = payload.get("started_by")
    if started_by:
        who = mention(actors.name(str(started_by)))
        done = int(payload.get("done") or 0)
        tally = tally_words(payload.get("tally"))
        if payload.get("finished"):
            blocks.append(section(f"*Clean-up done* (confirmed by {who}): {escape(tally)}."))
        else:
            blocks.append(
                context(
                    f"Deleting, confirmed by {who}: {done} of {count} handled ({escape(tally)})."
                )
            )
        return blocks
    blocks.append(
        context(
            "Deleting cannot be undone: the end user must connect the mailbox again. Each "
            "account is read from Nylas again just before it is deleted; one that syncs again, "
            "or that Nylas no longer bills, is kept. A single case is never deleted from its "
            "own alert."
        )
    )
    blocks.append(
        {
            "type": "actions",
            "block_id": f"cleanup-{month}",
            "elements": [
                {
                    "type": "button",
                    "action_id": ids.CLEANUP_DELETE,
                    "value": month,
                    "style": "danger",
                    "text": {"type": "plain_text", "text": delete_label(count)},
                }
            ],
        }
    )
    return blocks


def _listed(payload: Mapping[str, Any]) -> str:
    """The accounts, one a line, as many as fit in a section; the rest are "and N more"."""
    rows = list(payload.get("accounts") or [])
    more = int(payload.get("more") or 0)
    lines: list[str] = []
    for index, row in enumerate(rows):
        label = escape(clip(str(row.get("label", "")), MAX_LABEL))
        since = _when(row.get("since"))
        broken = f", broken since {slack_date(since)}" if since else ""
        item = f"• {label} (case #{int(row.get('case') or 0)}){broken}"
        # Room is kept for the "and N more" line.
        if sum(len(x) + 1 for x in lines) + len(item) + _MORE_ROOM > MAX_SECTION:
            more += len(rows) - index
            break
        lines.append(item)
    if more:
        lines.append(f"and {more} more")
    return "\n".join(lines) or "No account."


def cleanup_modal(month: str, count: int) -> dict[str, Any]:
    """Deleting cannot be undone: the operator types the number of accounts back."""
    return {
        "type": "modal",
        "callback_id": ids.CLEANUP_MODAL,
        "private_metadata": month,
        "title": {"type": "plain_text", "text": "Billing clean-up"},
        "submit": {"type": "plain_text", "text": "Delete"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            section(
                f"This deletes *{count}* broken account{'' if count == 1 else 's'} in Nylas, "
                f"one every {PACE.total_seconds():g} s. It cannot be undone: their end users must "
                "connect their mailboxes again."
            ),
            {
                "type": "input",
                "block_id": ids.CONFIRM_BLOCK,
                "label": {"type": "plain_text", "text": "Type the number of accounts to confirm"},
                "element": {"type": "plain_text_input", "action_id": ids.CONFIRM_INPUT},
            },
        ],
    }


def _month(raw: Any) -> str | None:
    text = str(raw or "")
    return text if _MONTH.match(text) else None


def register(bolt: AsyncApp, services: Services) -> None:
    @bolt.action(ids.CLEANUP_DELETE)
    async def on_cleanup_delete(
        ack: AsyncAck,
        body: dict[str, Any],
        respond: AsyncRespond,
        client: AsyncWebClient,
        context: AsyncBoltContext,
    ) -> None:
        await ack()
        operator = operator_of(context)
        try:
            month = _month(body["actions"][0].get("value"))
        except (KeyError, IndexError, TypeError, AttributeError):
            month = None
        if not operator.user_id or month is None:
            await tell(respond, "This button does not name a month.")
            return
        if services.settings.policy.permissions.revoke is None:
            await tell(respond, REVOKE_OFF)
            return
        if not await operator.may("revoke"):
            refused = await cleanup.refuse(
                services.sessions, month=month, actor=operator.actor, now=services.clock()
            )
            log.info("billing clean-up refused", extra={"month": month, "user": operator.user_id})
            await tell(respond, escape(refused.message))
            return
        if services.nylas is None:
            await tell(respond, "Deleting needs the Nylas API credentials to be set.")
            return
        count = await cleanup.offered(services.sessions, month=month)
        if count is None:
            # The month matched YYYY-MM: nothing in it to escape.
            await tell(respond, f"The clean-up of {month} was started already, or never offered.")
            return
        await open_modal(services, client, body["trigger_id"], cleanup_modal(month, count))

    @bolt.view(ids.CLEANUP_MODAL)
    async def on_cleanup_submitted(
        ack: AsyncAck, view: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        try:
            month = _month(view["private_metadata"])
            typed = view["state"]["values"][ids.CONFIRM_BLOCK][ids.CONFIRM_INPUT].get("value") or ""
        except (KeyError, TypeError):
            month = None
        if month is None:
            await ack(response_action="errors", errors={ids.CONFIRM_BLOCK: "This form is broken."})
            return
        if not await opened_here(services, view):
            await ack(response_action="errors", errors={ids.CONFIRM_BLOCK: UNKNOWN_VIEW})
            return
        operator, now, nylas = operator_of(context), services.clock(), services.nylas
        allowed = services.settings.policy.permissions.revoke is not None and await operator.may(
            "revoke"
        )
        if not allowed or nylas is None:
            refused = await cleanup.refuse(
                services.sessions, month=month, actor=operator.actor, now=now
            )
            await ack(response_action="errors", errors={ids.CONFIRM_BLOCK: refused.message})
            return
        started = await cleanup.confirm(
            services.sessions, month=month, actor=operator.actor, now=now, typed=typed
        )
        if not isinstance(started, cleanup.Deletion):
            await ack(response_action="errors", errors={ids.CONFIRM_BLOCK: started.message[:150]})
            return
        count = len(started.case_ids)
        await ack(
            response_action="update",
            view=notice_modal(
                "Billing clean-up",
                f"Deleting {count} accounts, one every {PACE.total_seconds():g} s. The clean-up "
                "message shows how far it is, and each case's alert says what became of it.",
            ),
        )
        await close_view(services, view)
        log.info(
            "billing clean-up started",
            extra={"month": month, "user": operator.user_id, "accounts": count},
        )
        await cleanup.run_deletion(services.sessions, nylas, started, clock=services.clock)
