"""Rendering: valid Block Kit for every kind and status, and no way to ping through it."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from slack_sdk.models.blocks import Block
from slack_sdk.models.views import View

from bot.slack import ids
from bot.slack.blocks import alert_blocks, escape, fallback_text, resolve_modal, revoke_modal
from bot.slack.command_line import SNOOZES, parse
from storage.models import Account, Case, CaseStatus

NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
HOSTILE = "ana+<!channel>&<@U0BOSS>|<https://evil.example|click>@example.com"


def make(
    kind: str = "reauth", status: str = "open", state: str = "invalid", **account: Any
) -> tuple[Case, Account]:
    acc = Account(
        id=account.pop("id", "acc-1"),
        api_version=account.pop("api_version", "v2"),
        email=account.pop("email", "ana@example.com"),
        provider=account.pop("provider", "gmail"),
        billing_state=account.pop("billing_state", "paid"),
        first_seen_at=NOW,
        updated_at=NOW,
    )
    case = Case(
        id=7,
        account_id=acc.id,
        kind=kind,
        status=status,
        state=state,
        opened_at=NOW,
        updated_at=NOW,
    )
    if status == CaseStatus.ACKNOWLEDGED:
        case.acknowledged_at, case.acknowledged_by = NOW, "slack:U0ALICE"
    if status == CaseStatus.RESOLVED:
        case.resolved_at, case.resolution = NOW, "The end user re-authenticated."
    return case, acc


def validate(blocks: list[dict[str, Any]]) -> None:
    """Parse with slack-sdk's models, which check every field limit, plus message limits."""
    assert 0 < len(blocks) <= 50
    parsed = Block.parse_all(blocks)
    assert None not in parsed, "a block type slack-sdk does not know"
    assert [b.to_dict() for b in parsed]  # to_dict() runs the validators
    for block in blocks:
        if block["type"] == "section" and "text" in block:
            assert len(block["text"]["text"]) <= 3000


def mrkdwn_texts(node: Any) -> list[str]:
    """Every mrkdwn text in the blocks (plain_text is shown as typed: it cannot ping)."""
    if isinstance(node, list):
        return [t for item in node for t in mrkdwn_texts(item)]
    if isinstance(node, dict):
        own = [node["text"]] if node.get("type") == "mrkdwn" else []
        return own + [
            t for v in node.values() if isinstance(v, dict | list) for t in mrkdwn_texts(v)
        ]
    return []


def mentions(blocks: list[dict[str, Any]]) -> list[str]:
    """Every Slack control sequence (<…>) that would ping or link, outside our own dates."""
    found = re.findall(r"<[^>]*>", "\n".join(mrkdwn_texts(blocks)))
    return [m for m in found if not m.startswith("<!date^")]


@pytest.mark.parametrize("kind", ["reauth", "stopped", "support", "stuck", "duplicate", "unknown"])
@pytest.mark.parametrize(
    "status", ["open", "acknowledged", "snoozed", "waiting_on_user", "resolved"]
)
def test_every_kind_and_status_renders_valid_blocks(kind: str, status: str) -> None:
    case, account = make(kind=kind, status=status)
    blocks = alert_blocks(case, account)
    validate(blocks)
    elements = [e for b in blocks if b["type"] == "actions" for e in b["elements"]]
    actions = [e["action_id"] for e in elements]
    if status == "resolved":
        assert actions == []
        assert "The end user re-authenticated." in json.dumps(blocks)
        return
    expected = [] if status == "acknowledged" else [ids.ACK]
    if kind in ("reauth", "stopped", "unknown") and status != "waiting_on_user":
        expected.append(ids.LINK)
    retry = [ids.RETRY] if kind == "stopped" else []  # a v2 account: retry only when stopped
    ticket = [ids.SUPPORT_TICKET] if kind == "support" else []  # Nylas Support must look
    # A duplicate's destructive action deletes the old id instead of revoking its tokens.
    last = ids.DELETE_OLD if kind == "duplicate" else ids.REVOKE
    assert actions == [*expected, ids.SNOOZE, *retry, *ticket, ids.RESOLVE, last]
    revoke = elements[-1]
    assert revoke["text"]["text"].endswith("(off)") and "style" not in revoke
    for element in elements:
        values = (
            [element["value"]] if "value" in element else [o["value"] for o in element["options"]]
        )
        assert all(v.split(":")[0] == "7" for v in values)  # every control names the case
    if status == "acknowledged":
        assert "Acknowledged by <@U0ALICE>" in json.dumps(blocks)


def test_resolve_modal_is_a_valid_view() -> None:
    case, account = make(email=HOSTILE)
    view = resolve_modal(case, account)
    View(**view).to_dict()
    assert view["private_metadata"] == "7"
    assert mentions(view["blocks"]) == []


def test_alert_says_who_what_since_why_and_next() -> None:
    case, account = make(kind="stopped", state="stopped")
    text = json.dumps(alert_blocks(case, account))
    for expected in (
        "ana@example.com",
        "acc-1",
        "gmail (v2)",
        "stopped",
        "Nylas still bills",
        "Retry sync (downgrade, then upgrade)",
        "<!date^1793611800^",
    ):
        assert expected in text


