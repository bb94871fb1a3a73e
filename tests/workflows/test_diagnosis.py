"""The troubleshooting guide's rules, row by row, with real Nylas providers and states."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from workflows.diagnosis import (
    Facts,
    Finding,
    Revocation,
    diagnose,
    domain_of,
    plain,
)
from workflows.domains import PUBLIC_MAIL_DOMAINS

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
M, H, D = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)


def facts(**changes: Any) -> Facts:
    """A v2 Gmail account at a company domain that went invalid ten minutes ago."""
    base: dict[str, Any] = {
        "account_id": "acc-1",
        "api_version": "v2",
        "email": "ana@acme-corp.com",
        "provider": "gmail",
        "kind": "reauth",
        "state": "invalid",
        "broken_since": T0,
        "now": T0 + 10 * M,
    }
    return Facts(**{**base, **changes})


def revoked(before: timedelta, method: str = "revoke-all") -> Revocation:
    return Revocation(actor="slack:U0ALICE", at=T0 - before, method=method)


def peers(count: int) -> dict[str, Any]:
    return {
        "domain_peers": count,
        "domain_peer_first": T0 - 5 * M,
        "domain_peer_last": T0 + 10 * M,
    }


def rules(f: Facts) -> list[str]:
    return [finding.rule for finding in diagnose(f)]


def only(f: Facts, rule: str) -> Finding:
    (finding,) = [x for x in diagnose(f) if x.rule == rule]
    return finding


def row(name: str, expected: str, **changes: Any) -> Any:
    """One row of the table: the facts that differ from ``facts()`` and the rules that fire."""
    return pytest.param(changes, expected.split(), id=name)


BOTH = "revoked_by_us basic_auth"
V3 = {"api_version": "v3"}
SYNC_ERROR = {"kind": "support", "state": "sync-error"}
DUPLICATE = {"kind": "duplicate", "state": "running"}
STOPPED = {"kind": "stopped", "state": "stopped"}

ROWS = [
    # 1. Did we revoke the tokens ourselves?
    row("revoked 2 h before", BOTH, provider="imap", revocation=revoked(2 * H)),
    row("revoked 23 h before", BOTH, provider="imap", revocation=revoked(23 * H)),
    row("revoke logged 3 min after (skew)", BOTH, provider="imap", revocation=revoked(-3 * M)),
    row("revoked 25 h before", "basic_auth", provider="imap", revocation=revoked(25 * H)),
    row("revoked 20 min after", "basic_auth", provider="imap", revocation=revoked(-20 * M)),
    row("v3 grant deleted", "revoked_by_us oauth", **V3, revocation=revoked(H, "delete-grant")),
    row("v2 stopped after a revoke", BOTH, **STOPPED, provider="eas", revocation=revoked(H)),
    row("revoke on a duplicate case", "", **DUPLICATE, revocation=revoked(H)),
    row("revoke on a sync-error case", "support", **SYNC_ERROR, revocation=revoked(H)),
    # 2. Many accounts of one company domain at once.
    row("3 accounts at a company", "same_domain oauth", provider="office365", **peers(2)),
    row("20 accounts at a company", "same_domain basic_auth", provider="imap", **peers(19)),
    row("one peer only", "oauth", provider="office365", **peers(1)),
    row("gmail.com is shared by strangers", "oauth", email="ana@gmail.com", **peers(40)),
    row("Outlook.COM, any case", "oauth", email="A@Outlook.COM", provider="outlook", **peers(9)),
    row("no email known yet", "oauth", email=None, **peers(5)),
    row("peers of a sync-error case", "support", **SYNC_ERROR, **peers(5)),
    # 3. Basic authentication (v2 and v3 provider strings).
    row("v2 imap", "basic_auth", provider="imap"),
    row("v2 other", "basic_auth", provider="other"),
    row("v2 eas stopped", "basic_auth", provider="eas", **STOPPED),
    row("v2 exchange", "basic_auth", provider="exchange", state="invalid-credentials"),
    row("v2 yahoo", "basic_auth", provider="yahoo"),
    row("v2 aol", "basic_auth", provider="aol"),
    row("v2 icloud", "basic_auth", provider="icloud"),
    row("v3 imap", "basic_auth", **V3, provider="imap"),
    row("v3 ews", "basic_auth", **V3, provider="ews"),
    row("v3 icloud", "basic_auth", **V3, provider="icloud"),
    row("v3 unknown state", "basic_auth", **V3, provider="imap", kind="unknown", state="paused"),
    # 4. OAuth.
    row("v2 gmail", "oauth", provider="gmail"),
    row("v2 office365", "oauth", provider="office365"),
    row("v2 hotmail", "oauth", provider="hotmail"),
    row("v2 graph", "oauth", provider="graph"),
    row("v3 google", "oauth", **V3, provider="google"),
    row("v3 microsoft", "oauth", **V3, provider="microsoft"),
    row("unknown provider", "", provider="zimbra"),
    row("no provider yet", "", provider=None),
    row("a duplicate is no credential problem", "", **DUPLICATE),
    row("a stuck account is no credential problem", "", kind="stuck", state="initializing"),
    # 5. It keeps happening.
    row("twice in 30 days", "oauth recurring", account_cases_30d=2, account_cases_90d=2),
    row("three times in 90 days", "oauth recurring", account_cases_30d=1, account_cases_90d=3),
    row("twice in 90 days only", "oauth", account_cases_30d=1, account_cases_90d=2),
    row("5 cases of 3 accounts", "oauth recurring", domain_cases_30d=5, domain_accounts_30d=3),
    row("5 cases of 2 accounts", "oauth", domain_cases_30d=5, domain_accounts_30d=2),
    row("4 cases of 3 accounts", "oauth", domain_cases_30d=4, domain_accounts_30d=3),
    row("recurring duplicate", "", **DUPLICATE, account_cases_30d=4, account_cases_90d=4),
    row("recurring sync-error", "recurring support", **SYNC_ERROR, account_cases_30d=3),
    # 6. Nylas Support needed.
    row("v2 sync-error", "support", **SYNC_ERROR),
    row("v2 exception", "support", kind="support", state="exception", provider="imap"),
    row("stuck partial 30 h", "support", kind="stuck", state="partial", state_since=T0 - 30 * H),
    row("stuck partial 3 h", "", kind="stuck", state="partial", state_since=T0 - 3 * H),
    # A new account (first seen or reconnected in the last week) may be partial for a week.
    row(
        "new account partial 30 h",
        "",
        kind="stuck",
        state="partial",
        state_since=T0 - 30 * H,
        connected_since=T0 - 30 * H,
    ),
    row(
        "account partial 30 h, connected 8 d ago",
        "support",
        kind="stuck",
        state="partial",
        state_since=T0 - 30 * H,
        connected_since=T0 - 8 * D,
    ),
    row("stuck downloading", "support", kind="stuck", state="downloading", state_since=T0 - 8 * D),
    row("stuck initializing", "", kind="stuck", state="initializing", state_since=T0 - 8 * D),
    row("partial 25 h", "oauth support", kind="unknown", state="partial", state_since=T0 - 25 * H),
    row("partial, since unknown", "oauth", kind="unknown", state="partial", state_since=None),
]


@pytest.mark.parametrize(("changes", "expected"), ROWS)
def test_rules(changes: dict[str, Any], expected: list[str]) -> None:
    assert rules(facts(**changes)) == expected


def test_who_revoked_and_when() -> None:
    finding = only(facts(provider="imap", revocation=revoked(2 * H)), "revoked_by_us")
    assert "<@U0ALICE>" in finding.advice
    assert "2026-11-02 07:00 UTC" in finding.advice
    assert "must re-authenticate" in finding.advice
    assert finding.evidence == ("revoke-all by <@U0ALICE> 2 h before the account went bad",)
    assert "Slack user U0ALICE" in plain(finding.advice)


def test_a_revoke_from_the_command_line_names_no_slack_user() -> None:
    revocation = Revocation(actor="cli", at=T0 - H, method="delete-grant")
    finding = only(facts(api_version="v3", revocation=revocation), "revoked_by_us")
    assert finding.advice.startswith("cli deleted the grant")
    assert "<@" not in finding.advice


def test_same_domain_evidence() -> None:
    finding = only(facts(provider="imap", **peers(3)), "same_domain")
    assert finding.evidence == (
        "3 other accounts at acme-corp.com went bad between 08:55 and 09:10 UTC",
    )
    assert "mail administrator of acme-corp.com" in finding.advice


def test_same_domain_microsoft_and_google_advice_differ() -> None:
    microsoft = only(facts(provider="microsoft", api_version="v3", **peers(2)), "same_domain")
    google = only(facts(provider="google", api_version="v3", **peers(2)), "same_domain")
    assert "Microsoft 365 administrator" in microsoft.advice
    assert "Entra ID" in microsoft.advice and "admin consent" in microsoft.advice
    assert "Conditional Access" in microsoft.advice and "sign-in frequency" in microsoft.advice
    assert "Google" not in microsoft.advice
    assert "Google Workspace administrator" in google.advice
    assert "Admin console" in google.advice and "API controls" in google.advice
    assert "session length" in google.advice
    assert "Entra" not in google.advice


def test_oauth_advice_per_provider() -> None:
    microsoft = only(facts(provider="office365"), "oauth")
    google = only(facts(provider="gmail"), "oauth")
    assert microsoft.title.startswith("Microsoft")
    assert "Entra ID" in microsoft.advice and "Conditional Access" in microsoft.advice
    assert "Google" not in microsoft.advice
    assert google.title.startswith("Google")
    assert "Gmail scopes" in google.advice and "Testing" in google.advice
    assert "Entra" not in google.advice
    assert google.evidence == ("provider: gmail (v2)",)


@pytest.mark.parametrize(
    ("provider", "words"),
    [
        ("imap", "MAX_UID_RESYNCS"),
        ("other", "MAX_UID_RESYNCS"),
        ("eas", "2 or fewer"),
        ("exchange", "2 or fewer"),
        ("yahoo", "app password"),
        ("icloud", "app password"),
    ],
)
def test_basic_auth_advice_per_provider(provider: str, words: str) -> None:
    finding = only(facts(provider=provider), "basic_auth")
    assert "password change needs a re-authentication" in finding.advice or (
        "app password" in finding.advice
    )
    assert words in finding.advice


@pytest.mark.parametrize(
    ("provider", "cause"),
    [
        ("imap", "password rotation policy"),
        ("office365", "admin consent"),
        ("google", "session"),
        ("yahoo", "app password"),
        ("zimbra", "Look for a schedule"),
    ],
)
def test_recurring_cause_per_provider(provider: str, cause: str) -> None:
    finding = only(facts(provider=provider, account_cases_30d=2, account_cases_90d=5), "recurring")
    assert cause in finding.advice
    assert finding.evidence == (
        "this account needed attention 2 times in 30 days, 5 times in 90 days",
    )


def test_recurring_at_domain_level() -> None:
    finding = only(facts(domain_cases_30d=9, domain_accounts_30d=4), "recurring")
    assert finding.evidence == ("9 cases for 4 accounts at acme-corp.com in 30 days",)


def test_support_points_at_the_ticket_button() -> None:
    finding = only(facts(kind="support", state="sync-error", now=T0 + 3 * H), "support")
    assert "(sync-error)" in finding.advice
    assert '"Support ticket"' in finding.advice
    assert finding.evidence == ("sync-error since 2026-11-02 09:00 UTC (3 h)",)


def test_findings_round_trip_through_json() -> None:
    for f in diagnose(facts(provider="imap", revocation=revoked(H), account_cases_30d=3)):
        assert Finding.from_json(f.to_json()) == f


def test_consumer_domains_are_lower_case() -> None:
    assert all(d == d.lower() for d in PUBLIC_MAIL_DOMAINS)
    assert {
        "gmail.com",
        "outlook.com",
        "yahoo.com",
        "icloud.com",
        "proton.me",
    } <= PUBLIC_MAIL_DOMAINS


@pytest.mark.parametrize(
    ("email", "domain"),
    [
        ("ana@Acme-Corp.com", "acme-corp.com"),
        ('"a@b"@example.org', "example.org"),
        ("no-at-sign", None),
        ("trailing@", None),
        (None, None),
        ("", None),
    ],
)
def test_domain_of(email: str | None, domain: str | None) -> None:
    assert domain_of(email) == domain
