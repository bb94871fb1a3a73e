"""The App Home tab: a signed app_home_opened event → views.publish of the viewer's view."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

from aiohttp.test_utils import TestClient
from slack_sdk.models.views import View
from sqlmodel import select

from bot.slack import ids
from bot.slack.home import MINE, NEWEST, NO_CASES_OF_YOURS, NO_OPEN_CASES, home_view
from storage.models import Account, Case, CaseStatus
from storage.reports import Tally
from tests.bot.slack.support import (
    NOW,
    Sessions,
    click,
    click_body,
    expire,
    signed,
    wait_posts,
)
from tests.bot.slack.test_blocks import HOSTILE, mentions
from tests.conftest import FrozenClock
from tests.fakes.slack import FakeSlack
from tests.waiting import eventually
from workflows.overview import Overview

# --- the view, rendered from data --------------------------------------------------------


def row(n: int, email: str, status: str = CaseStatus.OPEN) -> tuple[Case, Account]:
    account = Account(id=f"g-{n}", api_version="v3", email=email, first_seen_at=NOW, updated_at=NOW)
    opened = NOW - timedelta(hours=n)
    case = Case(
        id=n,
        account_id=account.id,
        kind="reauth",
        status=status,
        state="invalid",
        opened_at=opened,
        updated_at=opened,
    )
    return case, account


def check_home(view: dict[str, Any]) -> None:
    """Valid for slack-sdk's models, within Slack's limits, and unable to ping anyone."""
    assert view["type"] == "home"
    View(**view).to_dict()  # runs slack-sdk's validators
    assert 0 < len(view["blocks"]) <= 100
    for block in view["blocks"]:
        if block["type"] == "section":
            assert len(block["text"]["text"]) <= 3000
    assert mentions(view["blocks"]) == []


def texts(view: dict[str, Any]) -> str:
    return json.dumps(view["blocks"], ensure_ascii=False)


def test_the_fullest_home_view_stays_within_slacks_limits() -> None:
    long_hostile = HOSTILE * 8  # the longest an email column holds, and all of it escaped
    mine = tuple(row(n, long_hostile, CaseStatus.ACKNOWLEDGED) for n in range(1, MINE + 1))
    newest = tuple(row(n, long_hostile) for n in range(100, 100 + NEWEST))
    found = Overview(
        mine=mine,
        more_mine=True,
        newest=newest,
        more_open=True,
        by_status=(Tally("open", 90), Tally("acknowledged", 40), Tally("<!here>", 1)),
        by_kind=(Tally("reauth", 130), Tally("<!channel>", 1)),
        oldest_unacknowledged=row(99, long_hostile),
    )
    view = home_view(found, now=NOW)
    check_home(view)
    assert "&lt;!channel&gt;" in texts(view)
    assert f"Only your {MINE} newest are listed." in texts(view)
    assert f"{ids.COMMAND} list" in texts(view)


def test_an_empty_queue_says_so() -> None:
    found = Overview((), False, (), False, (), (), None)
    view = home_view(found, now=NOW)
    check_home(view)
    assert NO_CASES_OF_YOURS in texts(view)
    assert NO_OPEN_CASES in texts(view)


# --- end to end ---------------------------------------------------------------------------


def home_opened(user: str, *, tab: str = "home") -> str:
    """The event_callback Slack sends when ``user`` opens a tab of the app."""
    event: dict[str, Any] = {
        "type": ids.APP_HOME_OPENED,
        "user": user,
        "channel": "D0HOME",
        "tab": tab,
        "event_ts": f"{time.time():.6f}",
    }
    return json.dumps(
        {
            "token": "legacy",
            "team_id": "T0TEST",
            "api_app_id": "A0APP",
            "event": event,
            "type": "event_callback",
            "event_id": f"Ev{user}{tab}",
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "team_id": "T0TEST",
                    "user_id": "U0BOT",
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
        }
    )


def json_signed(body: str, **kw: Any) -> dict[str, str]:
    """Headers as Slack signs an Events API request (a JSON body)."""
    return {**signed(body, **kw), "Content-Type": "application/json"}


async def send(app: TestClient, body: str, headers: dict[str, str]) -> int:
    response = await app.post(ids.EVENTS_PATH, data=body, headers=headers)
    return response.status


async def home_of(slack: FakeSlack, user: str) -> dict[str, Any]:
    async def published() -> bool:
        return user in slack.home_tabs

    await eventually(published)
    (call,) = [p for p in slack.views_published if p["user_id"] == user]
    return dict(call["view"])


def listed(view: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The case lines of "Your cases" and of the open queue, in order."""
    lines: tuple[list[str], list[str]] = ([], [])
    part = 0
    for block in view["blocks"]:
        if block["type"] == "divider":
            part = 1
        text = block.get("text", {}).get("text", "")
        if block["type"] == "section" and text.startswith("*#"):
            lines[part].append(text)
    return lines


