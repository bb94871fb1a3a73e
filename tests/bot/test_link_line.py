"""The end user's side of a case on its card: the link line, in Slack and in plain text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from slack_sdk.models.blocks import Block

from bot import render
from bot.slack.blocks import alert_blocks
from bot.slack.replies import outreach_text
from storage import actors
from storage.models import Account, Case, CaseStatus, ReauthLink
from workflows.stats import NO_OUTREACH, OutreachFigures

MADE = datetime(2026, 12, 7, 10, 2, tzinfo=UTC)
EMAIL = "ana+mailbox@example.com"
STALLED = (
    " · opened over a day ago without re-authenticating: "
    "the user likely hit an error at the provider"
)


def account() -> Account:
    return Account(
        id="acc-1",
        api_version="v3",
        email=EMAIL,
        provider="google",
        first_seen_at=MADE,
        updated_at=MADE,
    )


def case(**fields: Any) -> Case:
    base: dict[str, Any] = {
        "id": 7,
        "account_id": "acc-1",
        "kind": "reauth",
        "status": CaseStatus.WAITING_ON_USER,
        "state": "invalid",
        "opened_at": MADE - timedelta(hours=1),
        "updated_at": MADE,
    }
    return Case(**{**base, **fields})


def reauthenticated(at: datetime) -> dict[str, Any]:
    return {
        "status": CaseStatus.RESOLVED,
        "resolved_at": at,
        "resolved_by": actors.NYLAS,
        "resolution": "The end user re-authenticated.",
    }


def link(**fields: Any) -> ReauthLink:
    base: dict[str, Any] = {
        "id": 3,
        "token_hash": "0" * 64,
        "case_id": 7,
        "created_by": actors.slack("U0ANA"),
        "created_at": MADE,
        "expires_at": MADE + timedelta(days=7),
    }
    return ReauthLink(**{**base, **fields})


def at(hour: int, minute: int, day: int = 7) -> datetime:
    return datetime(2026, 12, day, hour, minute, tzinfo=UTC)


EMAILED = {"sent_via": "nylas", "sent_at": at(10, 2)}
OPENED = {"first_opened_at": at(10, 15), "last_opened_at": at(10, 15), "opens": 1}

# (case fields, link fields, the line in plain text; Slack shows <@U0ANA> for @U0ANA)
CASES = {
    "made only": ({}, {}, "Link made by @U0ANA 10:02"),
    "emailed": ({}, EMAILED, "Link made by @U0ANA 10:02 · emailed 10:02"),
    "notified": (
        {},
        {"sent_via": "webhook", "sent_at": at(10, 3)},
        "Link made by @U0ANA 10:02 · notified 10:03",
    ),
    "opened once": (
        {},
        {**EMAILED, **OPENED},
        "Link made by @U0ANA 10:02 · emailed 10:02 · opened 10:15",
    ),
    "opened twice": (
        {},
        {**EMAILED, **OPENED, "last_opened_at": at(10, 40), "opens": 2},
        "Link made by @U0ANA 10:02 · emailed 10:02 · opened 10:15 (2×)",
    ),
    "re-authenticated": (
        reauthenticated(at(10, 17)),
        {**EMAILED, **OPENED, "opens": 2},
        "Link made by @U0ANA 10:02 · emailed 10:02 · opened 10:15 (2×) · re-authenticated 10:17",
    ),
    "re-authenticated another day": (
        reauthenticated(at(9, 14, day=8)),
        {**EMAILED, "first_opened_at": at(9, 1, day=8), "opens": 1},
        "Link made by @U0ANA 10:02 · emailed 10:02 · opened Dec 8 09:01 · "
        "re-authenticated Dec 8 09:14",
    ),
    "stalled": (
        {},
        {**EMAILED, **OPENED, "stalled_at": at(10, 20, day=8)},
        "Link made by @U0ANA 10:02 · emailed 10:02 · opened 10:15" + STALLED,
    ),
    "made by reauthbot": ({}, {"created_by": actors.SYSTEM}, "Link made by reauthbot 10:02"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_link_line_in_plain_text_and_in_slack(name: str) -> None:
    case_fields, link_fields, expected = CASES[name]
    the_case, the_link = case(**case_fields), link(**link_fields)
    text = render.alert_text(the_case, account(), the_link)
    assert expected in text.splitlines()
    line = link_context(alert_blocks(the_case, account(), link=the_link))
    assert line == expected.replace("@U0ANA", "<@U0ANA>")
    assert EMAIL not in line and "example.com" not in line


def test_a_resolved_case_shows_the_line_above_its_resolution() -> None:
    blocks = alert_blocks(case(**reauthenticated(at(10, 17))), account(), link=link(**EMAILED))
    assert Block.parse_all(blocks)
    assert link_context(blocks).endswith("re-authenticated 10:17")


@pytest.mark.parametrize(
    "resolved",
    [
        {"resolved_by": actors.slack("U0BOB"), "resolution": "Fixed by hand."},
        {"resolved_by": actors.NYLAS, "resolution": "The account was deleted in Nylas."},
        {"resolved_by": "retry", "resolution": "The account recovered: syncing (running)."},
    ],
)
def test_only_a_recovery_reported_by_nylas_or_the_poll_is_a_re_authentication(
    resolved: dict[str, Any],
) -> None:
    the_case = case(status=CaseStatus.RESOLVED, resolved_at=at(10, 17), **resolved)
    the_link = link(**EMAILED, **OPENED, stalled_at=at(10, 20, day=8))
    # Nor is a resolved case stalled any more.
    assert link_context(alert_blocks(the_case, account(), link=the_link)) == (
        "Link made by <@U0ANA> 10:02 · emailed 10:02 · opened 10:15"
    )


def test_a_recovery_seen_by_the_poll_is_a_re_authentication() -> None:
    the_case = case(
        status=CaseStatus.RESOLVED,
        resolved_at=at(10, 17),
        resolved_by=actors.POLL,
        resolution="The account recovered: syncing reliably (running).",
    )
    text = render.alert_text(the_case, account(), link())
    assert "Link made by @U0ANA 10:02 · re-authenticated 10:17" in text


@pytest.mark.parametrize(
    ("link_fields", "words"),
    [
        ({}, "Sending the link to the end user failed: nylas_rejected_400. It did not reach them."),
        (EMAILED, "Emailing the end user failed: nylas_rejected_400."),
        (
            {"sent_via": "webhook", "sent_at": at(10, 3)},
            "Notifying the end user through the team's webhook failed: nylas_rejected_400.",
        ),
    ],
)
def test_failed_outreach_reads_as_words(link_fields: dict[str, Any], words: str) -> None:
    the_case = case(last_error="outreach failed: nylas_rejected_400")
    the_link = link(**link_fields)
    assert words in render.alert_text(the_case, account(), the_link).splitlines()
    blocks = alert_blocks(the_case, account(), link=the_link)
    assert Block.parse_all(blocks)
    elements = next(b for b in blocks if is_link(b))["elements"]
    assert elements[1]["text"] == f"*{words}*"


def test_other_failures_are_not_told_as_outreach() -> None:
    the_case = case(last_error="update failed: msg_too_long")
    assert "failed" not in render.alert_text(the_case, account(), link())
    blocks = alert_blocks(the_case, account(), link=link())
    assert len(next(b for b in blocks if is_link(b))["elements"]) == 1


def test_no_link_no_line() -> None:
    assert "Link made" not in render.alert_text(case(), account())
    assert not any(is_link(b) for b in alert_blocks(case(), account()))


def test_an_actor_named_like_a_mention_cannot_ping() -> None:
    hostile = link(created_by="<!channel>")
    assert link_context(alert_blocks(case(), account(), link=hostile)) == (
        "Link made by &lt;!channel&gt; 10:02"
    )


def is_link(block: dict[str, Any]) -> bool:
    return block["type"] == "context" and block["elements"][0]["text"].startswith("Link made by")


def link_context(blocks: list[dict[str, Any]]) -> str:
    found = [b for b in blocks if is_link(b)]
    assert len(found) == 1
    return str(found[0]["elements"][0]["text"])


def test_stats_tell_outreach_or_that_there_was_none() -> None:
    assert outreach_text(NO_OUTREACH) == "Outreach: no outreach yet"
    assert outreach_text(OutreachFigures(4, 3, timedelta(hours=2, minutes=5), 1)).splitlines() == [
        "Fixed after outreach: 75% (3 of 4 end users reached)",
        "Median time from the first link to re-authentication: 2 h 5 min",
        "Links opened but not completed: 1",
    ]
    assert outreach_text(OutreachFigures(0, 0, None, 2)).splitlines() == [
        "Fixed after outreach: no end user reached",
        "Median time from the first link to re-authentication: no re-authentication yet",
        "Links opened but not completed: 2",
    ]
