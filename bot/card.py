"""What an alert says, whatever shows it: one model of a case's or an incident's card.

A card is built once, from the case, its account, its diagnosis and its newest re-auth link
(or from an incident's tally), and rendered twice: to Block Kit by ``bot.slack.blocks`` and
``bot.slack.incidents``, and to terminal lines by ``bot.render`` (the log in local mode,
``reauthbot preview``). So the two never disagree on the facts or the actions a card offers.

Nothing here is markup. A sentence is a tuple of pieces: words, people (``Person``), moments
(``Moment``) and identifiers (``Code``); only a renderer escapes the words, turns people into
mentions or names, and formats moments for its medium.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from bot.slack import ids
from storage import actors
from storage.incidents import LINKABLE_KINDS, IncidentView
from storage.models import (
    Account,
    ApiVersion,
    Case,
    CaseKind,
    CaseStatus,
    IncidentStatus,
    ReauthLink,
)
from workflows import states
from workflows.billing import billing_words, retry_restarts_billing
from workflows.diagnosis import Finding
from workflows.enduser import link_line, outreach_failure
from workflows.escalation import RESEND_WINDOW
from workflows.incidents import headline
from workflows.snoozes import SNOOZE_CHOICES
from workflows.words import Person, Text

# How case kinds and statuses read on a card: the one table of each for every surface (Slack,
# the log, the CLI), lower-cased where they run on in a sentence. The daily digest words kinds
# in workflows.digest.
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

LOST = "No mail syncs and no notifications arrive until this is fixed."
RESOLVED_WORDS = "no longer needs attention: the case is resolved"
DUPLICATE_BILLING = "Nylas bills both account ids for one mailbox until the old one is removed."


@dataclass(frozen=True, slots=True)
class Moment:
    """A point in time; ``ago`` also says how long ago, where the medium keeps that current."""

    at: datetime
    ago: bool = False


@dataclass(frozen=True, slots=True)
class Code:
    """An identifier or a raw state, shown verbatim."""

    text: str


Piece = str | Person | Moment | Code
Words = tuple[Piece, ...]


@dataclass(frozen=True, slots=True)
class Fact:
    """One labelled fact of a card: "Account", "Since", "Status"…"""

    label: str
    value: Words


@dataclass(frozen=True, slots=True)
class Action:
    """Something a card offers to do: a button, or a menu when it has ``choices``.

    ``id`` is the Slack action id (``bot.slack.ids``); ``confirm`` says that it asks first.
    """

    id: str
    label: str
    style: str | None = None
    confirm: bool = False
    choices: tuple[tuple[str, str], ...] = ()  # (value, label)


@dataclass(frozen=True, slots=True)
class Cause:
    """A likely cause from diagnosis: what it is, what to do, and what shows it.

    Diagnosis may name Slack users in these texts (``workflows.diagnosis.MENTION``).
    """

    title: str
    advice: str
    evidence: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CaseCard:
    """A case's alert: who, what, since when, why it matters, what to do, and the actions."""

    case_id: int | None
    resolved: bool
    header: str
    who: str  # the email, or that it is not known yet
    what: str  # what the account's state means, as a phrase
    facts: tuple[Fact, ...]
    link: Text | None = None  # what the end user did with the newest re-auth link
    link_failure: str | None = None
    resolution: Words | None = None
    impact: str | None = None  # why it matters: what is lost, and billing
    deadline: Words | None = None
    duplicate: Words | None = None
    next_step: str | None = None
    causes: tuple[Cause, ...] = ()
    actions: tuple[Action, ...] = ()


@dataclass(frozen=True, slots=True)
class IncidentCard:
    """An incident's message: the storm, where its cases are, and the bulk actions."""

    incident_id: int | None
    ended: bool
    header: str
    summary: tuple[Words, ...]  # lines, the first after the incident's number
    unresolved: str | None = None  # the unresolved cases by kind
    notes: tuple[Words, ...] = ()
    new_members: tuple[str, ...] = ()  # unresolved accounts without an alert of their own
    posted_members: tuple[tuple[str, str, str], ...] = ()  # (label, channel, ts)
    more: int = 0
    actions: tuple[Action, ...] = ()


def title(case: Case) -> str:
    """What a case is about, as a title."""
    return KIND_TITLES.get(case.kind, case.kind)


