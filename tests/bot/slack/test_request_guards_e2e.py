"""Signed Slack requests that must still not be taken at their word, end to end: another team
or app, a modal the app never opened, a copy of a request already served, a user id that is a
user group's id, and a "More" button paging beyond any number the database takes."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient

from bot.slack import ids
from storage import cases
from tests.bot.slack.support import (
    CHANNEL,
    Sessions,
    case_events,
    click_body,
    click_payload,
    expire,
    signed,
    wait_posts,
)
from tests.bot.slack.test_e2e import modal_recorded, opened_view, view_submission
from tests.bot.slack.test_home import home_opened
from tests.fakes.slack import FakeSlack
from tests.waiting import eventually

WRITES = ("chat.postMessage", "chat.update", "chat.postEphemeral", "views.open", "views.publish")
HOSTILE_TEAM = "T0OTHER\n" + "x" * 5000  # also tries to forge a second log line


def writes(slack: FakeSlack) -> list[int]:
    return [len(slack.calls_to(method)) for method in WRITES]


async def post(app: TestClient, body: str, content_type: str | None = None) -> tuple[int, str]:
    headers = signed(body)
    if content_type:
        headers["Content-Type"] = content_type
    response = await app.post(ids.EVENTS_PATH, data=body, headers=headers)
    return response.status, await response.text()


def command_body(slack: FakeSlack, text: str, *, team: str = "T0TEST", app: str = "A0APP") -> str:
    return urlencode(
        {
            "team_id": team,
            "api_app_id": app,
            "channel_id": CHANNEL,
            "user_id": "U0ALICE",
            "command": ids.COMMAND,
            "text": text,
            "response_url": slack.response_url("cmd"),
            "trigger_id": "1.2.x",
        }
    )


def forged_click(slack: FakeSlack, *, team: str, app: str) -> str:
    payload = click_payload(slack, ids.ACK, "1", "U0ALICE")
    payload["team"] = {"id": team, "domain": "elsewhere"}
    payload["user"]["team_id"] = team
    payload["api_app_id"] = app
    return urlencode({"payload": json.dumps(payload)})


def forged_event(*, team: str, app: str) -> str:
    event = json.loads(home_opened("U0BOB"))
    event |= {"team_id": team, "api_app_id": app}
    event["authorizations"][0]["team_id"] = team
    return json.dumps(event)


@pytest.mark.parametrize(
    ("team", "app"),
    [("T0OTHER", "A0APP"), ("T0TEST", "A0OTHER"), (HOSTILE_TEAM, "A0OTHER"), ("T0TEST", "")],
    ids=["other team", "other app", "hostile team", "no app"],
)
@pytest.mark.parametrize("surface", ["click", "command", "event"])
async def test_a_request_from_another_team_or_app_is_refused(
    start: Any,
    slack: FakeSlack,
    sessions: Sessions,
    caplog: pytest.LogCaptureFixture,
    team: str,
    app: str,
    surface: str,
) -> None:
    client = await start()
    await expire(client)
    await wait_posts(slack, 1)
    before, sent = await case_events(sessions), writes(slack)
    body, content_type = {
        "click": (forged_click(slack, team=team, app=app), None),
        "command": (command_body(slack, "ack 1", team=team, app=app), None),
        "event": (forged_event(team=team, app=app), "application/json"),
    }[surface]
    with caplog.at_level(logging.INFO, logger="reauthbot.slack.guard"):
        status, text = await post(client, body, content_type)
    assert (status, text) == (403, "forbidden")
    await client.get("/healthz")  # anything wrongly started has a moment to show
    assert await case_events(sessions) == before
    assert writes(slack) == sent and slack.responses == []
    (record,) = [r for r in caplog.records if r.name == "reauthbot.slack.guard"]
    line = record.getMessage()
    assert record.levelno == logging.INFO and "\n" not in line and len(line) < 200


async def test_the_apps_own_ids_are_learned_once(start: Any, slack: FakeSlack) -> None:
    client = await start()
    for n in range(3):
        assert (await post(client, home_opened(f"U0USER{n}"), "application/json"))[0] == 200
    assert len(slack.calls_to("auth.test")) >= 1  # Bolt asks too, for its own reasons
    assert [c.params["bot"] for c in slack.calls_to("bots.info")] == [slack.bot_id]


async def test_a_modal_the_app_never_opened_is_refused(
    start: Any, slack: FakeSlack, sessions: Sessions
) -> None:
    client = await start()
    await expire(client)
    await wait_posts(slack, 1)
    body = view_submission("closed by someone who never clicked", "1", view_id="V0FORGED")
    status, text = await post(client, body)
    assert status == 200
    answer = json.loads(text)
    assert answer["response_action"] == "errors"
    assert "not opened by reauthbot" in answer["errors"][ids.NOTE_BLOCK]
    async with sessions() as session:
        case = await cases.get_case(session, case_id=1)
    assert case is not None and case.status != "resolved"
    assert ("slack:U0ALICE", "resolved") not in await case_events(sessions)


async def test_a_modal_opened_on_one_replica_is_accepted_on_another(
    start: Any, slack: FakeSlack, sessions: Sessions
) -> None:
    first, second = await start(), await start()
    await expire(first)
    await wait_posts(slack, 1)
    await post(first, click_body(slack, ids.RESOLVE, "1", "U0ALICE"))

    async def opened() -> bool:
        return await modal_recorded(slack, sessions)

    await eventually(opened)
    body = view_submission("fixed", "1", view_id=opened_view(slack, ids.RESOLVE_MODAL))
    assert await post(second, body) == (200, "")

    async def resolved() -> bool:
        return ("slack:U0ALICE", "resolved") in await case_events(sessions)

    await eventually(resolved)


async def test_a_copy_of_a_served_command_is_ignored_on_any_replica(
    start: Any, slack: FakeSlack, sessions: Sessions
) -> None:
    first, second = await start(), await start()
    await expire(first)
    await wait_posts(slack, 1)
    body = command_body(slack, "snooze 1 4h")
    headers = signed(body)
    assert (await first.post(ids.EVENTS_PATH, data=body, headers=headers)).status == 200

    async def done() -> bool:  # answered, and the alert's update and thread line are sent
        shown = slack.calls_to("chat.update") and len(slack.calls_to("chat.postMessage")) >= 2
        return bool(slack.responses_to("cmd") and shown)

    await eventually(done)
    before, sent, answers = await case_events(sessions), writes(slack), len(slack.responses)
    copy = await second.post(ids.EVENTS_PATH, data=body, headers=headers)
    assert (copy.status, await copy.text()) == (200, "")
    await second.get("/healthz")
    assert await case_events(sessions) == before
    assert writes(slack) == sent and len(slack.responses) == answers
    # Signed anew (a later timestamp), the same command is a new request and is served.
    again = command_body(slack, "snooze 1 4h")
    await asyncio.sleep(1.05)  # a new second: a new timestamp and so a new signature
    assert (await second.post(ids.EVENTS_PATH, data=again, headers=signed(again))).status == 200

    async def served() -> bool:
        return len(slack.responses) > answers

    await eventually(served)


async def test_a_user_id_equal_to_a_group_id_is_not_a_member(
    start: Any, slack: FakeSlack, sessions: Sessions
) -> None:
    slack.add_user_group("S0OPS", ["U0OPS"])
    client = await start('[permissions]\nack = ["S0OPS"]\n')
    await expire(client)
    await wait_posts(slack, 1)
    await post(client, click_body(slack, ids.ACK, "1", "S0OPS"))

    async def refused() -> bool:
        return ("slack:S0OPS", "refused") in await case_events(sessions)

    await eventually(refused)
    await post(client, click_body(slack, ids.ACK, "1", "U0OPS", n=2))

    async def acked() -> bool:
        return ("slack:U0OPS", "acknowledged") in await case_events(sessions)

    await eventually(acked)
    assert ("slack:S0OPS", "acknowledged") not in await case_events(sessions)


@pytest.mark.parametrize("offset", [2**63, 2**64, 10**40])
async def test_a_more_button_beyond_any_offset_cannot_be_paged(
    start: Any, slack: FakeSlack, sessions: Sessions, offset: int
) -> None:
    client = await start()
    payload = {
        "type": "block_actions",
        "user": {"id": "U0ANA", "team_id": "T0TEST"},
        "team": {"id": "T0TEST"},
        "api_app_id": "A0APP",
        "response_url": slack.response_url("more"),
        "actions": [
            {
                "action_id": ids.LIST_MORE,
                "value": json.dumps({"offset": offset, "statuses": [], "kinds": []}),
                "type": "button",
            }
        ],
    }
    assert (await post(client, urlencode({"payload": json.dumps(payload)})))[0] == 200

    async def answered() -> bool:
        return bool(slack.responses_to("more"))

    await eventually(answered)
    (answer,) = slack.responses_to("more")
    assert "can no longer be paged" in answer["text"]
