"""The Support ticket button and /reauth show's likely causes, through the app and fake Slack."""

from __future__ import annotations

import json
from typing import Any

from aiohttp.test_utils import TestClient

from bot.slack import ids
from storage import cases
from tests.bot.slack.support import (
    NOW,
    Sessions,
    case_events,
    click,
    click_body,
    expire,
    nylas_settings,
    wait_posts,
)
from tests.bot.slack.test_commands import Operator, seed
from tests.conftest import NYLAS_CLIENT_SECRET, FrozenClock
from tests.fakes.nylas import FakeNylas
from tests.fakes.slack import FakeSlack
from tests.waiting import eventually
from workflows.nylas import samples
from workflows.nylas.webhooks import sign


async def sync_error(app: TestClient, account_id: str = "a-1") -> None:
    raw = json.dumps(
        samples.v2_delivery("account.sync_error", account_id=account_id, at=NOW)
    ).encode()
    response = await app.post(
        "/nylas/webhook", data=raw, headers={"X-Nylas-Signature": sign(NYLAS_CLIENT_SECRET, raw)}
    )
    assert response.status == 200


async def answer_to(slack: FakeSlack, n: str) -> dict[str, Any]:
    async def answered() -> bool:
        return bool(slack.responses_to(n))

    await eventually(answered, within=10)
    (answer,) = slack.responses_to(n)
    return dict(answer)


async def test_support_ticket_button_answers_privately_with_the_ticket(
    start: Any, slack: FakeSlack, sessions: Sessions, nylas_fake: FakeNylas
) -> None:
    nylas_fake.add_v2_account(
        id="a-1", email="ana@acme-corp.com", provider="eas", sync_state="sync-error"
    )
    app = await start(**nylas_settings(nylas_fake, "v2"))
    await sync_error(app)
    await wait_posts(slack, 1)
    alert = json.dumps(slack.calls_to("chat.postMessage")[0].params["blocks"])
    assert ids.SUPPORT_TICKET in alert
    # Steps an operator took first: acknowledged, then a retry that Nylas failed.
    await click(app, click_body(slack, ids.ACK, "1", "U0ALICE", n="ack"))
    nylas_fake.fail("POST", r".*/downgrade", status=503, times=1)
    await click(app, click_body(slack, ids.RETRY, "1", "U0ALICE", n="retry"))
    await answer_to(slack, "retry")

    assert await click(app, click_body(slack, ids.SUPPORT_TICKET, "1", "U0BOB", n="t")) == 200
    answer = await answer_to(slack, "t")
    assert answer["response_type"] == "ephemeral" and answer["replace_original"] is False
    text = answer["text"]
    assert text.startswith("```\n") and text.endswith("\n```")
    for wanted in (
        "Account ID: a-1",
        "Email: ana@acme-corp.com",
        "Provider: eas",
        "Message ID: not applicable",
        "- Broken since: 2026-11-02T09:30:00Z",
        "- Case opened: 20",
        "- Now: 20",
        "sync-error (account.sync_error)",
        "Errors our end user sees: (add them here)",
        "Custom code: none",
        "operator U0ALICE (Slack): Acknowledged the case",
        "operator U0ALICE (Slack): Retry sync failed: ",
    ):
        assert wanted in text, wanted
    assert ("slack:U0BOB", "support_ticket") in await case_events(sessions)


async def test_a_forged_case_id_gets_an_error_and_writes_nothing(
    start: Any, slack: FakeSlack, sessions: Sessions, nylas_fake: FakeNylas
) -> None:
    nylas_fake.add_v2_account(id="a-1", email="ana@acme-corp.com", sync_state="sync-error")
    app = await start(**nylas_settings(nylas_fake, "v2"))
    await sync_error(app)
    await wait_posts(slack, 1)
    before = await case_events(sessions)
    for n, value, said in (
        ("missing", "999", "Case #999 does not exist."),
        ("huge", str(2**40), f"Case #{2**40} does not exist."),
        ("words", "drop table", "This button does not name a case."),
    ):
        assert (
            await click(app, click_body(slack, ids.SUPPORT_TICKET, value, "U0MALLORY", n=n)) == 200
        )
        assert (await answer_to(slack, n))["text"] == said
    assert await case_events(sessions) == before


async def test_show_lists_the_likely_causes(
    start: Any, slack: FakeSlack, sessions: Sessions
) -> None:
    clock = FrozenClock(NOW)
    for n in (1, 2, 3):
        case_id = await seed(sessions, clock, n, domain="initech.example", provider="microsoft")
    op = Operator(await start(clock=clock), slack)
    card = await op.type(f"show {case_id}")
    text = json.dumps(card["blocks"])
    assert "*Likely cause*" in text
    assert "Many accounts at initech.example went bad together" in text
    assert "Microsoft OAuth sign-in" in text
    # Shown, not stored: /reauth show only reads.
    async with sessions() as session:
        case = await cases.get_case(session, case_id=case_id)
    assert case is not None and case.diagnosis == []


async def test_an_alert_carries_its_likely_cause_when_posted(start: Any, slack: FakeSlack) -> None:
    app = await start()
    await expire(app)  # a Google grant expired
    await wait_posts(slack, 1)
    text = json.dumps(slack.calls_to("chat.postMessage")[0].params["blocks"])
    assert "*Likely cause*" in text
    assert "Google" in text  # the OAuth finding, with its Google-specific hint
