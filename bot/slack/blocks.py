"""Block Kit rendering: pure functions from a case and its account to a Slack message.

A case's alert is its card (``bot.card``) rendered to blocks; ``bot.render`` renders the same
card as text, so the two say the same.

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

from bot import card as cards
from bot.card import (
    Action,
    CaseCard,
    Code,
    Moment,
    Words,
    title,
)
from bot.slack import ids
from storage import actors
from storage.models import Account, ApiVersion, Case, CaseStatus, ReauthLink
from workflows.billing import restart_warning
from workflows.diagnosis import MENTION, Finding
from workflows.words import Person, Text

MAX_SECTION = 3000


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


def pieces(words: Words) -> str:
    """A card's sentence as mrkdwn: words escaped, people as mentions, moments as Slack dates
    each reader sees in their own time zone, identifiers as code."""
    out = []
    for piece in words:
        if isinstance(piece, Person):
            out.append(person(piece))
        elif isinstance(piece, Moment):
            date = slack_date(piece.at)
            out.append(f"{date} ({slack_ago(piece.at)})" if piece.ago else date)
        elif isinstance(piece, Code):
            out.append(f"`{escape(piece.text)}`")
        else:
            out.append(escape(piece))
    return "".join(out)


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
    """The alert for a case: its card (``bot.card.case_card``, which the arguments go to)."""
    card = cards.case_card(
        case,
        account,
        revoke_enabled=revoke_enabled,
        findings=findings,
        outreach=outreach,
        link=link,
    )
    return card_blocks(card, case, account)


def card_blocks(card: CaseCard, case: Case, account: Account) -> list[dict[str, Any]]:
    """A case's card as Block Kit: who, what, since when, why it matters, what to do, and
    buttons (``case`` and ``account`` word the confirmation dialogs)."""
    blocks: list[dict[str, Any]] = [
        header(card.header),
        {
            "type": "section",
            "text": {
                "type": "mrkdwn",
                "text": clip(f"*{escape(card.who)}* {escape(card.what)}.", MAX_SECTION),
            },
            "fields": [
                {"type": "mrkdwn", "text": f"*{fact.label}*\n{pieces(fact.value)}"}
                for fact in card.facts
            ],
        },
    ]
    if card.link is not None:
        elements = [{"type": "mrkdwn", "text": clip(words(card.link), MAX_SECTION)}]
        if card.link_failure is not None:
            text = clip(f"*{escape(card.link_failure)}*", MAX_SECTION)
            elements.append({"type": "mrkdwn", "text": text})
        blocks.append({"type": "context", "elements": elements})
    if card.resolution is not None:
        blocks.append(section(f"*Resolution:* {pieces(card.resolution)}"))
    if card.resolved:
        return blocks
    notes = [escape(card.impact or ""), pieces(card.deadline or ())]
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": n} for n in notes]})
    if card.duplicate is not None:
        blocks.append(section(f"*Duplicate:* {pieces(card.duplicate)}"))
    if card.next_step:
        blocks.append(
            {
                "type": "section",
                "text": {"type": "mrkdwn", "text": f"*Next step:* {escape(card.next_step)}"},
            }
        )
    blocks += diagnosis_blocks(card.causes)
    blocks.append(actions_block(card.actions, case, account))
    return blocks


def case_actions(
    case: Case,
    account: Account,
    *,
    revoke_enabled: bool,
    findings: Sequence[Finding] | None = None,
    outreach: str | None = None,
) -> dict[str, Any]:
    """The actions block of a case: the buttons that fit it as it is now."""
    offered = cards.case_actions(
        case, account, revoke_enabled=revoke_enabled, findings=findings, outreach=outreach
    )
    return actions_block(offered, case, account)


def actions_block(offered: Sequence[Action], case: Case, account: Account) -> dict[str, Any]:
    """A case's actions as a block of buttons and menus."""
    elements = [element(action, case, account) for action in offered]
    return {"type": "actions", "block_id": f"case-{case.id}", "elements": elements}


def finding_text(text: str) -> str:
    """Escape a finding's text but keep the mentions diagnosis wrote into it."""
    parts, start = [], 0
    for match in MENTION.finditer(text):
        parts += [escape(text[start : match.start()]), match.group(0)]
        start = match.end()
    return "".join([*parts, escape(text[start:])])


def diagnosis_blocks(findings: Sequence[Finding | cards.Cause]) -> list[dict[str, Any]]:
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


def element(action: Action, case: Case, account: Account) -> dict[str, Any]:
    """One action of a case's card as a button (with its confirmation) or a menu."""
    if action.choices:
        return {
            "type": "static_select",
            "action_id": action.id,
            "options": [
                {"text": {"type": "plain_text", "text": label}, "value": value}
                for value, label in action.choices
            ],
            "placeholder": {"type": "plain_text", "text": action.label},
        }
    button = _button(action.id, action.label, case, action.style)
    if action.confirm and (confirm := _confirmation(action, case, account)) is not None:
        button["confirm"] = confirm
    return button


def _confirmation(action: Action, case: Case, account: Account) -> dict[str, Any] | None:
    """The dialog Slack shows before an action that asks first."""
    who = escape(account.email or account.id)
    if action.id == ids.RETRY:
        return {
            "title": {"type": "plain_text", "text": "Restart billing?"},
            "text": {"type": "mrkdwn", "text": clip(escape(restart_warning(account)), 300)},
            "confirm": {"type": "plain_text", "text": "Retry sync"},
            "deny": {"type": "plain_text", "text": "Cancel"},
        }
    if action.id == ids.DELETE_OLD:
        kept = case.related_account_id or "the newer account"
        noun = "grant" if account.api_version == ApiVersion.V3 else "account"
        return {
            "title": {"type": "plain_text", "text": f"Delete the old {noun}?"},
            "text": {
                "type": "mrkdwn",
                "text": clip(
                    f"Nylas deletes {noun} `{escape(account.id)}` of *{who}*; "
                    f"`{escape(kept)}` stays connected. This cannot be undone.",
                    300,
                ),
            },
            "confirm": {"type": "plain_text", "text": "Delete"},
            "deny": {"type": "plain_text", "text": "Cancel"},
            "style": "danger",
        }
    if action.id == ids.REVOKE and account.api_version == ApiVersion.V2:
        return {
            "title": {"type": "plain_text", "text": "Revoke every access token?"},
            "text": {
                "type": "mrkdwn",
                "text": clip(
                    f"Every token of *{who}* stops working at once. "
                    "The end user must re-authenticate.",
                    300,
                ),
            },
            "confirm": {"type": "plain_text", "text": "Revoke"},
            "deny": {"type": "plain_text", "text": "Cancel"},
            "style": "danger",
        }
    # Deleting a v3 grant is confirmed in a modal instead (revoke_modal).
    return None


def retry_button(case: Case, account: Account) -> dict[str, Any]:
    """Retry sync of a v2 stopped account; confirmed first when it would restart billing."""
    return element(cards.retry_action(case, account), case, account)


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
    return element(cards.delete_old_action(revoke_enabled=revoke_enabled), case, account)


def revoke_button(case: Case, account: Account, *, revoke_enabled: bool) -> dict[str, Any]:
    """Revoke tokens: off unless someone may; v2 confirms in a dialog, v3 in a modal."""
    return element(cards.revoke_action(account, revoke_enabled=revoke_enabled), case, account)


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
