"""Block Kit rendering: pure functions from a case and its account to a Slack message.

All text that comes from outside (emails, ids, provider names, notes, Nylas' error messages)
goes through ``escape``, the one escaping function of the service, so that ``<!channel>``,
``<@U…>`` or ``<http://…|…>`` inside it can never ping anyone or pose as a link. Mentions are
written only here, from ids that look like Slack's (``mention``, ``person``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from bot.slack import ids
from storage import actors
from storage.incidents import LINKABLE_KINDS
from storage.models import Account, ApiVersion, Case, CaseKind, CaseStatus, ReauthLink
from workflows import states
from workflows.billing import billing_words, restart_warning, retry_restarts_billing
from workflows.diagnosis import MENTION, Finding
from workflows.enduser import link_line, outreach_failure
from workflows.escalation import RESEND_WINDOW
from workflows.snoozes import SNOOZE_CHOICES
from workflows.states import classify
from workflows.words import Person, Text

MAX_SECTION = 3000
# How case kinds and statuses read in Slack: the one table of each for every Slack surface
# (alerts, incidents, the home tab, /reauth), lower-cased where they run on in a sentence.
# Plain text (logs, CLI) words kinds in bot.render, the daily digest in workflows.digest.
KIND_TITLES: dict[str, str] = {
    CaseKind.REAUTH: "Needs re-authentication",
    CaseKind.STOPPED: "Sync stopped",
    CaseKind.SUPPORT: "Sync error: Nylas Support needed",
    CaseKind.STUCK: "Stuck in a transient sync state",
    CaseKind.DUPLICATE: "Duplicate account: billed twice",
    CaseKind.UNKNOWN: "Unknown account state",
}
STATUS_WORDS = {
    CaseStatus.OPEN: "Open",
    CaseStatus.ACKNOWLEDGED: "Acknowledged",
    CaseStatus.WAITING_ON_USER: "Waiting on the end user",
    CaseStatus.SNOOZED: "Snoozed",
    CaseStatus.RESOLVED: "Resolved",
}

# The button that sends the end user their link, by how they are reached.
OUTREACH_BUTTONS = {"nylas": "Email the user", "webhook": "Notify the user"}
OUTREACH_ALL_BUTTONS = {"nylas": "Email all users", "webhook": "Notify all users"}


def escape(text: str) -> str:
    """Escape mrkdwn control characters (Slack's rule: &, < and >)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def section(text: str) -> dict[str, Any]:
    """A mrkdwn section, clipped to Slack's limit."""
    return {"type": "section", "text": {"type": "mrkdwn", "text": clip(text, MAX_SECTION)}}


def context(text: str) -> dict[str, Any]:
    """A context line of mrkdwn, clipped to Slack's limit."""
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": clip(text, MAX_SECTION)}]}


def header(text: str) -> dict[str, Any]:
    """A plain-text header, clipped to Slack's 150 characters."""
    return {"type": "header", "text": {"type": "plain_text", "text": clip(text, 150)}}


def permalink(channel: str, ts: str) -> str:
    """The address of a message, which Slack opens in the reader's own workspace."""
    return f"https://slack.com/archives/{channel}/p{ts.replace('.', '')}"


def slack_date(at: datetime, fallback_format: str = "%Y-%m-%d %H:%M UTC") -> str:
    """A date each reader sees in their own time zone."""
    epoch = int(at.timestamp())
    return f"<!date^{epoch}^{{date_short_pretty}} {{time}}|{at.strftime(fallback_format)}>"


def slack_ago(at: datetime) -> str:
    """How long ago, kept current by each reader's Slack client ("3 hours ago")."""
    return f"<!date^{int(at.timestamp())}^{{ago}}|since {at.strftime('%Y-%m-%d %H:%M UTC')}>"


def deadline_note(case: Case, account: Account) -> str:
    """How long the account has been broken and, for v3, until when re-auth still helps."""
    since = case.broken_since or case.opened_at
    note = f"Broken since {slack_date(since)} ({slack_ago(since)})."
    if account.api_version == ApiVersion.V3:
        until = since + RESEND_WINDOW
        note += (
            f" Re-authenticated by {slack_date(until)} ({slack_ago(until)}), Nylas resends the "
            "notifications missed meanwhile; after that they are lost."
        )
    return note


USER_ID = re.compile(r"[UW][A-Z0-9]{2,}")
GROUP_ID = re.compile(r"S[A-Z0-9]{2,}")


def mention(user_id: str) -> str:
    """A Slack user as a mention, if ``user_id`` is shaped like one; else the id, escaped."""
    return f"<@{user_id}>" if USER_ID.fullmatch(user_id) else escape(user_id)


def person(who: Person) -> str:
    """Someone a sentence names: a mention of a Slack user or user group, else their name."""
    name = actors.name(who.id)
    if USER_ID.fullmatch(name):
        return f"<@{name}>"
    if GROUP_ID.fullmatch(name) and not actors.is_slack(who.id):
        return f"<!subteam^{name}>"
    return escape(str(who))


def words(text: Text) -> str:
    """A sentence from workflows as mrkdwn: people as mentions, every word escaped."""
    if isinstance(text, str):
        return escape(text)
    return "".join(escape(part) if isinstance(part, str) else person(part) for part in text)


def why_it_matters(case: Case, account: Account) -> str:
    if case.kind == CaseKind.DUPLICATE:
        return "Nylas bills both account ids for one mailbox until the old one is removed."
    lost = "No mail syncs and no notifications arrive until this is fixed."
    return f"{lost} {billing_words(account)}"


def title(case: Case) -> str:
    return KIND_TITLES.get(case.kind, case.kind)


def fallback_text(case: Case, account: Account) -> str:
    """The notification text (also what screen readers and old clients show)."""
    who = account.email or account.id
    state = "resolved" if case.status == CaseStatus.RESOLVED else title(case).lower()
    return escape(f"Case #{case.id}: {who}: {state}")


def alert_blocks(
    case: Case,
    account: Account,
    *,
    revoke_enabled: bool = False,
    findings: Sequence[Finding] | None = None,
    outreach: str | None = None,
    link: ReauthLink | None = None,
) -> list[dict[str, Any]]:
    """The alert for a case: who, what, since when, why it matters, what to do, and buttons.

    ``findings`` default to the diagnosis stored on the case. ``outreach`` is how end users
    are reached ("nylas", "webhook"), for the button that reaches them. ``link`` is the case's
    newest re-authentication link: the card then tells what the end user did with it.
    """
    resolved = case.status == CaseStatus.RESOLVED
    rule = classify(account.api_version, case.state or "unknown")
    who = escape(account.email or "email not known yet")
    provider = escape(account.provider or "unknown")
    heading = f"{'Resolved' if resolved else title(case)}: {account.email or account.id}"
    blocks: list[dict[str, Any]] = [
        header(heading),
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": clip(f"*{who}* {escape(rule.words)}.", MAX_SECTION),
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
    if link is not None:
        blocks.append(link_block(case, link))
    if resolved:
        blocks.append(
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": clip(
                        f"*Resolution:* {escape(case.resolution or 'resolved')}{_resolver(case)}",
                        MAX_SECTION,
                    ),
                },
            }
        )
        return blocks
    blocks.append(
        {
            "type": "context",
            "elements": [
                {"type": "mrkdwn", "text": escape(why_it_matters(case, account))},
                {"type": "mrkdwn", "text": deadline_note(case, account)},
            ],
        }
    )
    if case.kind == CaseKind.DUPLICATE and case.related_account_id:
        blocks.append(
            section(
                f"*Duplicate:* this mailbox is also connected as "
                f"`{escape(case.related_account_id)}` (the new id); "
                f"`{escape(account.id)}` is the old one."
            )
        )
    if step := states.next_step(case.kind, account.api_version, case.state):
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"*Next step:* {escape(step)}"},
            }
        )
    if findings is None:
        findings = [Finding.from_json(f) for f in case.diagnosis or []]
    blocks += diagnosis_blocks(findings)
    blocks.append(
        case_actions(
            case, account, revoke_enabled=revoke_enabled, findings=findings, outreach=outreach
        )
    )
    return blocks


