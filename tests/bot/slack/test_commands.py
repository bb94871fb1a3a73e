"""`/reauth` end to end: signed slash-command requests, private answers through response_url."""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient

from bot.services import SERVICES
from bot.slack import ids
from bot.slack.command_line import USAGE
from storage import cases
from storage.models import Account, CaseStatus
from tests.bot.slack.support import (
    CHANNEL,
    NOW,
    Sessions,
    case_events,
    click,
    nylas_settings,
    signed,
)
from tests.conftest import FrozenClock
from tests.fakes.nylas import FakeNylas
from tests.fakes.slack import FakeSlack
from tests.waiting import eventually
from workflows.escalation import escalate_due

Answer = dict[str, Any]


class Operator:
    """Types `/reauth …` into Slack: sends the signed request, returns the private answer."""

    def __init__(self, app: TestClient, slack: FakeSlack) -> None:
        self.app, self.slack = app, slack

    async def type(self, text: str, user: str = "U0ANA") -> Answer:
        n = f"cmd{len(self.slack.calls) + len(self.slack.responses)}-{id(self)}"
        body = urlencode(
            {
                "token": "legacy",
                "team_id": "T0TEST",
                "team_domain": "acme",
                "channel_id": CHANNEL,
                "channel_name": "alerts",
                "user_id": user,
                "user_name": user.lower(),
                "command": ids.COMMAND,
                "text": text,
                "api_app_id": "A0APP",
                "response_url": self.slack.response_url(n),
                "trigger_id": "13345224609.738474920.8088930838d88f008e0",
            }
        )
        response = await self.app.post(ids.EVENTS_PATH, data=body, headers=signed(body))
        assert response.status == 200
        assert await response.text() == ""  # acknowledged at once, answered later

        async def answered() -> bool:
            return bool(self.slack.responses_to(n))

        await eventually(answered)
        (answer,) = self.slack.responses_to(n)
        assert answer["response_type"] == "ephemeral"
        return dict(answer)


def shown(answer: Answer) -> str:
    return answer["text"] + json.dumps(answer.get("blocks") or [], ensure_ascii=False)


async def seed(
    sessions: Sessions,
    clock: FrozenClock,
    n: int,
    *,
    domain: str = "example.com",
    provider: str = "google",
    api_version: str = "v3",
    kind: str = "reauth",
) -> int:
    """An open case (no alert posted): enough for the command's queries."""
    async with sessions() as session, session.begin():
        session.add(
            Account(
                id=f"g-{n}",
                api_version=api_version,
                email=f"user{n}@{domain}",
                provider=provider,
                sync_state="invalid",
                first_seen_at=clock(),
                updated_at=clock(),
            )
        )
        await session.flush()
        case = await cases.open_case(
            session, account_id=f"g-{n}", kind=kind, state="invalid", now=clock(), channel=CHANNEL
        )
        assert case is not None and case.id is not None
    clock.advance(minutes=1)
    return case.id


@pytest.fixture
async def run(start: Any, slack: FakeSlack) -> Any:
    async def make(policy: str = "", **overrides: Any) -> Operator:
        return Operator(await start(policy, **overrides), slack)

    return make


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(NOW)


async def test_help_and_unknown_commands(run: Any) -> None:
    op = await run()

    # The contract: no sub-command, an unknown one and `help` all answer with the help itself.
    assert "`/reauth snooze CASE 1h|4h|24h`" in (await op.type(""))["text"]
    assert "`/reauth oncall`" in (await op.type("help"))["text"]
    unknown = await op.type("frobnicate")
    assert unknown["text"].startswith("`frobnicate` is not a /reauth command.\n")
    for name in USAGE:
        assert f"`{USAGE[name]}`" in unknown["text"]
    bogus = await op.type("bogus 42 <!channel>")
    assert bogus["text"].startswith("`bogus` is not a /reauth command.")
    assert "`/reauth list" in bogus["text"] and "<!channel>" not in bogus["text"]


