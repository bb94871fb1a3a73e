"""The likely causes on the alert, and the Support ticket button where Nylas must look."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from bot.slack import ids
from bot.slack.blocks import alert_blocks, diagnosis_blocks, finding_text
from bot.slack.replies import case_card
from tests.bot.slack.test_blocks import HOSTILE, NOW, make, mentions, validate
from workflows.diagnosis import Facts, Finding, Revocation, diagnose


def findings_of(**changes: Any) -> list[Finding]:
    base: dict[str, Any] = {
        "account_id": "acc-1",
        "api_version": "v2",
        "email": "ana@acme-corp.com",
        "provider": "gmail",
        "kind": "reauth",
        "state": "invalid",
        "broken_since": NOW,
        "now": NOW + timedelta(minutes=10),
    }
    return diagnose(Facts(**{**base, **changes}))


def actions_of(blocks: list[dict[str, Any]]) -> list[str]:
    return [e["action_id"] for b in blocks if b["type"] == "actions" for e in b["elements"]]


def test_the_likely_cause_follows_the_next_step() -> None:
    case, account = make(provider="imap")
    revoke = Revocation("slack:U0ALICE", NOW - timedelta(hours=2), "revoke-all")
    case.diagnosis = [f.to_json() for f in findings_of(provider="imap", revocation=revoke)]
    blocks = alert_blocks(case, account)
    validate(blocks)
    texts = [b.get("text", {}).get("text", "") for b in blocks]
    step = next(i for i, t in enumerate(texts) if t.startswith("*Next step:*"))
    assert texts[step + 1].startswith("*Likely cause*\n*We revoked this account's tokens:* ")
    assert "*Password sign-in (basic authentication):*" in texts[step + 1]
    evidence = blocks[step + 2]
    assert evidence["type"] == "context"
    assert evidence["elements"][0]["text"] == (
        "revoke-all by <@U0ALICE> 2 h before the account went bad\nprovider: imap (v2)"
    )
    assert ids.SUPPORT_TICKET not in actions_of(blocks)


def test_no_diagnosis_shows_nothing() -> None:
    case, account = make()
    assert case.diagnosis == []
    assert "Likely cause" not in json.dumps(alert_blocks(case, account))
    assert diagnosis_blocks([]) == []


def test_only_our_mentions_survive_escaping() -> None:
    finding = Finding(
        "same_domain",
        f"Many accounts at {HOSTILE.split('@')[-1]} went bad",
        "<@U0ALICE> revoked; ask <!channel> & <@U0BOSS|boss>",
        ("3 other accounts at <!here> went bad",),
    )
    blocks = diagnosis_blocks([finding])
    validate(blocks)
    assert mentions(blocks) == ["<@U0ALICE>"]
    assert finding_text("a <@U0ALICE> b <!everyone>") == "a <@U0ALICE> b &lt;!everyone&gt;"


def test_a_huge_diagnosis_stays_within_limits() -> None:
    finding = Finding("recurring", "t" * 500, "a" * 5000, tuple("e" * 400 for _ in range(20)))
    validate(diagnosis_blocks([finding] * 3))


@pytest.mark.parametrize(
    ("kind", "state", "changes", "button"),
    [
        ("support", "sync-error", {}, True),
        ("support", "exception", {}, True),
        ("stuck", "partial", {"state_since": NOW - timedelta(hours=30)}, True),
        ("stuck", "partial", {"state_since": NOW - timedelta(hours=3)}, False),
        ("reauth", "invalid", {}, False),
    ],
)
def test_support_ticket_button(
    kind: str, state: str, changes: dict[str, Any], button: bool
) -> None:
    case, account = make(kind=kind, state=state)
    case.diagnosis = [f.to_json() for f in findings_of(kind=kind, state=state, **changes)]
    blocks = alert_blocks(case, account)
    validate(blocks)
    buttons = [e for b in blocks if b["type"] == "actions" for e in b["elements"]]
    tickets = [e for e in buttons if e["action_id"] == ids.SUPPORT_TICKET]
    assert len(tickets) == int(button)
    if button:
        assert tickets[0]["value"] == "7" and tickets[0]["text"]["text"] == "Support ticket"
        assert [e["action_id"] for e in buttons][-2:] == [ids.RESOLVE, ids.REVOKE]


def test_a_support_case_has_the_button_before_it_is_diagnosed() -> None:
    case, account = make(kind="support", state="sync-error")
    assert ids.SUPPORT_TICKET in actions_of(alert_blocks(case, account))


def test_a_resolved_case_shows_neither() -> None:
    case, account = make(kind="support", state="sync-error", status="resolved")
    case.diagnosis = [f.to_json() for f in findings_of(kind="support", state="sync-error")]
    text = json.dumps(alert_blocks(case, account))
    assert "Likely cause" not in text and ids.SUPPORT_TICKET not in text


def test_the_card_shows_findings_given_to_it_over_stored_ones() -> None:
    case, account = make(provider="office365")
    case.diagnosis = [Finding("oauth", "Stale", "stored long ago").to_json()]
    fresh = findings_of(provider="office365")
    card = json.dumps(case_card(case, account, [], revoke_enabled=False, findings=fresh))
    assert "Microsoft OAuth sign-in" in card and "Stale" not in card