def link_block(case: Case, link: ReauthLink) -> dict[str, Any]:
    """The end user's side of the case: its link, and why outreach failed if it did."""
    elements = [{"type": "mrkdwn", "text": clip(words(link_line(case, link)), MAX_SECTION)}]
    if (failure := outreach_failure(case, link)) is not None:
        elements.append({"type": "mrkdwn", "text": clip(f"*{escape(failure)}*", MAX_SECTION)})
    return {"type": "context", "elements": elements}


def case_actions(
    case: Case,
    account: Account,
    *,
    revoke_enabled: bool,
    findings: Sequence[Finding] | None = None,
    outreach: str | None = None,
) -> dict[str, Any]:
    """The actions block of a case: the buttons that fit it as it is now."""
    if findings is None:
        findings = [Finding.from_json(f) for f in case.diagnosis or []]
    ticket = case.kind == CaseKind.SUPPORT or any(f.rule == "support" for f in findings)
    elements = _buttons(
        case, account, revoke_enabled=revoke_enabled, ticket=ticket, outreach=outreach
    )
    return {"type": "actions", "block_id": f"case-{case.id}", "elements": elements}


def finding_text(text: str) -> str:
    """Escape a finding's text but keep the mentions diagnosis wrote into it."""
    parts, start = [], 0
    for match in MENTION.finditer(text):
        parts += [escape(text[start : match.start()]), match.group(0)]
        start = match.end()
    return "".join([*parts, escape(text[start:])])