async def test_list_filters_and_pages(
    run: Any, slack: FakeSlack, sessions: Sessions, clock: FrozenClock
) -> None:
    for n in range(1, 13):
        await seed(sessions, clock, n, domain="acme.io" if n % 2 else "example.com")
    op = await run(clock=clock)

    first = await op.type("list")
    assert "1–10" in shown(first)
    lines = [b["text"]["text"] for b in first["blocks"] if b["type"] == "section"][1:]
    assert lines[0].startswith("*#12* user12@example.com") and len(lines) == 10
    (more,) = [b for b in first["blocks"] if b["type"] == "actions"]
    button = more["elements"][0]
    assert button["action_id"] == ids.LIST_MORE

    # The "More" button replaces the answer with the next page.
    payload = {
        "type": "block_actions",
        "user": {"id": "U0ANA"},
        "team": {"id": "T0TEST"},
        "api_app_id": "A0APP",
        "response_url": slack.response_url("more"),
        "actions": [{"action_id": ids.LIST_MORE, "value": button["value"], "type": "button"}],
    }
    assert await click(op.app, urlencode({"payload": json.dumps(payload)})) == 200

    async def paged() -> bool:
        return bool(slack.responses_to("more"))

    await eventually(paged)
    (page,) = slack.responses_to("more")
    assert page["replace_original"] is True
    assert "11–12" in shown(page) and "*#2* " in shown(page)
    assert not [b for b in page["blocks"] if b["type"] == "actions"]

    acme = await op.type("list --domain acme.io")
    assert "user11@acme.io" in shown(acme) and "example.com" not in json.dumps(acme["blocks"][1:])
    nothing = await op.type("list --kind stopped")
    assert nothing["blocks"][0]["text"]["text"] == "No open cases (kind stopped)."
    bad = await op.type("list --kind weird")
    assert bad["text"].startswith("`weird` is not a kind; use reauth, stopped")


async def test_a_forged_more_button_is_refused(run: Any, slack: FakeSlack) -> None:
    op = await run()
    payload = {
        "type": "block_actions",
        "user": {"id": "U0ANA"},
        "team": {"id": "T0TEST"},
        "api_app_id": "A0APP",
        "response_url": slack.response_url("forged"),
        "actions": [
            {"action_id": ids.LIST_MORE, "value": '{"offset":-5,"kinds":["x"]}', "type": "button"}
        ],
    }
    assert await click(op.app, urlencode({"payload": json.dumps(payload)})) == 200

    async def answered() -> bool:
        return bool(slack.responses_to("forged"))

    await eventually(answered)
    (answer,) = slack.responses_to("forged")
    assert answer["text"] == "This list can no longer be paged. Run `/reauth list` again."


async def test_show_by_number_email_or_account(
    run: Any, sessions: Sessions, clock: FrozenClock
) -> None:
    case_id = await seed(sessions, clock, 1)
    op = await run(clock=clock)

    for ref in (str(case_id), f"#{case_id}", "user1@example.com", "USER1@example.com", "g-1"):
        card = await op.type(f"show {ref}")
        assert card["text"] == f"Case #{case_id}"
        assert "*History*" in shown(card) and "user1@example.com" in shown(card)
    missing = await op.type("show nobody@example.com")
    assert missing["text"] == "No case matches `nobody@example.com`. Try `/reauth list`."
    assert (await op.type("show"))["text"] == "Which case? Usage: `/reauth show CASE|EMAIL|ACCOUNT`"


async def test_ack_snooze_resolve_act_like_the_buttons(
    run: Any, sessions: Sessions, clock: FrozenClock
) -> None:
    first = await seed(sessions, clock, 1)
    second = await seed(sessions, clock, 2)
    op = await run(clock=clock)

    assert (await op.type("ack user1@example.com"))["text"] == f"You acknowledged case #{first}."
    again = await op.type(f"ack {first}", user="U0BEN")
    assert again["text"] == f"Case #{first} was already acknowledged by <@U0ANA>."
    snoozed = await op.type(f"snooze {second} 4h")
    assert snoozed["text"].startswith(f"Case #{second} is snoozed until ")
    bad = await op.type(f"snooze {second} 2d")
    assert bad["text"] == "Snooze for 1h, 4h or 24h. Usage: `/reauth snooze CASE 1h|4h|24h`"
    done = await op.type(f"resolve {second} the user  fixed it")
    assert done["text"] == f"You resolved case #{second}."

    async with sessions() as session:
        acked = await cases.get_case(session, case_id=first)
        closed = await cases.get_case(session, case_id=second)
    assert acked is not None and acked.acknowledged_by == "slack:U0ANA"
    assert closed is not None and closed.status == CaseStatus.RESOLVED
    assert closed.resolution == "the user fixed it"
    assert (await op.type(f"resolve {second} twice"))[
        "text"
    ] == f"Case #{second} is already resolved."
    assert ("slack:U0ANA", "acknowledged") in await case_events(sessions)


