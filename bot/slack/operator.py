"""Who acts in a Slack request, and what they may do, resolved once as Bolt middleware.

``operator_middleware`` puts an ``Operator`` in the context of every request that gets past
the guards: the Slack user, their actor as the audit log writes it (``storage.actors``) and
their permissions under the ``[permissions]`` policy. Listeners take it from the context
(``operator_of``) instead of reading the user from the payload and asking the policy again.

A permission is worked out the first time a listener asks for it, after the listener has
acknowledged the request: a user group named in the policy may need a Slack call
(``usergroups.users.list``), which must not hold up Slack's 3 s deadline. Each answer is then
kept for the rest of the request, so one click never asks twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.response import BoltResponse

from storage import actors
from workflows.permissions import GroupMembers, is_allowed
from workflows.policy import Permissions

OPERATOR = "reauthbot_operator"  # the context key

Next = Callable[[], Awaitable[BoltResponse]]


class Operator:
    """The Slack user behind a request: their actor and their permissions."""

    def __init__(self, user_id: str, permissions: Permissions, members: GroupMembers) -> None:
        self.user_id = user_id
        self.actor = actors.slack(user_id)
        self._permissions = permissions
        self._members = members
        self._answers: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"Operator({self.user_id!r})"

    async def may(self, action: str) -> bool:
        """Whether the policy lets this user do ``action`` (``ack``, ``revoke``…)."""
        answer = self._answers.get(action)
        if answer is None:
            answer = await is_allowed(self._permissions, action, self.user_id, self._members)
            self._answers[action] = answer
        return answer


def user_of(body: dict[str, Any]) -> str:
    """The user a payload names: ``user.id`` of a click or a form, ``user_id`` of a command."""
    user = body.get("user")
    if isinstance(user, dict):
        return str(user.get("id", ""))
    return str(body.get("user_id", ""))


def operator_middleware(
    permissions: Permissions, members: GroupMembers
) -> Callable[..., Awaitable[BoltResponse]]:
    """The middleware that resolves the request's operator and keeps it in the context."""

    async def resolve_operator(
        context: AsyncBoltContext, body: dict[str, Any], next: Next
    ) -> BoltResponse:
        context[OPERATOR] = Operator(user_of(body), permissions, members)
        return await next()

    return resolve_operator


def operator_of(context: AsyncBoltContext) -> Operator:
    """The operator ``operator_middleware`` resolved for this request."""
    operator = context[OPERATOR]
    assert isinstance(operator, Operator), "operator_middleware runs before every listener"
    return operator