def diagnosis_blocks(findings: Sequence[Finding]) -> list[dict[str, Any]]:
    """The likely causes of a case: one section of advice and one line of evidence."""
    if not findings:
        return []
    causes = [f"*{finding_text(f.title)}:* {finding_text(f.advice)}" for f in findings]
    evidence = [finding_text(e) for f in findings for e in f.evidence]
    blocks = [section("*Likely cause*\n" + "\n".join(causes))]
    if evidence:
        blocks.append(context("\n".join(evidence)))
    return blocks


def _button(action_id: str, text: str, case: Case, style: str | None = None) -> dict[str, Any]:
    button: dict[str, Any] = {
        "type": "button",
        "action_id": action_id,
        "value": str(case.id),
        "text": {"type": "plain_text", "text": text},
    }
    if style:
        button["style"] = style
    return button


def _buttons(
    case: Case,
    account: Account,
    *,
    revoke_enabled: bool,
    ticket: bool = False,
    outreach: str | None = None,
) -> list[dict[str, Any]]:
    """The actions that fit the case as it is now."""
    elements = []
    if case.acknowledged_at is None:
        elements.append(_button(ids.ACK, "Acknowledge", case, "primary"))
    if case.kind in LINKABLE_KINDS and case.status != CaseStatus.WAITING_ON_USER:
        elements.append(_button(ids.LINK, "Send re-auth link", case))
    if case.kind in LINKABLE_KINDS and outreach is not None and account.email:
        elements.append(_button(ids.SEND_LINK, OUTREACH_BUTTONS[outreach], case))
    options = [
        {"text": {"type": "plain_text", "text": choice.label}, "value": f"{case.id}:{choice.code}"}
        for choice in SNOOZE_CHOICES.values()
    ]
    elements.append(
        {
            "type": "static_select",
            "action_id": ids.SNOOZE,
            "options": options,
            "placeholder": {"type": "plain_text", "text": "Snooze"},
        }
    )
    if account.api_version == ApiVersion.V2 and case.kind == CaseKind.STOPPED:
        elements.append(retry_button(case, account))
    elif account.api_version == ApiVersion.V3:
        elements.append(_button(ids.RETRY, "Check again", case))
    if ticket:
        elements.append(_button(ids.SUPPORT_TICKET, "Support ticket", case))
    if (
        account.api_version == ApiVersion.V2
        and case.kind == CaseKind.STUCK
        and case.state == "initializing"
    ):
        elements.append(_button(ids.SEND_ONLY, "Expected (send-only)", case))
    elements.append(_button(ids.RESOLVE, "Resolve", case))
    if case.kind == CaseKind.DUPLICATE:
        elements.append(delete_old_button(case, account, revoke_enabled=revoke_enabled))
    else:
        elements.append(revoke_button(case, account, revoke_enabled=revoke_enabled))
    return elements


def retry_button(case: Case, account: Account) -> dict[str, Any]:
    """Retry sync of a v2 stopped account; confirmed first when it would restart billing."""
    button = _button(ids.RETRY, "Retry sync", case)
    if retry_restarts_billing(case, account):
        button["confirm"] = {
            "title": {"type": "plain_text", "text": "Restart billing?"},
            "text": {"type": "mrkdwn", "text": clip(escape(restart_warning(account)), 300)},
            "confirm": {"type": "plain_text", "text": "Retry sync"},
            "deny": {"type": "plain_text", "text": "Cancel"},
        }
    return button


def undo_send_only_button(case: Case) -> dict[str, Any]:
    """Take back the send-only mark of the case's account."""
    return _button(ids.UNDO_SEND_ONLY, "Undo send-only", case)


def notice_modal(title_text: str, text: str) -> dict[str, Any]:
    """A modal that only tells something, replacing the one just submitted."""
    return {
        "type": "modal",
        "title": {"type": "plain_text", "text": clip(title_text, 24)},
        "close": {"type": "plain_text", "text": "Close"},
        "blocks": [section(escape(text))],
    }