def case_card(
    case: Case,
    account: Account,
    *,
    revoke_enabled: bool = False,
    findings: Sequence[Finding] | None = None,
    outreach: str | None = None,
    link: ReauthLink | None = None,
) -> CaseCard:
    """The card of a case as it is now.

    ``findings`` default to the diagnosis stored on the case. ``outreach`` is how end users
    are reached ("nylas", "webhook"), for the action that reaches them. ``link`` is the case's
    newest re-authentication link: the card then tells what the end user did with it.
    """
    resolved = case.status == CaseStatus.RESOLVED
    rule = states.classify(account.api_version, case.state or "unknown")
    account_facts = (
        Fact("Account", (Code(account.id),)),
        Fact("Provider", (f"{account.provider or 'unknown'} ({account.api_version})",)),
    )
    facts: tuple[Fact, ...]
    if resolved:
        # What was wrong is past: the state the case was about, and when it began and ended.
        facts = (
            *account_facts,
            Fact("Was", (Code(case.state or "-"),)),
            Fact("Opened", (Moment(case.opened_at),)),
            Fact("Resolved", (Moment(case.resolved_at or case.updated_at),)),
            Fact("Case", (f"#{case.id}",)),
        )
    else:
        facts = (
            *account_facts,
            Fact("State", (Code(case.state or "-"),)),
            Fact("Since", (Moment(case.opened_at),)),
            Fact("Status", status_words(case)),
            Fact("Case", (f"#{case.id}",)),
        )
        if case.muted_by is not None:
            # No alert was posted for it and it does not escalate: say why, wherever it shows.
            window = f"opened in maintenance window #{case.muted_by}: not alerted, not escalated"
            facts = (*facts, Fact("Muted", (window,)))
    header = f"{'Resolved' if resolved else title(case)}: {account.email or account.id}"
    card = CaseCard(
        case_id=case.id,
        resolved=resolved,
        header=header,
        who=account.email or "email not known yet",
        what=RESOLVED_WORDS if resolved else rule.words,
        facts=facts,
        link=None if link is None else link_line(case, link),
        link_failure=None if link is None else outreach_failure(case, link),
    )
    if resolved:
        resolution: Words = (case.resolution or "resolved",)
        if actors.slack_user(case.resolved_by or "") is not None:
            resolution += (" (resolved by ", Person(case.resolved_by or ""), ")")
        return replace(card, resolution=resolution)
    if findings is None:
        findings = [Finding.from_json(f) for f in case.diagnosis or []]
    duplicate = None
    if case.kind == CaseKind.DUPLICATE and case.related_account_id:
        duplicate = (
            "this mailbox is also connected as ",
            Code(case.related_account_id),
            " (the new id); ",
            Code(account.id),
            " is the old one.",
        )
    return replace(
        card,
        impact=impact(case, account),
        deadline=deadline(case, account),
        duplicate=duplicate,
        next_step=states.next_step(case.kind, account.api_version, case.state),
        causes=tuple(Cause(f.title, f.advice, tuple(f.evidence)) for f in findings),
        actions=case_actions(
            case, account, revoke_enabled=revoke_enabled, findings=findings, outreach=outreach
        ),
    )


def impact(case: Case, account: Account) -> str:
    """Why a case matters: what is lost while it lasts, and what Nylas bills meanwhile."""
    if case.kind == CaseKind.DUPLICATE:
        return DUPLICATE_BILLING
    return f"{LOST} {billing_words(account)}"


def deadline(case: Case, account: Account) -> Words:
    """How long the account has been broken and, for v3, until when re-auth still helps."""
    since = case.broken_since or case.opened_at
    words: Words = ("Broken since ", Moment(since, ago=True), ".")
    if account.api_version == ApiVersion.V3:
        words += (
            " Re-authenticated by ",
            Moment(since + RESEND_WINDOW, ago=True),
            ", Nylas resends the notifications missed meanwhile; after that they are lost.",
        )
    return words


def status_words(case: Case) -> Words:
    """Where a case stands: its status, until when it sleeps, who acknowledged it."""
    words = STATUS_WORDS.get(CaseStatus(case.status), case.status)
    if case.status == CaseStatus.SNOOZED and case.snoozed_until is not None:
        return (f"{words} until ", Moment(case.snoozed_until))
    if case.acknowledged_by:
        by = Person(case.acknowledged_by)
        if words == "Acknowledged":
            return (f"{words} by ", by)
        return (f"{words} (acknowledged by ", by, ")")
    return (words,)


def case_actions(
    case: Case,
    account: Account,
    *,
    revoke_enabled: bool,
    findings: Sequence[Finding] | None = None,
    outreach: str | None = None,
) -> tuple[Action, ...]:
    """The actions that fit the case as it is now."""
    if findings is None:
        findings = [Finding.from_json(f) for f in case.diagnosis or []]
    ticket = case.kind == CaseKind.SUPPORT or any(f.rule == "support" for f in findings)
    actions = []
    if case.acknowledged_at is None:
        actions.append(Action(ids.ACK, "Acknowledge", "primary"))
    if case.kind in LINKABLE_KINDS and case.status != CaseStatus.WAITING_ON_USER:
        actions.append(Action(ids.LINK, "Send re-auth link"))
    if case.kind in LINKABLE_KINDS and outreach is not None and account.email:
        actions.append(Action(ids.SEND_LINK, OUTREACH_BUTTONS[outreach]))
    snooze = tuple((f"{case.id}:{c.code}", c.label) for c in SNOOZE_CHOICES.values())
    actions.append(Action(ids.SNOOZE, "Snooze", choices=snooze))
    if account.api_version == ApiVersion.V2 and case.kind == CaseKind.STOPPED:
        actions.append(retry_action(case, account))
    elif account.api_version == ApiVersion.V3:
        actions.append(Action(ids.RETRY, "Check again"))
    if ticket:
        actions.append(Action(ids.SUPPORT_TICKET, "Support ticket"))
    if (
        account.api_version == ApiVersion.V2
        and case.kind == CaseKind.STUCK
        and case.state == "initializing"
    ):
        actions.append(Action(ids.SEND_ONLY, "Expected (send-only)"))
    actions.append(Action(ids.RESOLVE, "Resolve"))
    if case.kind == CaseKind.DUPLICATE:
        actions.append(delete_old_action(revoke_enabled=revoke_enabled))
    else:
        actions.append(revoke_action(account, revoke_enabled=revoke_enabled))
    return tuple(actions)


