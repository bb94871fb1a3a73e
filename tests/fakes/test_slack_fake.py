"""The fake Slack Web API, driven by the real slack-sdk AsyncWebClient over HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from tests.fakes.slack import FakeSlack

TOKEN = "xoxb-test-token"
SECTION = {"type": "section", "text": {"type": "mrkdwn", "text": "*Case 1*"}}
BUTTONS = {
    "type": "actions",
    "elements": [
        {
            "type": "button",
            "action_id": "resolve",
            "text": {"type": "plain_text", "text": "Resolve"},
        }
    ],
}


class ManualClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def slack(clock: ManualClock) -> AsyncIterator[FakeSlack]:
    async with FakeSlack(bot_token=TOKEN, clock=clock) as fake:
        yield fake


@pytest.fixture
def client(slack: FakeSlack) -> AsyncWebClient:
    return AsyncWebClient(token=TOKEN, base_url=slack.url)


async def api_error(call: Awaitable[Any]) -> SlackApiError:
    """Await `call` and return the SlackApiError it raised."""
    with pytest.raises(SlackApiError) as caught:
        await call
    return caught.value


async def test_auth_test_identifies_the_bot(slack: FakeSlack, client: AsyncWebClient) -> None:
    answer = await client.auth_test()

    assert (answer["team_id"], answer["user_id"], answer["bot_id"]) == ("T0TEST", "U0BOT", "B0BOT")
    assert answer["url"].startswith("https://")
    # slack-sdk sends auth.test as a POST whose (empty) arguments sit in the query string.
    assert slack.calls[0].http_method == "POST"
    assert slack.calls[0].headers["Authorization"] == f"Bearer {TOKEN}"


async def test_post_update_and_thread_round_trip(slack: FakeSlack, client: AsyncWebClient) -> None:
    posted = await client.chat_postMessage(channel="C1", text="Case 1", blocks=[SECTION, BUTTONS])
    ts = posted["ts"]
    assert posted["channel"] == "C1"
    assert posted["message"]["blocks"] == [SECTION, BUTTONS]
    assert slack.messages[("C1", ts)]["text"] == "Case 1"

    # Text only: Slack keeps the blocks it already has, and marks the text edited.
    await client.chat_update(channel="C1", ts=ts, text="Case 1 (resolving)")
    message = slack.messages[("C1", ts)]
    assert message["text"] == "Case 1 (resolving)"
    assert message["blocks"] == [SECTION, BUTTONS]
    assert message["edited"]["user"] == "U0BOT"

    # New blocks replace the old ones entirely: the buttons go away.
    updated = await client.chat_update(
        channel="C1", ts=ts, text="Case 1 (resolving)", blocks=[SECTION]
    )
    assert updated["message"]["blocks"] == [SECTION]
    assert slack.messages[("C1", ts)]["blocks"] == [SECTION]
    await client.chat_update(channel="C1", ts=ts, text="Case 1 (resolving)", blocks=[])
    assert slack.messages[("C1", ts)]["blocks"] == []

    first = await client.chat_postMessage(channel="C1", text="first", thread_ts=ts)
    second = await client.chat_postMessage(
        channel="C1", text="second", thread_ts=ts, reply_broadcast=True
    )
    replies = slack.thread("C1", ts)
    assert [r["text"] for r in replies] == ["first", "second"]
    assert replies[0]["thread_ts"] == ts
    assert replies[1]["subtype"] == "thread_broadcast"
    assert slack.messages[("C1", ts)]["reply_count"] == 2
    assert slack.messages[("C1", ts)]["latest_reply"] == second["ts"]
    assert float(ts) < float(first["ts"]) < float(second["ts"])
    assert ts < first["ts"] < second["ts"]


async def test_update_of_an_unknown_message_is_message_not_found(client: AsyncWebClient) -> None:
    error = await api_error(client.chat_update(channel="C1", ts="1.000000", text="x"))

    assert error.response["error"] == "message_not_found"


async def test_post_needs_text_or_blocks(client: AsyncWebClient) -> None:
    error = await api_error(client.api_call("chat.postMessage", json={"channel": "C1"}))

    assert error.response["error"] == "no_text"


async def test_form_bodies_with_json_encoded_blocks_are_decoded(
    slack: FakeSlack, client: AsyncWebClient
) -> None:
    data = {"channel": "C1", "text": "form", "blocks": json.dumps([SECTION])}
    posted = await client.api_call("chat.postMessage", data=data)

    call = slack.calls_to("chat.postMessage")[0]
    assert call.content_type == "application/x-www-form-urlencoded"
    assert call.params["blocks"] == [SECTION]
    assert slack.messages[("C1", posted["ts"])]["blocks"] == [SECTION]


async def test_ephemeral_is_recorded_not_stored(slack: FakeSlack, client: AsyncWebClient) -> None:
    answer = await client.chat_postEphemeral(channel="C1", user="U0ALICE", text="only you")

    assert answer["message_ts"]
    assert slack.ephemerals == [{"channel": "C1", "user": "U0ALICE", "text": "only you"}]
    assert slack.messages == {}


async def test_views_open_update_and_publish(slack: FakeSlack, client: AsyncWebClient) -> None:
    modal = {"type": "modal", "title": {"type": "plain_text", "text": "Reauth"}, "blocks": []}
    opened = await client.views_open(trigger_id="123.456.abc", view=modal)
    view = opened["view"]
    assert view["id"].startswith("V")
    assert view["title"]["text"] == "Reauth"

    changed = {**modal, "title": {"type": "plain_text", "text": "Done"}}
    updated = await client.views_update(view_id=view["id"], view=changed, hash=view["hash"])
    assert updated["view"]["id"] == view["id"]
    assert updated["view"]["title"]["text"] == "Done"
    stale = await api_error(client.views_update(view_id=view["id"], view=modal, hash=view["hash"]))
    assert stale.response["error"] == "hash_conflict"

    home = {"type": "home", "blocks": [SECTION]}
    published = await client.views_publish(user_id="U0ALICE", view=home)
    again = await client.views_publish(user_id="U0ALICE", view=home)
    assert again["view"]["id"] == published["view"]["id"]
    assert slack.home_tabs["U0ALICE"]["blocks"] == [SECTION]
    assert [v["view"]["type"] for v in slack.views] == ["modal", "modal", "home", "home"]
    assert slack.views_opened[0]["trigger_id"] == "123.456.abc"
    assert len(slack.views_published) == 2


async def test_views_open_without_trigger_id_is_invalid_arguments(client: AsyncWebClient) -> None:
    modal = {"type": "modal", "title": {"type": "plain_text", "text": "x"}, "blocks": []}
    error = await api_error(client.views_open(view=modal))

    assert error.response["error"] == "invalid_arguments"
    assert "trigger_id" in error.response["response_metadata"]["messages"][0]


async def test_usergroup_members(slack: FakeSlack, client: AsyncWebClient) -> None:
    slack.add_user_group("S0SECURITY", ["U0ALICE", "U0BOB"])

    answer = await client.usergroups_users_list(usergroup="S0SECURITY")
    assert answer["users"] == ["U0ALICE", "U0BOB"]
    # Read methods go out as GET with the arguments in the query string.
    assert slack.calls[-1].http_method == "GET"
    unknown = await api_error(client.usergroups_users_list(usergroup="S0NOPE"))
    assert unknown.response["error"] == "no_such_subteam"


async def test_users_info(slack: FakeSlack, client: AsyncWebClient) -> None:
    slack.add_user("U0ALICE", name="alice", real_name="Alice A.", tz="Europe/Paris")

    user = (await client.users_info(user="U0ALICE"))["user"]
    assert (user["name"], user["real_name"], user["tz"]) == ("alice", "Alice A.", "Europe/Paris")
    assert user["tz_offset"] in (3600, 7200)
    missing = await api_error(client.users_info(user="U0NOBODY"))
    assert missing.response["error"] == "user_not_found"


async def test_conversations_info(client: AsyncWebClient) -> None:
    answer = await client.conversations_info(channel="C0OPS")

    assert answer["channel"]["id"] == "C0OPS"


async def test_conversations_history_lists_newest_first_without_replies(
    client: AsyncWebClient,
) -> None:
    meta = {"event_type": "case", "event_payload": {"case_id": 7}}
    first = await client.chat_postMessage(channel="C1", text="one", metadata=meta)
    await client.chat_postMessage(channel="C1", text="reply", thread_ts=first["ts"])
    second = await client.chat_postMessage(channel="C1", text="two")
    await client.chat_postMessage(channel="C2", text="elsewhere")

    plain = await client.conversations_history(channel="C1")
    full = await client.conversations_history(channel="C1", include_all_metadata=True)
    after = await client.conversations_history(channel="C1", oldest=first["ts"])

    assert [m["text"] for m in plain["messages"]] == ["two", "one"]
    assert "metadata" not in plain["messages"][1]
    assert full["messages"][1]["metadata"] == meta
    assert [m["ts"] for m in after["messages"]] == [second["ts"]]


async def test_conversations_history_pages_with_a_cursor(client: AsyncWebClient) -> None:
    for n in range(5):
        await client.chat_postMessage(channel="C1", text=str(n))

    seen: list[str] = []
    cursor = None
    while True:
        page = await client.conversations_history(channel="C1", limit=2, cursor=cursor)
        seen += [m["text"] for m in page["messages"]]
        cursor = page["response_metadata"]["next_cursor"]
        if not page["has_more"]:
            break

    assert seen == ["4", "3", "2", "1", "0"]
    bad = await api_error(client.conversations_history(channel="C1", oldest="yesterday"))
    assert bad.response["error"] == "invalid_ts_oldest"


async def test_answer_late_carries_the_call_out_before_the_client_gives_up(
    slack: FakeSlack,
) -> None:
    slack.answer_late("chat.postMessage", 5)
    impatient = AsyncWebClient(token=TOKEN, base_url=slack.url, timeout=1)

    with pytest.raises(TimeoutError):
        await impatient.chat_postMessage(channel="C1", text="sent anyway")

    assert [m["text"] for m in slack.messages.values()] == ["sent anyway"]
    answered = await impatient.chat_postMessage(channel="C1", text="on time")
    assert answered["ok"]


@pytest.mark.parametrize(("token", "error"), [(None, "not_authed"), ("xoxb-wrong", "invalid_auth")])
async def test_auth_errors(slack: FakeSlack, token: str | None, error: str) -> None:
    client = AsyncWebClient(token=token, base_url=slack.url)

    refused = await api_error(client.chat_postMessage(channel="C1", text="hi"))

    assert refused.response.status_code == 200
    assert refused.response["error"] == error
    assert slack.messages == {}


async def test_unknown_method(client: AsyncWebClient) -> None:
    error = await api_error(client.api_call("chat.frobnicate"))

    assert error.response["error"] == "unknown_method"


async def test_injected_error_answers_ok_false_once(
    slack: FakeSlack, client: AsyncWebClient
) -> None:
    slack.fail("chat.postMessage", error="channel_not_found", times=1)

    error = await api_error(client.chat_postMessage(channel="C1", text="hi"))
    assert error.response.status_code == 200
    assert error.response["error"] == "channel_not_found"
    await client.chat_postMessage(channel="C1", text="hi")
    assert len(slack.calls_to("chat.postMessage")) == 2


async def test_injected_429_surfaces_without_a_retry_handler(
    slack: FakeSlack, client: AsyncWebClient
) -> None:
    slack.fail("chat.update", status=429, retry_after=2, times=3)

    error = await api_error(client.chat_update(channel="C1", ts="1.000000", text="x"))

    assert error.response.status_code == 429
    assert error.response.headers["Retry-After"] == "2"
    assert error.response["error"] == "ratelimited"
    assert slack.ratelimited_count == 1


async def test_rate_limit_retry_handler_waits_and_succeeds(slack: FakeSlack) -> None:
    client = AsyncWebClient(
        token=TOKEN,
        base_url=slack.url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)],
    )
    slack.fail("chat.postMessage", status=429, retry_after=1, times=1)

    posted = await client.chat_postMessage(channel="C1", text="hi")

    assert posted["ok"]
    assert len(slack.calls_to("chat.postMessage")) == 2
    assert slack.ratelimited_count == 1


async def test_injected_server_error(slack: FakeSlack, client: AsyncWebClient) -> None:
    slack.fail("chat.postMessage", status=503, times=2)

    for _ in range(2):
        error = await api_error(client.chat_postMessage(channel="C1", text="hi"))
        assert error.response.status_code == 503
    await client.chat_postMessage(channel="C1", text="hi")


async def test_per_channel_rate_limit(
    slack: FakeSlack, client: AsyncWebClient, clock: ManualClock
) -> None:
    slack.rate_limit_per_channel(1.0)

    await client.chat_postMessage(channel="C1", text="one")
    clock.now += 0.4
    error = await api_error(client.chat_postMessage(channel="C1", text="two"))
    assert error.response.status_code == 429
    assert error.response.headers["Retry-After"] == "1"
    await client.chat_postMessage(channel="C2", text="other channel")
    assert slack.ratelimited_count == 1
    assert [m["text"] for m in slack.messages.values()] == ["one", "other channel"]

    clock.now += 0.6
    await client.chat_postMessage(channel="C1", text="two")


async def test_per_channel_rate_limit_on_the_real_clock() -> None:
    async with FakeSlack(bot_token=TOKEN) as slack:
        slack.rate_limit_per_channel(1.0)
        client = AsyncWebClient(token=TOKEN, base_url=slack.url)

        await client.chat_postMessage(channel="C1", text="one")
        error = await api_error(client.chat_postMessage(channel="C1", text="two"))

    assert error.response.status_code == 429
    assert error.response.headers["Retry-After"] == "1"


async def test_burst_allows_that_many_posts_at_once(
    slack: FakeSlack, client: AsyncWebClient, clock: ManualClock
) -> None:
    slack.rate_limit_per_channel(0.5, burst=2)

    await client.chat_postMessage(channel="C1", text="one")
    await client.chat_postMessage(channel="C1", text="two")
    error = await api_error(client.chat_postMessage(channel="C1", text="three"))
    assert error.response.headers["Retry-After"] == "2"
    clock.now += 2
    await client.chat_postMessage(channel="C1", text="three")


async def test_response_url_posts_are_recorded(slack: FakeSlack) -> None:
    webhook = AsyncWebhookClient(slack.response_url(7))

    answer = await webhook.send(text="Resolved", replace_original=True)

    assert (answer.status_code, answer.body) == (200, "ok")
    assert slack.responses == [{"text": "Resolved", "replace_original": True}]
    assert slack.responses_to(7) == slack.responses
    assert slack.responses_to(8) == []