async def test_permissions_apply_to_commands(
    run: Any, sessions: Sessions, clock: FrozenClock
) -> None:
    case_id = await seed(sessions, clock, 1)
    op = await run('[permissions]\nack = ["U0LEAD"]\nrevoke = ["U0ADMIN"]\n', clock=clock)

    refused = await op.type(f"ack {case_id}")
    assert "not allowed" in refused["text"]
    async with sessions() as session:
        case = await cases.get_case(session, case_id=case_id)
    assert case is not None and case.acknowledged_at is None
    assert ("slack:U0ANA", "refused") in await case_events(sessions)

    no_revoke = await op.type(f"revoke {case_id}")
    assert "not allowed" in no_revoke["text"]
    prompt = await op.type(f"revoke {case_id}", user="U0ADMIN")
    (buttons,) = [b for b in prompt["blocks"] if b["type"] == "actions"]
    (button,) = buttons["elements"]
    assert (button["action_id"], button["value"], button["text"]["text"]) == (
        ids.REVOKE,
        str(case_id),
        "Delete grant",
    )


async def test_revoke_is_off_unless_someone_is_named(
    run: Any, sessions: Sessions, clock: FrozenClock
) -> None:
    case_id = await seed(sessions, clock, 1)
    op = await run(clock=clock)

    answer = await op.type(f"revoke {case_id}")

    assert answer["text"].startswith("Revoking tokens is turned off.")


async def test_retry_and_link_say_what_is_missing(
    run: Any, sessions: Sessions, clock: FrozenClock
) -> None:
    case_id = await seed(sessions, clock, 1)
    op = await run(clock=clock)

    retry = await op.type(f"retry {case_id}")
    link = await op.type(f"link {case_id}")

    assert "Nylas" in retry["text"]
    assert "NYLAS_REDIRECT_URI" in link["text"] or "NYLAS_CLIENT_ID" in link["text"]
    assert (await op.type("retry"))["text"] == "Which case? Usage: `/reauth retry CASE`"


async def test_stats_counts_the_queue(run: Any, sessions: Sessions, clock: FrozenClock) -> None:
    for n in range(1, 4):
        await seed(sessions, clock, n)
    clock.advance(hours=1)
    op = await run(clock=clock)
    await op.type("ack 1")

    report = shown(await op.type("stats"))
    assert "Open now: 3" in report and "reauth 3" in report
    assert "Acknowledged: 1, mean time to acknowledge 1 h 3 min" in report
    assert "Last 30d" in shown(await op.type("stats 30d"))
    wrong = await op.type("stats 1y")
    assert wrong["text"] == "Choose a window of 7d or 30d. Usage: `/reauth stats [7d|30d]`"


async def test_oncall_shows_the_policy_and_who_is_behind_groups(
    run: Any, slack: FakeSlack, sessions: Sessions, clock: FrozenClock
) -> None:
    op = await run()
    assert "No escalation policy is set" in shown(await op.type("oncall"))

    slack.add_user_group("S0ONCALL", ["U0SUE", "U0TOM"])
    policy = (
        '[escalation]\nrepeat = 1\n[[escalation.levels]]\nafter = "15m"\n'
        'mention = ["S0ONCALL"]\n[[escalation.levels]]\nafter = "1h"\ndm = ["U0LEAD"]\n'
    )
    await seed(sessions, clock, 1)
    op = await run(policy, clock=clock)
    rules = op.app.server.app[SERVICES].settings.policy.escalation
    await escalate_due(sessions, policy=rules, now=clock())  # schedules case 1
    text = shown(await op.type("oncall"))

    assert "1. after 15 min unacknowledged: mention group `S0ONCALL` (<@U0SUE>, <@U0TOM>)" in text
    assert "2. after 1 h unacknowledged: message <@U0LEAD>" in text
    assert "Levels run 2 times in all." in text
    assert "Next escalation: case #1 at <!date^" in text
    assert "oncall` takes no arguments" in (await op.type("oncall please"))["text"]


