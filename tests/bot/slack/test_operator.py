"""The operator of a Slack request: resolved once by middleware, read by every listener."""

from __future__ import annotations

from typing import Any

from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.response import BoltResponse

from bot.slack import ids
from bot.slack.operator import Operator, operator_middleware, operator_of, user_of
from storage import actors, cases
from tests.bot.slack.support import Sessions, case_events, click, click_body, expire, wait_posts
from tests.fakes.slack import FakeSlack
from tests.waiting import eventually
from workflows.policy import Permissions


class Directory:
    """User groups as the policy sees them, counting how often a group is looked up."""

    def __init__(self, groups: dict[str, set[str]]) -> None:
        self.groups = groups
        self.asked: list[str] = []

    async def members(self, group_id: str) -> frozenset[str]:
        self.asked.append(group_id)
        return frozenset(self.groups.get(group_id, set()))


async def through_middleware(
    permissions: Permissions, directory: Directory, body: dict[str, Any], listener: Any
) -> AsyncBoltContext:
    """Run one request's middleware, then ``listener(context)`` as the next step."""
    context = AsyncBoltContext()
    middleware = operator_middleware(permissions, directory.members)

    async def next_() -> BoltResponse:
        await listener(context)
        return BoltResponse(status=200)

    response = await middleware(context=context, body=body, next=next_)
    assert response.status == 200
    return context


async def test_the_operator_and_each_permission_are_resolved_once_per_request() -> None:
    permissions = Permissions(ack=["S0ONCALL"], revoke=["S0ADMINS", "U0LEAD"])
    directory = Directory({"S0ONCALL": {"U0ANA"}, "S0ADMINS": {"U0ROOT"}})
    answers: list[bool] = []

    async def listener(context: AsyncBoltContext) -> None:
        operator = operator_of(context)
        assert (operator.user_id, operator.actor) == ("U0ANA", actors.slack("U0ANA"))
        # A listener that checks a permission twice (the revoke button does) asks once.
        answers.extend([await operator.may("revoke"), await operator.may("revoke")])
        answers.extend([await operator.may("ack"), await operator.may("snooze")])

    await through_middleware(permissions, directory, {"user": {"id": "U0ANA"}}, listener)
    assert answers == [False, False, True, True]
    assert directory.asked == ["S0ADMINS", "S0ONCALL"]  # snooze lists no one: open to all

    # The next request resolves its own operator: a change of group membership is seen.
    directory.groups["S0ADMINS"].add("U0ANA")

    async def later(context: AsyncBoltContext) -> None:
        assert await operator_of(context).may("revoke")

    await through_middleware(permissions, directory, {"user": {"id": "U0ANA"}}, later)
    assert directory.asked == ["S0ADMINS", "S0ONCALL", "S0ADMINS"]


def test_the_user_is_read_from_a_click_a_form_or_a_command() -> None:
    assert user_of({"type": "block_actions", "user": {"id": "U0ANA"}}) == "U0ANA"
    assert user_of({"type": "view_submission", "user": {"id": "U0BOB"}}) == "U0BOB"
    assert user_of({"command": "/reauth", "user_id": "U0CY"}) == "U0CY"
    assert user_of({"type": "event_callback"}) == ""


async def test_an_operator_asks_the_policy_as_it_is_written() -> None:
    directory = Directory({"S0ANA": {"U0ANA"}})
    # A group's id names its members, never itself: a forged user id "S…" does not pass.
    forged = Operator("S0ANA", Permissions(ack=["S0ANA"]), directory.members)
    assert not await forged.may("ack")
    # Revoking must name someone; everything unlisted is open.
    anyone = Operator("U0ANA", Permissions(), directory.members)
    assert not await anyone.may("revoke")
    assert await anyone.may("resolve")


async def test_a_click_by_someone_not_allowed_gets_the_error_and_changes_nothing(
    start: Any, slack: FakeSlack, sessions: Sessions
) -> None:
    slack.add_user_group("S0ONCALL", ["U0ALICE"])
    app = await start('[permissions]\nsnooze = ["S0ONCALL"]\nresolve = ["S0ONCALL"]\n')
    await expire(app)
    await wait_posts(slack, 1)

    # A snooze (a menu) and the resolve button (which opens a modal when allowed).
    await click(app, click_body(slack, ids.SNOOZE, "1:4h", "U0MALLORY", n=1, select=True))
    await click(app, click_body(slack, ids.RESOLVE, "1", "U0MALLORY", n=2))

    async def answered() -> bool:
        return len(slack.responses) == 2

    await eventually(answered)
    assert sorted(r["text"] for r in slack.responses) == [
        "You are not allowed to resolve cases.",
        "You are not allowed to snooze cases.",
    ]
    assert all(r["response_type"] == "ephemeral" for r in slack.responses)
    async with sessions() as session:
        case = await cases.get_case(session, case_id=1)
    assert case is not None and (case.status, case.snoozed_until) == ("open", None)
    assert slack.calls_to("views.open") == [] and slack.calls_to("chat.update") == []
    refused = [e for e in await case_events(sessions) if e[1] == "refused"]
    assert refused == [("slack:U0MALLORY", "refused")] * 2

    # A member of the group is let through by the same middleware.
    await click(app, click_body(slack, ids.SNOOZE, "1:4h", "U0ALICE", n=3, select=True))

    async def snoozed() -> bool:
        return ("slack:U0ALICE", "snoozed") in await case_events(sessions)

    await eventually(snoozed)
