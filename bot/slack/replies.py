"""What ``/reauth`` answers, as Block Kit: pure functions of the data, like the alert itself."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from bot.card import STATUS_WORDS, title
from bot.slack import ids
from bot.slack.blocks import (
    MAX_SECTION,
    alert_blocks,
    case_actions,
    context,
    escape,
    mention,
    retry_button,
    revoke_button,
    section,
    slack_ago,
    slack_date,
    undo_send_only_button,
    words,
)
from storage import actors
from storage.models import Account, ApiVersion, Case, CaseEvent, CaseStatus, Mute, ReauthLink
from storage.reports import Tally
from workflows.billing import restart_warning
from workflows.cleanup import cost_words
from workflows.clock import how_long
from workflows.diagnosis import Finding
from workflows.escalation import plan
from workflows.mutes import scope_words
from workflows.policy import Escalation, Policy
from workflows.states import classify
from workflows.stats import CaseStats, OutreachFigures
from workflows.subject import ActionResult

PAGE = 10
MAX_HISTORY = 25
MAX_BLOCKS = 45  # Slack allows 50 blocks in a message; keep room for the heading


def duration(value: timedelta | None) -> str:
    return "-" if value is None else how_long(value)


def case_line(case: Case, account: Account) -> str:
    """One case in a list: number, who, what, status, since when."""
    rule = classify(account.api_version, case.state or "unknown")
    status = STATUS_WORDS.get(CaseStatus(case.status), case.status)
    return (
        f"*#{case.id}* {escape(account.email or account.id)}: {escape(rule.words)}. "
        f"{status}, opened {slack_ago(case.opened_at)}"
    )


def list_filters(
    statuses: Sequence[str],
    kinds: Sequence[str],
    domain: str | None,
    provider: str | None,
    incident: int | None = None,
) -> str:
    parts = [
        f"incident #{incident}" if incident else "",
        f"status {', '.join(statuses)}" if statuses else "",
        f"kind {', '.join(kinds)}" if kinds else "",
        f"domain {domain}" if domain else "",
        f"provider {provider}" if provider else "",
    ]
    chosen = "; ".join(p for p in parts if p)
    return f" ({escape(chosen)})" if chosen else ""


def more_value(filters: Mapping[str, Any], offset: int) -> str:
    """The "More" button's value: the filters and where the next page starts."""
    return json.dumps({**filters, "offset": offset}, separators=(",", ":"))


def case_list(
    rows: Sequence[tuple[Case, Account]],
    *,
    has_more: bool,
    offset: int,
    filters: Mapping[str, Any],
    revoke_enabled: bool = False,
    outreach: str | None = None,
) -> list[dict[str, Any]]:
    """A page of open cases; those of one incident, and those opened in a maintenance window,
    come with their own buttons, since their alerts were never posted one by one."""
    incident = filters.get("incident")
    described = list_filters(
        filters.get("statuses", ()),
        filters.get("kinds", ()),
        filters.get("domain"),
        filters.get("provider"),
        incident,
    )
    if not rows:
        empty = "No open cases" if offset == 0 else "No more open cases"
        return [section(f"{empty}{described}.")]
    first, last = offset + 1, offset + len(rows)
    blocks = [section(f"*Open cases{described}*, newest first: {first}–{last}")]
    for case, account in rows:
        blocks.append(section(case_line(case, account)))
        if incident is not None or case.muted_by is not None:
            blocks.append(
                case_actions(case, account, revoke_enabled=revoke_enabled, outreach=outreach)
            )
    if has_more:
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    {
                        "type": "button",
                        "action_id": ids.LIST_MORE,
                        "text": {"type": "plain_text", "text": "More"},
                        "value": more_value(filters, offset + len(rows)),
                    }
                ],
            }
        )
    return blocks


def _event_line(event: CaseEvent) -> str:
    user = actors.slack_user(event.actor)
    actor = mention(user) if user is not None else escape(event.actor)
    detail = event.details.get("note") or event.details.get("reason") or event.details.get("error")
    extra = f": {escape(str(detail))[:200]}" if detail else ""
    return f"{slack_date(event.at)} {actor} {escape(event.action.replace('_', ' '))}{extra}"