def test_cancelled_v2_account_is_not_said_to_be_billed() -> None:
    case, account = make(billing_state="cancelled")
    text = json.dumps(alert_blocks(case, account))
    assert "still bills" not in text and "no longer bills it (billing state cancelled)" in text


def test_unknown_v2_billing_state_is_said_to_be_unknown() -> None:
    case, account = make(billing_state=None)
    text = json.dumps(alert_blocks(case, account))
    assert "bills" not in text and "billing state is not known yet" in text


def test_user_text_cannot_ping_or_link() -> None:
    case, account = make(email=HOSTILE, id="<!here>", provider="<@U0X>")
    case.resolution = "<!everyone> fixed it"
    for status in ("open", "resolved"):
        case.status = status
        blocks = alert_blocks(case, account)
        validate(blocks)
        assert mentions(blocks) == []
        assert "&lt;!channel&gt;" in json.dumps(blocks)  # shown, escaped, in mrkdwn
    assert "&lt;!channel&gt;" in fallback_text(case, account)


def test_escape() -> None:
    assert escape("a<b>&c") == "a&lt;b&gt;&amp;c"


def test_long_values_stay_within_limits() -> None:
    case, account = make(email=("x" * 4000) + "@example.com", provider="p" * 3000)
    case.status, case.resolution = "resolved", "r" * 5000
    validate(alert_blocks(case, account))


def test_revoke_button_when_enabled_is_dangerous_and_confirms() -> None:
    case, account = make(email=HOSTILE)
    v2 = alert_blocks(case, account, revoke_enabled=True)
    validate(v2)
    revoke = v2[-1]["elements"][-1]
    assert (revoke["action_id"], revoke["style"]) == (ids.REVOKE, "danger")
    assert revoke["confirm"]["style"] == "danger"
    assert mentions(v2) == []
    case, account = make(api_version="v3", email=HOSTILE)
    v3 = alert_blocks(case, account, revoke_enabled=True)
    validate(v3)
    assert v3[-1]["elements"][-1]["text"]["text"] == "Delete grant"
    assert "confirm" not in v3[-1]["elements"][-1]  # the modal asks for the email instead
    view = revoke_modal(case, account)
    View(**view).to_dict()
    assert mentions(view["blocks"]) == []


def test_card_shows_how_long_it_is_broken_and_the_v3_resend_deadline() -> None:
    case, account = make(api_version="v3", state="expired")
    case.broken_since = NOW - timedelta(hours=5)
    blocks = alert_blocks(case, account)
    validate(blocks)
    (context,) = [b for b in blocks if b["type"] == "context"]
    note = context["elements"][1]["text"]
    broken, deadline = (
        int((NOW - timedelta(hours=5)).timestamp()),
        int((NOW + timedelta(hours=67)).timestamp()),
    )
    assert note.startswith(f"Broken since <!date^{broken}^")
    assert f"<!date^{broken}^{{ago}}|" in note
    assert f"Re-authenticated by <!date^{deadline}^" in note
    assert "Nylas resends the notifications missed meanwhile" in note

    v2_case, v2_account = make()
    v2_note = json.dumps(alert_blocks(v2_case, v2_account))
    assert "Broken since" in v2_note and "resends" not in v2_note


def _elements(blocks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["action_id"]: e for b in blocks if b["type"] == "actions" for e in b["elements"]}


@pytest.mark.parametrize(
    ("billing", "asks"), [("paid", False), ("cancelled", True), ("deleted", True)]
)
def test_retry_sync_asks_first_when_it_would_restart_billing(billing: str, asks: bool) -> None:
    case, account = make(kind="stopped", state="stopped", billing_state=billing)
    blocks = alert_blocks(case, account)
    validate(blocks)
    retry = _elements(blocks)[ids.RETRY]
    assert ("confirm" in retry) is asks
    if asks:
        assert f"billing state is {billing}" in retry["confirm"]["text"]["text"]


@pytest.mark.parametrize(
    ("kind", "state", "version", "offered"),
    [
        ("stuck", "initializing", "v2", True),
        ("stuck", "partial", "v2", False),
        ("reauth", "invalid", "v2", False),
        ("stuck", "initializing", "v3", False),
    ],
)
def test_expected_send_only_is_offered_only_for_a_stuck_initializing_account(
    kind: str, state: str, version: str, offered: bool
) -> None:
    case, account = make(kind=kind, state=state, api_version=version)
    blocks = alert_blocks(case, account)
    validate(blocks)
    button = _elements(blocks).get(ids.SEND_ONLY)
    assert (button is not None) is offered
    if button is not None:
        assert (button["text"]["text"], button["value"]) == ("Expected (send-only)", "7")


def test_the_snooze_menu_offers_what_the_command_takes() -> None:
    case, account = make()
    menus = [
        element
        for block in alert_blocks(case, account)
        if block["type"] == "actions"
        for element in block["elements"]
        if element.get("action_id") == ids.SNOOZE
    ]
    assert [(o["text"]["text"], o["value"]) for o in menus[0]["options"]] == [
        ("1 hour", "7:1h"),
        ("4 hours", "7:4h"),
        ("24 hours", "7:24h"),
    ]
    assert [parse(f"snooze 7 {code}").duration for code in ("1h", "4h", "24h")] == list(SNOOZES)
