"""Likely causes of a case, from Nylas' guide "Why has the account stopped or gone invalid".

``diagnose`` is a pure function of ``Facts``, which ``gather`` reads from the database; the
rules follow the guide's order: did we revoke the tokens ourselves, did many accounts of one
domain go bad together, does the account use basic authentication or OAuth, does it keep
happening, and does Nylas Support have to look at it. All the wording lives here.

Findings are plain text. External text in them (domains) is not escaped here: the Slack
renderer escapes it and keeps only the ``<@U…>`` mentions this module writes. No email
address is ever put into a finding.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel.ext.asyncio.session import AsyncSession

from storage import actors, evidence
from storage.models import Account, Case, CaseEvent, CaseKind, domain_of
from workflows.clock import how_long
from workflows.domains import PUBLIC_MAIL_DOMAINS

REVOKE_LOOKBACK = timedelta(hours=24)
CLOCK_SKEW = timedelta(minutes=5)  # a revoke logged just after the account went bad still counts
SAME_TIME = timedelta(minutes=30)
# Nylas: an existing account partial for longer needs a ticket; a newly authenticated one may
# stay partial for up to a week during its first sync. The [stuck] policy defaults agree.
STUCK_PARTIAL = timedelta(hours=24)
NEW_ACCOUNT_PARTIAL = timedelta(days=7)

CREDENTIAL_KINDS = frozenset({CaseKind.REAUTH, CaseKind.STOPPED, CaseKind.UNKNOWN})
WENT_BAD_KINDS = frozenset({CaseKind.REAUTH, CaseKind.STOPPED})

# Provider strings of Nylas v2 accounts and v3 grants, by how the account signs in.
PROVIDER_FAMILIES = {
    "imap": "imap",
    "other": "imap",
    "eas": "eas",
    "exchange": "eas",  # v2 reports Exchange ActiveSync accounts as "exchange" too
    "ews": "ews",
    "yahoo": "app_password",
    "aol": "app_password",
    "icloud": "app_password",
    "gmail": "google",
    "google": "google",
    "microsoft": "microsoft",
    "office365": "microsoft",
    "outlook": "microsoft",
    "hotmail": "microsoft",
    "graph": "microsoft",
}
BASIC_AUTH = frozenset({"imap", "eas", "ews", "app_password"})
OAUTH = frozenset({"google", "microsoft"})

MENTION = re.compile(r"<@([UW][A-Z0-9]+)>")


@dataclass(frozen=True, slots=True)
class Revocation:
    actor: str  # "slack:U123", "cli"
    at: datetime
    method: str  # "revoke-all" (v2) or "delete-grant" (v3)


@dataclass(frozen=True, slots=True)
class Facts:
    account_id: str
    api_version: str
    email: str | None
    provider: str | None
    kind: str
    state: str | None
    broken_since: datetime
    now: datetime
    state_since: datetime | None = None
    # When reauthbot first saw the account or it was last (re)connected, whichever is later.
    connected_since: datetime | None = None
    revocation: Revocation | None = None
    domain_peers: int = 0  # other accounts of the domain that went bad within SAME_TIME
    domain_peer_first: datetime | None = None
    domain_peer_last: datetime | None = None
    account_cases_30d: int = 1  # this one included
    account_cases_90d: int = 1
    domain_cases_30d: int = 1
    domain_accounts_30d: int = 1


@dataclass(frozen=True, slots=True)
class Finding:
    rule: str
    title: str
    advice: str
    evidence: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "title": self.title,
            "advice": self.advice,
            "evidence": list(self.evidence),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Finding:
        return cls(
            rule=str(data.get("rule", "")),
            title=str(data.get("title", "")),
            advice=str(data.get("advice", "")),
            evidence=tuple(str(e) for e in data.get("evidence") or ()),
        )


def family_of(provider: str | None) -> str | None:
    """How an account signs in, from its Nylas provider string; None when not known."""
    return PROVIDER_FAMILIES.get((provider or "").strip().lower())


def mention(actor: str) -> str:
    """How an actor is named in a finding: a Slack mention for Slack users."""
    user = actors.slack_user(actor)
    if user is not None and MENTION.fullmatch(f"<@{user}>"):
        return f"<@{user}>"
    return actor


def plain(text: str) -> str:
    """A finding's text outside Slack: mentions become user ids."""
    return MENTION.sub(r"Slack user \1", text)


