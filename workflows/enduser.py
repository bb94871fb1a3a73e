"""The end user's side of a case: what became of its re-authentication link.

A case's card shows it in one line, from the case's newest link (``storage.links.latest``):

    Link made by @ana 10:02 · emailed 10:02 · opened 10:15 (2×) · re-authenticated 10:17

Times are UTC, with the date when it is not the day the link was made. A link opened a day
ago whose case is still not resolved was flagged by ``workflows.stalled``; the line then says
the user likely hit an error at the provider. The line never names the mailbox: the card
shows it once, where it is escaped as the email it is.

The end user re-authenticated when the case was resolved by the account's own recovery, as
Nylas or the poll reported it (``resolved_by``), in the words the lifecycle resolves it with:
not by an operator, not by a deletion or an account stopped on purpose.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from storage import actors
from storage.models import Case, CaseStatus, ReauthLink
from workflows.words import Line, Part, Person

# Who resolves a case on their own when the account recovers (lifecycle.actor_of).
AUTOMATIC_RESOLVERS = (actors.NYLAS, actors.POLL)
# The resolutions the lifecycle writes when the account recovers (lifecycle._recovery).
REAUTHENTICATED = "The end user re-authenticated."
RECOVERED = "The account recovered:"
RECOVERY_WORDINGS = (REAUTHENTICATED, RECOVERED)

# A link opened this long ago without a re-authentication is flagged as stalled.
STALL_AFTER = timedelta(days=1)
STALLED_NOTE = (
    "opened over a day ago without re-authenticating: the user likely hit an error at the provider"
)
STALLED_LINE = (
    "The end user opened the re-authentication link a day ago and has not re-authenticated: "
    "they likely hit an error at the provider."
)

# What ``bot.notifier`` stores on the case when an outreach message is given up on.
OUTREACH_FAILED = "outreach failed: "
SENT_VIA = {"nylas": "emailed", "webhook": "notified"}
FAILED_VIA = {
    "nylas": "Emailing the end user failed",
    "webhook": "Notifying the end user through the team's webhook failed",
}
# Actors other than Slack users, as a sentence names them.
MAKERS = {actors.SYSTEM: "reauthbot", actors.CLI: "the command line"}
SEPARATOR = " · "


def reauthenticated(case: Case) -> bool:
    """Whether the case was resolved by the end user re-authenticating (the account's own
    recovery, as Nylas or the poll reported it)."""
    return (
        case.status == CaseStatus.RESOLVED
        and case.resolved_by in AUTOMATIC_RESOLVERS
        and (case.resolution or "").startswith(RECOVERY_WORDINGS)
    )


def at(when: datetime, day: datetime) -> str:
    """``HH:MM`` in UTC, with the date before it when ``when`` falls on another day than
    ``day`` (the link's): ``Dec 8 09:14``."""
    if when.date() == day.date():
        return f"{when:%H:%M}"
    return f"{when:%b} {when.day} {when:%H:%M}"


def maker(actor: str) -> Part:
    """Who made a link: a Slack user as a person (a mention in Slack), else in words."""
    return Person(actor) if actors.is_slack(actor) else MAKERS.get(actor, actors.name(actor))


def link_line(case: Case, link: ReauthLink) -> Line:
    """The case's link, and what the end user did with it, in one line."""
    made = link.created_at
    parts: list[Part] = ["Link made by ", maker(link.created_by), f" {at(made, made)}"]
    if link.sent_at is not None:
        parts.append(
            f"{SEPARATOR}{SENT_VIA.get(link.sent_via or '', 'sent')} {at(link.sent_at, made)}"
        )
    if link.first_opened_at is not None:
        opens = f" ({link.opens}×)" if link.opens > 1 else ""
        parts.append(f"{SEPARATOR}opened {at(link.first_opened_at, made)}{opens}")
    if reauthenticated(case) and case.resolved_at is not None:
        parts.append(f"{SEPARATOR}re-authenticated {at(case.resolved_at, made)}")
    elif link.stalled_at is not None and case.status != CaseStatus.RESOLVED:
        parts.append(f"{SEPARATOR}{STALLED_NOTE}")
    return tuple(parts)


def outreach_failure(case: Case, link: ReauthLink) -> str | None:
    """Why the link did not reach the end user, when the last outreach was given up on."""
    error = case.last_error or ""
    if not error.startswith(OUTREACH_FAILED):
        return None
    code = error.removeprefix(OUTREACH_FAILED)
    if link.sent_via in FAILED_VIA:
        return f"{FAILED_VIA[link.sent_via]}: {code}."
    return f"Sending the link to the end user failed: {code}. It did not reach them."