async def test_unsigned_or_replayed_commands_change_nothing(
    run: Any, slack: FakeSlack, sessions: Sessions, clock: FrozenClock
) -> None:
    case_id = await seed(sessions, clock, 1)
    op = await run(clock=clock)
    body = urlencode(
        {
            "command": ids.COMMAND,
            "text": f"ack {case_id}",
            "user_id": "U0ANA",
            "team_id": "T0TEST",
            "api_app_id": "A0APP",
            "response_url": slack.response_url("x"),
        }
    )

    unsigned = await op.app.post(ids.EVENTS_PATH, data=body)
    replayed = await op.app.post(
        ids.EVENTS_PATH, data=body, headers=signed(body, timestamp=1_700_000_000)
    )

    assert (unsigned.status, replayed.status) == (401, 401)
    async with sessions() as session:
        case = await cases.get_case(session, case_id=case_id)
    assert case is not None and case.acknowledged_at is None
    assert slack.responses_to("x") == []


@pytest.mark.parametrize(
    ("text", "usage"),
    [
        ("ack", "/reauth ack CASE"),
        ("link", "/reauth link CASE [--send]"),
        ("link 1 2", "/reauth link CASE [--send]"),
        ("link 1 --sned", "/reauth link CASE [--send]"),
        ("resolve", "/reauth resolve CASE [note]"),
        ("revoke", "/reauth revoke CASE"),
        ("show a b", "/reauth show CASE|EMAIL|ACCOUNT"),
        ("help me", "/reauth help"),
    ],
)
async def test_missing_or_extra_arguments_get_the_usage_line(
    run: Any, sessions: Sessions, text: str, usage: str
) -> None:
    op = await run()

    answer = await op.type(text)

    assert answer["text"].endswith(f"Usage: `{usage}`")
    assert await case_events(sessions) == []


async def test_oncall_still_answers_when_a_group_cannot_be_read(run: Any) -> None:
    op = await run('[escalation]\n[[escalation.levels]]\nafter = "15m"\nmention = ["S0GONE"]\n')

    text = shown(await op.type("oncall"))

    assert "1. after 15 min unacknowledged: mention group `S0GONE` (nobody) in the thread" in text


async def test_slow_work_is_answered_after_the_command_is_acknowledged(
    start: Any, slack: FakeSlack, sessions: Sessions, clock: FrozenClock, nylas_fake: FakeNylas
) -> None:
    case_id = await seed(sessions, clock, 1)
    nylas_fake.add_grant(id="g-1", email="user1@example.com", grant_status="valid")
    nylas_fake.delay(r"/v3/grants/g-1", 4)  # Nylas takes longer than Slack's 3 s
    app = await start(clock=clock, **nylas_settings(nylas_fake, "v3"))
    body = urlencode(
        {
            "command": ids.COMMAND,
            "text": f"retry {case_id}",
            "user_id": "U0ANA",
            "team_id": "T0TEST",
            "api_app_id": "A0APP",
            "response_url": slack.response_url("slow"),
        }
    )

    started = time.monotonic()
    response = await app.post(ids.EVENTS_PATH, data=body, headers=signed(body))
    acked_in = time.monotonic() - started

    # Slack has its acknowledgement within its deadline, while the Nylas call is still held by
    # the fake (whether that call has reached the fake yet is up to the scheduler).
    assert response.status == 200
    assert acked_in < 3.0
    assert slack.responses_to("slow") == []

    async def answered() -> bool:
        return bool(slack.responses_to("slow"))

    await eventually(answered, within=10)
    async with sessions() as session:
        case = await cases.get_case(session, case_id=case_id)
    assert case is not None and case.status == CaseStatus.RESOLVED