def delete_old_button(case: Case, account: Account, *, revoke_enabled: bool) -> dict[str, Any]:
    """Delete the old id of a duplicate: under the revoke permission, confirmed in a dialog."""
    if not revoke_enabled:
        return _button(ids.DELETE_OLD, "Delete old account (off)", case)
    button = _button(ids.DELETE_OLD, "Delete old account", case, "danger")
    kept = case.related_account_id or "the newer account"
    noun = "grant" if account.api_version == ApiVersion.V3 else "account"
    button["confirm"] = {
        "title": {"type": "plain_text", "text": f"Delete the old {noun}?"},
        "text": {
            "type": "mrkdwn",
            "text": clip(
                f"Nylas deletes {noun} `{escape(account.id)}` of "
                f"*{escape(account.email or account.id)}*; `{escape(kept)}` stays connected. "
                "This cannot be undone.",
                300,
            ),
        },
        "confirm": {"type": "plain_text", "text": "Delete"},
        "deny": {"type": "plain_text", "text": "Cancel"},
        "style": "danger",
    }
    return button


def revoke_button(case: Case, account: Account, *, revoke_enabled: bool) -> dict[str, Any]:
    """Revoke tokens: off unless someone may; v2 confirms in a dialog, v3 in a modal."""
    if not revoke_enabled:
        return _button(ids.REVOKE, "Revoke tokens (off)", case)
    if account.api_version == ApiVersion.V3:
        return _button(ids.REVOKE, "Delete grant", case, "danger")
    revoke = _button(ids.REVOKE, "Revoke tokens", case, "danger")
    revoke["confirm"] = {
        "title": {"type": "plain_text", "text": "Revoke every access token?"},
        "text": {
            "type": "mrkdwn",
            "text": clip(
                f"Every token of *{escape(account.email or account.id)}* stops working "
                "at once. The end user must re-authenticate.",
                300,
            ),
        },
        "confirm": {"type": "plain_text", "text": "Revoke"},
        "deny": {"type": "plain_text", "text": "Cancel"},
        "style": "danger",
    }
    return revoke


def revoke_modal(case: Case, account: Account) -> dict[str, Any]:
    """Deleting a v3 grant cannot be undone: the operator types the email back."""
    email = escape(account.email or "")
    return {
        "type": "modal",
        "callback_id": ids.REVOKE_MODAL,
        "private_metadata": str(case.id),
        "title": {"type": "plain_text", "text": "Delete the grant"},
        "submit": {"type": "plain_text", "text": "Delete"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": clip(
                        f"This deletes the Nylas grant of *{email}*: it cannot be re-authenticated "
                        "afterwards, and the end user must connect the mailbox again.",
                        MAX_SECTION,
                    ),
                },
            },
            {
                "type": "input",
                "block_id": ids.CONFIRM_BLOCK,
                "label": {"type": "plain_text", "text": "Type the email to confirm"},
                "element": {"type": "plain_text_input", "action_id": ids.CONFIRM_INPUT},
            },
        ],
    }


def resolve_modal(case: Case, account: Account) -> dict[str, Any]:
    """The modal that asks for the note a hand-resolved case is closed with."""
    who = escape(account.email or account.id)
    return {
        "type": "modal",
        "callback_id": ids.RESOLVE_MODAL,
        "private_metadata": str(case.id),
        "title": {"type": "plain_text", "text": f"Resolve case #{case.id}"[:24]},
        "submit": {"type": "plain_text", "text": "Resolve"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": clip(f"Close the case of *{who}* by hand.", MAX_SECTION),
                },
            },
            {
                "type": "input",
                "block_id": ids.NOTE_BLOCK,
                "label": {"type": "plain_text", "text": "What was done?"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": ids.NOTE_INPUT,
                    "multiline": True,
                    "max_length": 1000,
                },
            },
        ],
    }


def _resolver(case: Case) -> str:
    user = actors.slack_user(case.resolved_by or "")
    return f" (resolved by {mention(user)})" if user is not None else ""


def _status(case: Case) -> str:
    words = STATUS_WORDS.get(CaseStatus(case.status), case.status)
    if case.status == CaseStatus.SNOOZED and case.snoozed_until is not None:
        return f"{words} until {slack_date(case.snoozed_until)}"
    if case.acknowledged_by:
        by = actors.name(case.acknowledged_by)
        return (
            f"{words} (acknowledged by {mention(by)})"
            if words != "Acknowledged"
            else (f"{words} by {mention(by)}")
        )
    return words
