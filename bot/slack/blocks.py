"""Block Kit rendering: pure functions from a case and its account to a Slack message.

All text that comes from outside (emails, ids, provider names, notes) goes through
``escape`` so that ``<!channel>`` or ``<@U…>`` inside it can never ping anyone.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bot.slack import ids
from storage.models import Account, Case, CaseStatus
from workflows.states import classify

MAX_SECTION = 3000
KIND_TITLES = {
    "reauth": "Needs re-authentication",
    "stopped": "Sync stopped",
    "support": "Sync error: Nylas Support needed",
    "stuck": "Stuck in a transient sync state",
    "duplicate": "Duplicate account: billed twice",
    "unknown": "Unknown account state",
}
STATUS_WORDS = {
    CaseStatus.OPEN: "Open",
    CaseStatus.ACKNOWLEDGED: "Acknowledged",
    CaseStatus.WAITING_ON_USER: "Waiting on the end user",
    CaseStatus.SNOOZED: "Snoozed",
    CaseStatus.RESOLVED: "Resolved",
}


def escape(text: str) -> str:
    """Escape mrkdwn control characters (Slack's rule: &, < and >)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def slack_date(at: datetime, fallback_format: str = "%Y-%m-%d %H:%M UTC") -> str:
    """A date each reader sees in their own time zone."""
    epoch = int(at.timestamp())
    return f"<!date^{epoch}^{{date_short_pretty}} {{time}}|{at.strftime(fallback_format)}>"


def mention(user_id: str) -> str:
    return f"<@{user_id}>" if user_id.isalnum() else escape(user_id)


def why_it_matters(case: Case, account: Account) -> str:
    if case.kind == "duplicate":
        return "Nylas bills both account ids for one mailbox until the old one is removed."
    billed = account.billing_state in (None, "paid") if account.api_version == "v2" else True
    lost = "No mail syncs and no notifications arrive until this is fixed"
    return f"{lost}; Nylas still bills this account." if billed else f"{lost}."


def title(case: Case) -> str:
    return KIND_TITLES.get(case.kind, case.kind)


def fallback_text(case: Case, account: Account) -> str:
    """The notification text (also what screen readers and old clients show)."""
    who = account.email or account.id
    state = "resolved" if case.status == CaseStatus.RESOLVED else title(case).lower()
    return escape(f"Case #{case.id}: {who}: {state}")


def alert_blocks(case: Case, account: Account) -> list[dict[str, Any]]:
    """The alert for a case: who, what, since when, why it matters, what to do, and buttons."""
    resolved = case.status == CaseStatus.RESOLVED
    rule = classify(account.api_version, case.state or "unknown")
    who = escape(account.email or "email not known yet")
    provider = escape(account.provider or "unknown")
    header = f"{'Resolved' if resolved else title(case)}: {account.email or account.id}"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _clip(header, 150)}},
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": _clip(f"*{who}* {escape(rule.words)}.", MAX_SECTION),
            },
            "fields": [
                {"type": "mrkdwn", "text": f"*Account*\n`{escape(account.id)}`"},
                {
                    "type": "mrkdwn",
                    "text": f"*Provider*\n{provider} ({account.api_version})",
                },
                {"type": "mrkdwn", "text": f"*State*\n`{escape(case.state or '-')}`"},
                {"type": "mrkdwn", "text": f"*Since*\n{slack_date(case.opened_at)}"},
                {"type": "mrkdwn", "text": f"*Status*\n{_status(case)}"},
                {"type": "mrkdwn", "text": f"*Case*\n#{case.id}"},
            ],
        },
    ]
    if resolved:
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": _clip(
                        f"*Resolution:* {escape(case.resolution or 'resolved')}", MAX_SECTION
                    ),
                },
            }
        )
        return blocks
    blocks.append(
        {
            "type": "context",
            "elements": [{"type": "mrkdwn", "text": escape(why_it_matters(case, account))}],
        }
    )
    if rule.next_step:
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"*Next step:* {escape(rule.next_step)}"},
            }
        )
    buttons = []
    if case.acknowledged_at is None:
        buttons.append(
            {
                "type": "button",
                "action_id": ids.ACK,
                "value": str(case.id),
                "style": "primary",
                "text": {"type": "plain_text", "text": "Acknowledge"},
            }
        )
    if buttons:
        blocks.append({"type": "actions", "block_id": f"case-{case.id}", "elements": buttons})
    return blocks


def _status(case: Case) -> str:
    words = STATUS_WORDS.get(CaseStatus(case.status), case.status)
    if case.status == CaseStatus.ACKNOWLEDGED and case.acknowledged_by:
        by = case.acknowledged_by.removeprefix("slack:")
        return f"{words} by {mention(by)}"
    return words