def _clock(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%H:%M")


def _stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


# --- the rules, in the guide's order ----------------------------------------------------------


def _revoked_by_us(facts: Facts) -> Finding | None:
    revoke = facts.revocation
    if revoke is None or facts.kind not in WENT_BAD_KINDS:
        return None
    lead = facts.broken_since - revoke.at
    if not -CLOCK_SKEW <= lead <= REVOKE_LOOKBACK:
        return None
    what = "deleted the grant" if revoke.method == "delete-grant" else "revoked every access token"
    when = f"{how_long(lead)} before" if lead >= timedelta(minutes=1) else "just as"
    return Finding(
        "revoked_by_us",
        "We revoked this account's tokens",
        f"{mention(revoke.actor)} {what} from reauthbot at {_stamp(revoke.at)}. That alone "
        "stops the account: the end user must re-authenticate. No other cause needs looking for.",
        (f"{revoke.method} by {mention(revoke.actor)} {when} the account went bad",),
    )


def _same_domain(facts: Facts) -> Finding | None:
    domain = domain_of(facts.email)
    if facts.kind not in WENT_BAD_KINDS or facts.domain_peers < 2:
        return None
    if domain is None or domain in PUBLIC_MAIL_DOMAINS:
        return None
    family = family_of(facts.provider)
    if family == "microsoft":
        advice = (
            f"The Microsoft 365 administrator of {domain} likely removed the app's access or "
            "shortened sessions. Ask them to check Entra ID: admin consent for the app "
            "(Enterprise applications > the app > Permissions) and any Conditional Access "
            "policy with a sign-in frequency that applies to it."
        )
    elif family == "google":
        advice = (
            f"The Google Workspace administrator of {domain} likely blocked the app or shortened "
            "sessions. Ask them to check the Admin console: Security > Access and data control > "
            "API controls (third-party app access: trust the app), and Google Cloud session "
            "control (session length)."
        )
    else:
        advice = (
            f"The mail administrator of {domain} likely disconnected the app or shortened the "
            "session timeout. Ask them whether they did, and to allow the app and extend the "
            "session timeout for it."
        )
    first = facts.domain_peer_first or facts.broken_since
    last = facts.domain_peer_last or facts.broken_since
    return Finding(
        "same_domain",
        f"Many accounts at {domain} went bad together",
        advice,
        (
            f"{facts.domain_peers} other accounts at {domain} went bad between "
            f"{_clock(first)} and {_clock(last)} UTC",
        ),
    )


BASIC_ADVICE = {
    "imap": (
        "Every password change needs a re-authentication. If it keeps stopping, look in the "
        'Nylas Dashboard sync log (Mailsync) for UID errors: "Resynced more than '
        'MAX_UID_RESYNCS in a row" means the IMAP server keeps resetting UIDVALIDITY.'
    ),
    "eas": (
        "Every password change needs a re-authentication. Check how many emails are in the "
        "inbox: with 2 or fewer, this is the known Exchange ActiveSync issue with near-empty "
        "inboxes; ask Nylas Support about it."
    ),
    "ews": (
        "Every password change needs a re-authentication; so does a change of the Exchange "
        "server settings, which may give the account a new id."
    ),
    "app_password": (
        "These accounts connect with an app password: changing the account's password or "
        "revoking the app password stops sync. The end user must make a new app password "
        "in their account's security settings and re-authenticate with it."
    ),
}


def _basic_auth(facts: Facts) -> Finding | None:
    family = family_of(facts.provider)
    if facts.kind not in CREDENTIAL_KINDS or family not in BASIC_AUTH:
        return None
    return Finding(
        "basic_auth",
        "Password sign-in (basic authentication)",
        BASIC_ADVICE[family],
        (f"provider: {(facts.provider or '').lower()} ({facts.api_version})",),
    )


OAUTH_ADVICE = {
    "microsoft": (
        "Microsoft ends the app's access when an administrator revokes the user's sessions or "
        "removes the app's consent in Entra ID, when a Conditional Access sign-in frequency "
        "policy asks for a new sign-in, or after 90 days without use; a password change or "
        "reset can too. The end user must re-authenticate."
    ),
    "google": (
        "Google revokes the app's tokens when the user changes their password (tokens with "
        "Gmail scopes) or removes the app under Google Account > Security > Third-party "
        "connections, and in Google Workspace when the administrator restricts the app (API "
        "controls). If accounts fail about 7 days after connecting, the Google Cloud project's "
        "OAuth consent screen is still in Testing. The end user must re-authenticate."
    ),
}


def _oauth(facts: Facts) -> Finding | None:
    family = family_of(facts.provider)
    if facts.kind not in CREDENTIAL_KINDS or family not in OAUTH:
        return None
    title = "Microsoft OAuth sign-in" if family == "microsoft" else "Google OAuth sign-in"
    return Finding(
        "oauth",
        f"{title}: password change or revoked consent",
        OAUTH_ADVICE[family],
        (f"provider: {(facts.provider or '').lower()} ({facts.api_version})",),
    )


RECURRING_CAUSES = {
    "imap": "a password rotation policy: each change needs a re-authentication",
    "eas": "a password rotation policy: each change needs a re-authentication",
    "ews": "a password rotation policy: each change needs a re-authentication",
    "microsoft": (
        "missing admin consent or a Conditional Access sign-in frequency policy; ask the "
        "tenant's administrator to grant admin consent and exempt the app"
    ),
    "google": (
        "a Google Workspace session control or app restriction; ask the administrator to "
        "trust the app in API controls and lengthen the session"
    ),
    "app_password": "the app password being revoked or replaced; ask the end user to keep it",
}


def _recurring(facts: Facts) -> Finding | None:
    if facts.kind == CaseKind.DUPLICATE:
        return None
    evidence = []
    if facts.account_cases_30d >= 2 or facts.account_cases_90d >= 3:
        evidence.append(
            f"this account needed attention {facts.account_cases_30d} times in 30 days, "
            f"{facts.account_cases_90d} times in 90 days"
        )
    domain = domain_of(facts.email)
    if domain and facts.domain_cases_30d >= 5 and facts.domain_accounts_30d >= 3:
        evidence.append(
            f"{facts.domain_cases_30d} cases for {facts.domain_accounts_30d} accounts "
            f"at {domain} in 30 days"
        )
    if not evidence:
        return None
    if facts.kind in (CaseKind.SUPPORT, CaseKind.STUCK):
        cause = "Tell Nylas Support it keeps happening; the ticket text says how often."
    else:
        known = RECURRING_CAUSES.get(family_of(facts.provider) or "")
        cause = (
            f"Likely {known}."
            if known
            else "Look for a schedule: a password policy or an administrator's session policy."
        )
    return Finding("recurring", "It keeps happening", cause, tuple(evidence))


SUPPORT_STATES = {
    "exception": "Nylas' sync engine got a provider error it does not understand (exception)",
    "sync-error": "Nylas hit an unexpected error while syncing (sync-error)",
}
TICKET_HINT = (
    'Only Nylas Support can fix it: press "Support ticket" for the ticket text (account id, '
    "timestamps, errors, the steps already taken) and add what the end user sees."
)


def _partial_too_long(facts: Facts) -> bool:
    """Partial past the day Nylas allows an existing account; a new one gets a week."""
    if facts.state != "partial" or facts.state_since is None:
        return False
    new = facts.connected_since is not None and (
        facts.now - facts.connected_since < NEW_ACCOUNT_PARTIAL
    )
    limit = max(STUCK_PARTIAL, NEW_ACCOUNT_PARTIAL) if new else STUCK_PARTIAL
    return facts.now - facts.state_since > limit


def _support(facts: Facts) -> Finding | None:
    since = facts.state_since or facts.broken_since
    lasted = facts.now - since
    partial_too_long = _partial_too_long(facts)
    if facts.kind == CaseKind.SUPPORT:
        what = SUPPORT_STATES.get(facts.state or "", "Nylas reports an error syncing the account")
    elif partial_too_long and facts.kind != CaseKind.DUPLICATE:
        what = "The account has been partial for more than 24 hours, when Nylas asks for a ticket"
    elif facts.kind == CaseKind.STUCK and facts.state == "downloading":
        what = "The historical sync (downloading) has not finished in the expected time"
    else:
        return None
    return Finding(
        "support",
        "Nylas Support needed",
        f"{what}. {TICKET_HINT}",
        (f"{facts.state or 'unknown state'} since {_stamp(since)} ({how_long(lasted)})",),
    )


RULES = (_revoked_by_us, _same_domain, _basic_auth, _oauth, _recurring, _support)


def diagnose(facts: Facts) -> list[Finding]:
    """Return the likely causes of a case, most specific first."""
    return [finding for rule in RULES if (finding := rule(facts)) is not None]


# --- facts from the database -----------------------------------------------------------------


async def gather(session: AsyncSession, *, case: Case, account: Account, now: datetime) -> Facts:
    """Read what the rules need about a case from the accounts, cases and audit log."""
    broken = case.broken_since or case.opened_at
    revoke = await evidence.latest_revoke(session, account_id=account.id, until=broken + CLOCK_SKEW)
    account_30 = await evidence.count_cases(
        session, since=now - timedelta(days=30), account_id=account.id, including=case.id
    )
    account_90 = await evidence.count_cases(
        session, since=now - timedelta(days=90), account_id=account.id, including=case.id
    )
    domain = domain_of(account.email)
    peers, domain_30 = evidence.Peers(0, None, None), evidence.Tally(1, 1)
    if domain is not None:
        peers = await evidence.domain_peers(
            session,
            domain=domain,
            other_than=account.id,
            start=broken - SAME_TIME,
            end=broken + SAME_TIME,
            kinds=WENT_BAD_KINDS,
        )
        domain_30 = await evidence.count_cases(
            session, since=now - timedelta(days=30), domain=domain, including=case.id
        )
    return _facts(
        case,
        account,
        now=now,
        revocation=_revocation(revoke),
        peers=peers,
        account_30=account_30,
        account_90=account_90,
        domain_30=domain_30,
    )


def _facts(
    case: Case,
    account: Account,
    *,
    now: datetime,
    revocation: Revocation | None,
    peers: evidence.Peers,
    account_30: evidence.Tally,
    account_90: evidence.Tally,
    domain_30: evidence.Tally,
) -> Facts:
    state = case.state or account.sync_state
    return Facts(
        account_id=account.id,
        api_version=account.api_version,
        email=account.email,
        provider=account.provider,
        kind=case.kind,
        state=state,
        broken_since=case.broken_since or case.opened_at,
        now=now,
        # How long the account has been in the case's state, if it still is in it.
        state_since=account.state_since if account.sync_state == state else None,
        connected_since=max(account.first_seen_at, account.connected_at or account.first_seen_at),
        revocation=revocation,
        domain_peers=peers.accounts,
        domain_peer_first=peers.first,
        domain_peer_last=peers.last,
        account_cases_30d=account_30.cases,
        account_cases_90d=account_90.cases,
        domain_cases_30d=domain_30.cases,
        domain_accounts_30d=domain_30.accounts,
    )


def _revocation(event: CaseEvent | None) -> Revocation | None:
    if event is None:
        return None
    return Revocation(event.actor, event.at, str(event.details.get("method") or "unknown"))


async def refresh(
    session: AsyncSession, *, case: Case, account: Account, now: datetime
) -> list[Finding]:
    """Diagnose the case again and store the findings on it (the caller commits)."""
    findings = diagnose(await gather(session, case=case, account=account, now=now))
    case.diagnosis = [finding.to_json() for finding in findings]
    session.add(case)
    return findings


async def refresh_opened(
    session: AsyncSession, opened: Sequence[tuple[Case, Account]], *, now: datetime
) -> None:
    """Diagnose cases opened together, each as ``refresh`` would have just after it opened.

    What a case's findings count is read once for all of them (once per domain), not once per
    case; a case does not count those opened after it (a higher id), as it could not then.
    """
    if not opened:
        return
    ids = {_id(case) for case, _ in opened}
    broken = [case.broken_since or case.opened_at for case, _ in opened]
    accounts = {account.id for _, account in opened}
    by_account: dict[str, list[evidence.CaseRow]] = {}
    for row in await evidence.recent_cases(
        session, since=now - timedelta(days=90), account_ids=accounts, including=ids
    ):
        by_account.setdefault(row.account_id, []).append(row)
    revoked: dict[str, list[CaseEvent]] = {}
    for event in await evidence.revokes(
        session, account_ids=accounts, until=max(broken) + CLOCK_SKEW
    ):
        revoked.setdefault(event.account_id or "", []).append(event)
    domains = {d for _, account in opened if (d := domain_of(account.email)) is not None}
    since = min(now - timedelta(days=30), min(broken) - SAME_TIME)
    by_domain = {
        domain: await evidence.recent_cases(session, since=since, domain=domain, including=ids)
        for domain in sorted(domains)
    }
    for case, account in opened:
        case_id, went_bad = _id(case), case.broken_since or case.opened_at
        mine = by_account.get(account.id, [])
        until = went_bad + CLOCK_SKEW
        revoke = next((e for e in revoked.get(account.id, []) if e.at <= until), None)
        domain = domain_of(account.email)
        peers, domain_30 = evidence.Peers(0, None, None), evidence.Tally(1, 1)
        if domain is not None:
            rows = by_domain[domain]
            peers = _peers_of(rows, case_id, account.id, went_bad)
            domain_30 = _tally(rows, case_id, now - timedelta(days=30))
        facts = _facts(
            case,
            account,
            now=now,
            revocation=_revocation(revoke),
            peers=peers,
            account_30=_tally(mine, case_id, now - timedelta(days=30)),
            account_90=_tally(mine, case_id, now - timedelta(days=90)),
            domain_30=domain_30,
        )
        case.diagnosis = [finding.to_json() for finding in diagnose(facts)]
        session.add(case)


def _id(case: Case) -> int:
    assert case.id is not None, "a case is diagnosed once it is stored"
    return case.id


def _tally(rows: Sequence[evidence.CaseRow], case_id: int, since: datetime) -> evidence.Tally:
    """``evidence.count_cases`` over ``rows``, as it stood when case ``case_id`` opened."""
    counted = [r for r in rows if r.id <= case_id and (r.opened_at >= since or r.id == case_id)]
    return evidence.Tally(len(counted), len({r.account_id for r in counted}))


def _peers_of(
    rows: Sequence[evidence.CaseRow], case_id: int, account_id: str, went_bad: datetime
) -> evidence.Peers:
    """``evidence.domain_peers`` over ``rows``, as it stood when case ``case_id`` opened."""
    start, end = went_bad - SAME_TIME, went_bad + SAME_TIME
    matching = [
        r
        for r in rows
        if r.id <= case_id
        and r.account_id != account_id
        and r.kind in WENT_BAD_KINDS
        and r.opened_at >= start
        and start <= r.went_bad <= end
    ]
    times = [r.went_bad for r in matching]
    peers = {r.account_id for r in matching}
    return evidence.Peers(len(peers), min(times, default=None), max(times, default=None))