def retry_action(case: Case, account: Account) -> Action:
    """Retry sync of a v2 stopped account; confirmed first when it would restart billing."""
    return Action(ids.RETRY, "Retry sync", confirm=retry_restarts_billing(case, account))


def delete_old_action(*, revoke_enabled: bool) -> Action:
    """Delete the old id of a duplicate: under the revoke permission, confirmed first."""
    if not revoke_enabled:
        return Action(ids.DELETE_OLD, "Delete old account (off)")
    return Action(ids.DELETE_OLD, "Delete old account", "danger", confirm=True)


def revoke_action(account: Account, *, revoke_enabled: bool) -> Action:
    """Revoke tokens: off unless someone may; v2 confirms in a dialog, v3 in a modal."""
    if not revoke_enabled:
        return Action(ids.REVOKE, "Revoke tokens (off)")
    if account.api_version == ApiVersion.V3:
        return Action(ids.REVOKE, "Delete grant", "danger", confirm=True)
    return Action(ids.REVOKE, "Revoke tokens", "danger", confirm=True)


def incident_card(view: IncidentView, *, outreach: str | None = None) -> IncidentCard:
    """The card of an incident: what happened, where its cases are, and bulk actions."""
    incident = view.incident
    ended = incident.status == IncidentStatus.ENDED
    summary: tuple[Words, ...] = (
        (f"{view.total} cases, {tally(view)}.",),
        (
            "First at ",
            Moment(incident.first_case_at),
            ", latest at ",
            Moment(incident.last_case_at),
            ".",
        ),
    )
    card = IncidentCard(
        incident_id=incident.id,
        ended=ended,
        header=f"{'Ended' if ended else 'Storm'}: {headline(incident, view.total)}",
        summary=summary,
    )
    if ended:
        ended_at = ("Ended ", Moment(incident.ended_at or incident.updated_at), ".")
        return replace(card, notes=(ended_at,))
    unresolved = None
    if view.by_kind:
        kinds = ", ".join(
            f"{n} {KIND_TITLES.get(kind, kind).lower()}"
            for kind, n in sorted(view.by_kind.items(), key=lambda kv: (-kv[1], kv[0]))
        )
        unresolved = f"Unresolved: {kinds}."
    notes: list[Words] = []
    if incident.acknowledged_by:
        notes.append(("Acknowledged by ", Person(incident.acknowledged_by), "."))
    if incident.sealed_at is not None:
        notes.append(
            (
                "The storm was over at ",
                Moment(incident.sealed_at),
                ": new cases are posted on their own again.",
            )
        )
    actions = [Action(ids.INCIDENT_SHOW, "Show cases")]
    if incident.acknowledged_at is None:
        actions.append(Action(ids.INCIDENT_ACK, "Acknowledge all", "primary"))
    if view.linkable:
        actions.append(Action(ids.INCIDENT_LINKS, f"Re-auth links ({view.linkable})"))
        if outreach is not None:
            label = f"{OUTREACH_ALL_BUTTONS[outreach]} ({view.linkable})"
            actions.append(Action(ids.INCIDENT_SEND_LINKS, label))
    if view.retryable:
        actions.append(Action(ids.INCIDENT_RETRY, f"Retry all ({view.retryable})"))
    return replace(
        card,
        unresolved=unresolved,
        notes=tuple(notes),
        new_members=tuple(m.label for m in view.sample if not m.posted),
        posted_members=tuple(
            (m.label, m.channel or "", m.ts or "") for m in view.sample if m.posted
        ),
        more=view.unresolved - len(view.sample),
        actions=tuple(actions),
    )


def tally(view: IncidentView) -> str:
    """Where an incident's cases are: "5 open, 7 resolved"."""
    parts = [
        f"{view.by_status[status]} {words.lower()}"
        for status, words in STATUS_WORDS.items()
        if view.by_status.get(status)
    ]
    return ", ".join(parts) or "no cases"