def case_card(
    case: Case,
    account: Account,
    history: Sequence[CaseEvent],
    *,
    revoke_enabled: bool,
    findings: Sequence[Finding] | None = None,
    outreach: str | None = None,
    link: ReauthLink | None = None,
) -> list[dict[str, Any]]:
    """The alert as it is now, with its buttons, and the case's history below.

    A send-only account's card offers to take the mark back, whatever state its case is in.
    ``link`` is the case's newest re-authentication link, as on the alert.
    """
    blocks = alert_blocks(
        case,
        account,
        revoke_enabled=revoke_enabled,
        findings=findings,
        outreach=outreach,
        link=link,
    )
    if account.send_only:
        blocks.append(
            context(
                f"{escape(account.email or account.id)} is marked send-only: it is never "
                "alerted for staying initializing."
            )
        )
        blocks.append(
            {
                "type": "actions",
                "block_id": f"send-only-{case.id}",
                "elements": [undo_send_only_button(case)],
            }
        )
    shown = list(history)[-MAX_HISTORY:]
    lines = [_event_line(e) for e in shown] or ["No history yet."]
    blocks.append({"type": "divider"})
    blocks.append(section("*History*\n" + "\n".join(lines)))
    return blocks


def revoke_prompt(case: Case, account: Account) -> list[dict[str, Any]]:
    """Revoking from the command goes through the same button, and confirmation, as the alert."""
    what = (
        "delete the grant of" if account.api_version == ApiVersion.V3 else "revoke every token of"
    )
    return [
        section(
            f"Case #{case.id}: {title(case).lower()}. To {what} "
            f"*{escape(account.email or account.id)}*, press the button and confirm."
        ),
        {
            "type": "actions",
            "block_id": f"case-{case.id}",
            "elements": [revoke_button(case, account, revoke_enabled=True)],
        },
    ]


def retry_prompt(case: Case, account: Account) -> list[dict[str, Any]]:
    """Retry sync that would restart billing goes through the alert's confirmed button."""
    return [
        section(
            f"Case #{case.id}: {escape(account.email or account.id)}. "
            f"{escape(restart_warning(account))} To retry anyway, press the button and confirm."
        ),
        {
            "type": "actions",
            "block_id": f"case-{case.id}",
            "elements": [retry_button(case, account)],
        },
    ]


def _tallies(tallies: Sequence[Tally], unknown: str) -> str:
    if not tallies:
        return "none"
    return ", ".join(f"{escape(t.key or unknown)} {t.count}" for t in tallies)


def at_risk_text(report: CaseStats, policy: Policy) -> str:
    """Billed accounts broken past the grace period, and what they cost next month."""
    grace = how_long(policy.cleanup.grace)
    text = f"Broken past the {grace} grace period: {report.past_grace}"
    cost = cost_words(policy.billing, report.past_grace)
    if cost is not None:
        text += f", cost at risk {escape(cost)} a month"
    return text


def stats(report: CaseStats, window: str, policy: Policy | None = None) -> list[dict[str, Any]]:
    share = report.fixed_without_operator_share
    fixed = "-" if share is None else f"{share:.0%} ({report.fixed_without_operator})"
    chronic = (
        ", ".join(
            f"{escape(a.email or a.account_id)} ({a.cases})" for a in report.chronic_accounts[:10]
        )
        or "none"
    )
    domains = (
        ", ".join(
            f"{escape(d.domain)} ({d.cases} cases, {d.accounts} accounts)"
            for d in report.chronic_domains[:10]
        )
        or "none"
    )
    return [
        section(
            f"*Open now: {report.open_total}*, of which still billed: {report.open_billed}\n"
            f"{at_risk_text(report, policy or Policy())}\n"
            f"By kind: {_tallies(report.open_by_kind, 'unknown')}\n"
            f"By provider: {_tallies(report.open_by_provider, 'unknown')}\n"
            f"By domain: {_tallies(report.open_by_domain, 'no email')}"
        ),
        section(
            f"*Last {window}*\n"
            f"Acknowledged: {report.acknowledged}, mean time to acknowledge "
            f"{duration(report.mean_time_to_acknowledge)}\n"
            f"Resolved: {report.resolved}, mean time to resolve "
            f"{duration(report.mean_time_to_resolve)}\n"
            f"Fixed by the end user without an operator: {fixed}\n"
            f"{outreach_text(report.outreach)}\n"
            f"Chronic accounts (3+ cases): {chronic}\n"
            f"Chronic domains: {domains}"
        ),
    ]


def outreach_text(figures: OutreachFigures) -> str:
    """The outreach figures of ``/reauth stats``: three lines, or one when there is nothing."""
    if figures.nothing:
        return "Outreach: no outreach yet"
    share = figures.fixed_share
    fixed = (
        "no end user reached"
        if share is None
        else f"{share:.0%} ({figures.fixed} of {figures.sent} end users reached)"
    )
    median = figures.median_time_to_reauthenticate
    return (
        f"Fixed after outreach: {fixed}\n"
        "Median time from the first link to re-authentication: "
        f"{'no re-authentication yet' if median is None else how_long(median)}\n"
        f"Links opened but not completed: {figures.opened_not_completed}"
    )