def numbers(lines: list[str]) -> list[str]:
    return [line.split("*")[1] for line in lines]


async def open_three_cases(app: TestClient, slack: FakeSlack, clock: FrozenClock) -> None:
    for n, email in enumerate(("ana@example.com", "bob@example.com", HOSTILE), 1):
        await expire(app, grant_id=f"g-{n}", email=email)
        await wait_posts(slack, n)
        clock.advance(minutes=10)


async def acknowledged(sessions: Sessions, case_id: int) -> None:
    async def done() -> bool:
        async with sessions() as session:
            case = (await session.exec(select(Case).where(Case.id == case_id))).one()
            return case.acknowledged_by is not None

    await eventually(done)


async def test_the_home_tab_shows_the_viewers_cases_and_the_open_queue(
    start: Any, slack: FakeSlack, sessions: Sessions
) -> None:
    clock = FrozenClock(NOW)
    app = await start(clock=clock)
    await open_three_cases(app, slack, clock)
    assert await click(app, click_body(slack, ids.ACK, "1", "U0ANA")) == 200
    await acknowledged(sessions, 1)

    body = home_opened("U0ANA")
    assert await send(app, body, json_signed(body)) == 200
    view = await home_of(slack, "U0ANA")
    check_home(view)
    mine, queue = listed(view)
    assert numbers(mine) == ["#1"]
    assert mine[0].startswith(
        "*#1* ana@example.com: grant has expired and must be re-authenticated. Acknowledged"
    )
    assert numbers(queue) == ["#3", "#2", "#1"]  # newest first; case 1 is still open
    text = texts(view)
    assert "*3 open cases*\\nBy status: Open 2 · Acknowledged 1\\n" in text
    assert "By kind: Needs re-authentication 3" in text
    # Case 1 was opened first but is taken; of the others, case 2 has waited longest.
    assert "Waiting longest for someone to acknowledge it: *#2* bob@example.com" in text
    assert "&lt;!channel&gt;" in text  # case 3's email, shown and escaped


async def test_a_viewer_with_no_cases_sees_an_empty_state_and_the_queue(
    start: Any, slack: FakeSlack
) -> None:
    clock = FrozenClock(NOW)
    app = await start(clock=clock)
    await open_three_cases(app, slack, clock)
    body = home_opened("U0BOB")
    assert await send(app, body, json_signed(body)) == 200
    view = await home_of(slack, "U0BOB")
    check_home(view)
    assert listed(view)[0] == []
    assert NO_CASES_OF_YOURS in texts(view)
    assert "*3 open cases*" in texts(view)


async def test_an_empty_database_shows_both_empty_states(start: Any, slack: FakeSlack) -> None:
    app = await start()
    body = home_opened("U0NEW")
    assert await send(app, body, json_signed(body)) == 200
    view = await home_of(slack, "U0NEW")
    check_home(view)
    assert NO_CASES_OF_YOURS in texts(view) and NO_OPEN_CASES in texts(view)


async def test_opening_the_messages_tab_publishes_nothing(start: Any, slack: FakeSlack) -> None:
    app = await start()
    messages = home_opened("U0MSG", tab="messages")
    assert await send(app, messages, json_signed(messages)) == 200
    home = home_opened("U0HOME")
    assert await send(app, home, json_signed(home)) == 200
    # The first event was handled before the second was sent, and published nothing.
    await home_of(slack, "U0HOME")
    assert [p["user_id"] for p in slack.views_published] == ["U0HOME"]


async def test_unsigned_and_badly_signed_events_are_rejected(start: Any, slack: FakeSlack) -> None:
    app = await start()
    body = home_opened("U0EVIL")
    forged = {**json_signed(body), "X-Slack-Signature": "v0=" + "0" * 64}
    stale = json_signed(body, timestamp=int(time.time()) - 10 * 60)
    altered = json_signed(body.replace("U0EVIL", "U0ANA"))  # signed over another body
    for headers in ({"Content-Type": "application/json"}, forged, stale, altered):
        assert await send(app, body, headers) == 401
    # A signed event after them is served, and is the only one that ever was.
    good = home_opened("U0GOOD")
    assert await send(app, good, json_signed(good)) == 200
    await home_of(slack, "U0GOOD")
    assert [p["user_id"] for p in slack.views_published] == ["U0GOOD"]


async def test_slacks_url_verification_is_answered(start: Any) -> None:
    # Slack checks the request URL this way when event subscriptions are turned on.
    app = await start()
    body = json.dumps({"token": "legacy", "challenge": "3eZbrw1aB", "type": "url_verification"})
    response = await app.post(ids.EVENTS_PATH, data=body, headers=json_signed(body))
    assert response.status == 200
    assert (await response.json())["challenge"] == "3eZbrw1aB"
