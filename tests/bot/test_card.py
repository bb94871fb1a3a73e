"""A card says the same in Slack and in text: the same header, facts, advice and actions."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot import card as cards
from bot import render
from bot.slack import blocks, incidents
from storage.incidents import IncidentView, Member
from storage.models import Account, Case, CaseStatus, Incident, IncidentStatus
from workflows.diagnosis import Facts, Finding, diagnose

NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
FINDING = Finding(
    rule="support",
    title="Nylas-side error",
    advice="Ask <@U0LEAD> to open a ticket.",
    evidence=("sync-error at 09:29",),
)


def a_case(status: str, *, version: str = "v2", kind: str = "stopped") -> tuple[Case, Account]:
    account = Account(
        id="acc-1",
        api_version=version,
        email="ana@example.com",
        provider="gmail",
        billing_state="paid",
        first_seen_at=NOW,
        updated_at=NOW,
    )
    case = Case(
        id=7,
        account_id="acc-1",
        kind=kind,
        status=status,
        state="stopped" if kind == "stopped" else "invalid",
        opened_at=NOW,
        updated_at=NOW,
        diagnosis=[FINDING.to_json()],
    )
    if status == CaseStatus.ACKNOWLEDGED:
        case.acknowledged_at, case.acknowledged_by = NOW, "slack:U0ANA"
    if status == CaseStatus.SNOOZED:
        case.snoozed_until = NOW + timedelta(hours=4)
    if status == CaseStatus.RESOLVED:
        case.resolved_at, case.resolved_by = NOW + timedelta(hours=1), "slack:U0BOB"
        case.resolution = "Fixed <by hand> & checked."
    return case, account


def plain(mrkdwn: str) -> str:
    """Slack mrkdwn as the text renderer words it: dates in UTC, people by id, no markup."""
    mrkdwn = re.sub(r" \(<!date\^\d+\^\{ago\}\|[^>]*>\)", "", mrkdwn)
    mrkdwn = re.sub(
        r"<!date\^(\d+)\^[^>]*>",
        lambda m: datetime.fromtimestamp(int(m.group(1)), UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        mrkdwn,
    )
    mrkdwn = re.sub(r"<@([A-Z0-9]+)>", r"@\1", mrkdwn)
    return html.unescape(mrkdwn.replace("*", "").replace("`", ""))


def slack_actions(message: list[dict[str, Any]]) -> list[str]:
    """Each action as the text renderer shows it, read from the blocks."""
    shown = []
    for block in message:
        for element in block.get("elements", []) if block["type"] == "actions" else []:
            if element["type"] == "static_select":
                choices = " | ".join(o["text"]["text"] for o in element["options"])
                shown.append(f"[{element['placeholder']['text']}: {choices}]")
            else:
                shown.append(f"[{element['text']['text']}]")
    return shown


def text_actions(lines: list[str]) -> list[str]:
    found = [line for line in lines if line.startswith("Actions: ")]
    if not found:
        return []
    return [a.replace(" (asks to confirm)", "") for a in re.findall(r"\[[^]]*\]", found[0])]


CASES = [
    pytest.param(CaseStatus.OPEN, "v2", "stopped", True, id="open-v2-stopped"),
    pytest.param(CaseStatus.OPEN, "v3", "reauth", False, id="open-v3"),
    pytest.param(CaseStatus.ACKNOWLEDGED, "v2", "duplicate", True, id="acked-duplicate"),
    pytest.param(CaseStatus.SNOOZED, "v2", "reauth", False, id="snoozed"),
    pytest.param(CaseStatus.RESOLVED, "v2", "stopped", True, id="resolved"),
]


@pytest.mark.parametrize(("status", "version", "kind", "revoke"), CASES)
def test_a_case_says_the_same_in_slack_and_in_text(
    status: str, version: str, kind: str, revoke: bool
) -> None:
    case, account = a_case(status, version=version, kind=kind)
    options: dict[str, Any] = {"revoke_enabled": revoke, "outreach": "nylas"}
    message = blocks.alert_blocks(case, account, **options)
    lines = render.card_lines(cards.case_card(case, account, **options))
    slack = plain("\n".join(blocks_text(message)))

    assert lines[0] == message[0]["text"]["text"]
    assert lines[1] == plain(message[1]["text"]["text"])
    fields = [plain(f["text"]).split("\n") for f in message[1]["fields"]]
    facts = [line.strip().split(None, 1) for line in lines[2 : 2 + len(fields)]]
    assert facts == fields
    for line in lines[2 + len(fields) :]:
        if line.startswith("Actions: ") or line == "Likely cause:":
            continue
        # Every other line says what the Slack message says, but for its label.
        said = line.split(": ", 1)[1] if line.startswith(LABELS) else line.strip("- ")
        for part in said.split(": "):
            assert part.strip() in slack, line
    assert text_actions(lines) == slack_actions(message)
    if status == CaseStatus.RESOLVED:
        assert text_actions(lines) == []
        assert "needs re-authentication" not in "\n".join(lines).lower()
    else:
        assert "Next step: " in "\n".join(lines) and "Likely cause:" in lines


def test_a_case_opened_in_a_maintenance_window_says_so_in_slack_and_in_text() -> None:
    # Nobody was alerted and nothing escalates: whoever finds the case must see why.
    case, account = a_case(CaseStatus.OPEN, kind="reauth")
    case.muted_by = 3
    message = blocks.alert_blocks(case, account)
    lines = render.card_lines(cards.case_card(case, account))
    said = "opened in maintenance window #3: not alerted, not escalated"
    assert f"*Muted*\n{said}" in [f["text"] for f in message[1]["fields"]]
    assert any(line.split() == ["Muted", *said.split()] for line in lines)
    case.muted_by = None
    assert "Muted" not in "\n".join(render.card_lines(cards.case_card(case, account)))


LABELS = ("Why it matters: ", "Next step: ", "Resolution: ", "Duplicate: ")


def blocks_text(message: list[dict[str, Any]]) -> list[str]:
    texts = []
    for block in message:
        if block["type"] in ("section", "header"):
            texts.append(block["text"]["text"])
        if block["type"] == "context":
            texts += [e["text"] for e in block["elements"]]
    return texts


@pytest.mark.parametrize("status", [IncidentStatus.OPEN, IncidentStatus.ENDED])
def test_an_incident_says_the_same_in_slack_and_in_text(status: str) -> None:
    incident = Incident(
        id=3,
        scope="domain",
        key="example.com",
        status=status,
        opened_at=NOW,
        updated_at=NOW,
        first_case_at=NOW,
        last_case_at=NOW + timedelta(minutes=4),
        ended_at=NOW + timedelta(hours=1) if status == IncidentStatus.ENDED else None,
        acknowledged_at=NOW,
        acknowledged_by="slack:U0ANA",
    )
    view = IncidentView(
        incident=incident,
        total=5,
        by_status={CaseStatus.OPEN: 4, CaseStatus.RESOLVED: 1},
        by_kind={"reauth": 3, "stopped": 1},
        retryable=1,
        linkable=4,
        sample=(Member("a@example.com"), Member("b@example.com", "C0ALERTS", "1.2")),
        resolved_by={"nylas": 1},
    )
    message = incidents.incident_blocks(view, outreach="webhook")
    lines = render.incident_lines(cards.incident_card(view, outreach="webhook"))
    slack = plain("\n".join(blocks_text(message)))
    assert lines[0] == message[0]["text"]["text"]
    assert "in 4 min" in lines[0]
    for line in lines[1:]:
        if line.startswith("Actions: "):
            continue
        said = line.split(": ", 1)[1] if line.startswith(("Accounts: ", "Already")) else line
        assert said in slack or said.split(", ")[0] in slack, line
    assert text_actions(lines) == slack_actions(message)
    if status == IncidentStatus.ENDED:
        assert lines[-1] == "Ended 2026-11-02T10:30:00Z."
    else:
        assert text_actions(lines) == [
            "[Show cases]",
            "[Re-auth links (4)]",
            "[Notify all users (4)]",
            "[Retry all (1)]",
        ]


def test_the_readme_shows_a_card_as_preview_prints_it() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("### Seeing a card without Slack", 1)[1]
    shown = section.split("```text\n", 1)[1].split("```", 1)[0].splitlines()
    account = Account(
        id="g-1",
        api_version="v3",
        email="ana@example.com",
        provider="google",
        billing_state="paid",
        first_seen_at=NOW,
        updated_at=NOW,
    )
    facts = Facts(
        account_id="g-1",
        api_version="v3",
        email="ana@example.com",
        provider="google",
        kind="reauth",
        state="invalid",
        broken_since=NOW,
        now=NOW,
    )
    case = Case(
        id=12,
        account_id="g-1",
        kind="reauth",
        status=CaseStatus.OPEN,
        state="invalid",
        opened_at=NOW,
        updated_at=NOW,
        diagnosis=[f.to_json() for f in diagnose(facts)],
    )
    lines = render.card_lines(cards.case_card(case, account, revoke_enabled=True))
    assert len(shown) == len(lines)
    for said, printed in zip(shown, lines, strict=True):
        # The README shortens the long advice of the likely cause with "(…)".
        head, _, tail = said.partition(" (…) ")
        assert printed.startswith(head) and printed.endswith(tail), said