def _who(ids_: Sequence[str], members: Mapping[str, Sequence[str]]) -> str:
    names = []
    for entry in ids_:
        if entry.startswith("S"):
            people = ", ".join(mention(u) for u in members.get(entry, ())) or "nobody"
            names.append(f"group `{escape(entry)}` ({people})")
        else:
            names.append(mention(entry))
    return ", ".join(names)


def oncall(
    policy: Escalation,
    members: Mapping[str, Sequence[str]],
    *,
    paging: bool,
    next_due: tuple[Case, datetime] | None,
) -> list[dict[str, Any]]:
    """The policy level by level, with the people behind each group, and what comes next."""
    if not policy.levels:
        return [
            section(
                "No escalation policy is set: alerts are posted and nobody is paged. "
                "Add `[escalation]` levels to the policy file (REAUTHBOT_CONFIG)."
            )
        ]
    lines = []
    for n, level in enumerate(policy.levels, 1):
        does = []
        if level.mention:
            does.append(f"mention {_who(level.mention, members)} in the thread")
        if level.dm:
            does.append(f"message {_who(level.dm, members)}")
        if level.pagerduty:
            does.append("page PagerDuty" + ("" if paging else " (no routing key set)"))
        after = duration(level.after)
        lines.append(f"{n}. after {after} unacknowledged: {'; '.join(does) or 'nothing'}")
    rounds = len(plan(policy)) // len(policy.levels)
    repeat = f"Levels run {rounds} times in all." if rounds > 1 else "Levels run once."
    first = policy.levels[0]
    now_who = _who([*first.mention, *first.dm], members) or "PagerDuty"
    blocks = [
        section("*Escalation policy*\n" + "\n".join(lines) + f"\n{repeat}"),
        context(f"A case opened now would first reach: {now_who}."),
    ]
    if next_due is not None:
        case, due = next_due
        blocks.append(context(f"Next escalation: case #{case.id} at {slack_date(due)}."))
    return blocks


def links_blocks(result: ActionResult) -> list[dict[str, Any]]:
    """The links as CSV in code blocks the operator can copy, as many as fit one message."""
    chunks: list[str] = []
    current = ""
    for row in result.links_csv().splitlines(keepends=True):
        if len(current) + len(row) > MAX_SECTION - 8:
            chunks.append(current)
            current = ""
        current += row
    if current:
        chunks.append(current)
    shown = chunks[:MAX_BLOCKS]
    blocks = [section(words(result.words))]
    # In a code block Slack still reads <…> as links and mentions: the cells are escaped too.
    blocks += [section(f"```{escape(chunk)}```") for chunk in shown]
    if len(chunks) > len(shown):
        rows = sum(chunk.count("\n") for chunk in shown) - 1
        blocks.append(
            section(
                f"Only the first {rows} links fit in one message; the others are made too. "
                "`/reauth list --status waiting_on_user` lists their cases."
            )
        )
    return blocks


# --- maintenance windows ---------------------------------------------------------------------

MUTE_REFUSED = "You are not allowed to mute alerts: it takes the snooze permission."
UNMUTE_REFUSED = "You are not allowed to end a mute: it takes the snooze permission."


def mute_line(mute: Mute) -> str:
    """One window in force: its number, scope, end, who set it and why."""
    line = (
        f"*#{mute.id}* {escape(scope_words(mute))} until {slack_date(mute.ends_at)}, "
        f"by {mention(actors.name(mute.created_by))}"
    )
    return line + (f": {escape(mute.reason)}" if mute.reason else "")


def mute_started(mute: Mute) -> list[dict[str, Any]]:
    """The answer to a new mute."""
    return [
        section(
            f"Muted {escape(scope_words(mute))} until {slack_date(mute.ends_at)} "
            f"({how_long(mute.ends_at - mute.starts_at)}), mute #{mute.id}. New cases of it "
            "are tracked without alerts; one summary is posted when it ends."
        ),
        context(f"End it sooner with `/reauth unmute {mute.id}`."),
    ]


def mute_ended(mute: Mute) -> list[dict[str, Any]]:
    """The answer to ending a mute early."""
    return [
        section(
            f"Ended mute #{mute.id} of {escape(scope_words(mute))}; its summary is being posted "
            "to the alert channel."
        )
    ]


def mute_list(mutes: Sequence[Mute]) -> list[dict[str, Any]]:
    """The windows in force, or a line saying there are none."""
    if not mutes:
        return [section("No mutes in force: every new case is alerted.")]
    return [section("*Mutes in force*\n" + "\n".join(mute_line(m) for m in mutes))]
