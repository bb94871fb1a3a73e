"""Button listeners on the alert: ack, parse, check permission, call a workflow, answer.

The click is acknowledged first (Slack's 3 s deadline); the database and any API calls come
after. Refused, stale and repeated clicks get a private answer and change nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.runtime import Runtime
from bot.slack import ids
from bot.slack.groups import GroupDirectory
from workflows import actions
from workflows.actions import ActionResult
from workflows.permissions import is_allowed

log = logging.getLogger("reauthbot.slack.actions")

Workflow = Callable[..., Awaitable[ActionResult]]


def case_id_of(body: dict[str, Any]) -> int | None:
    try:
        return int(body["actions"][0]["value"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


async def run_action(
    runtime: Runtime,
    groups: GroupDirectory,
    body: dict[str, Any],
    respond: AsyncRespond,
    *,
    permission: str,
    workflow: Workflow,
) -> ActionResult | None:
    """Run one operator action from a button click and tell the clicker what happened."""
    user_id = str(body.get("user", {}).get("id", ""))
    case_id = case_id_of(body)
    if not user_id or case_id is None:
        await respond(
            text="This button does not name a case.",
            response_type="ephemeral",
            replace_original=False,
        )
        return None
    sessions: async_sessionmaker[AsyncSession] = runtime.db()
    now: datetime = runtime.clock()
    actor = actions.slack_actor(user_id)
    policy = runtime.settings.policy.permissions
    if not await is_allowed(policy, permission, user_id, groups.members):
        result = await actions.refuse(
            sessions, case_id=case_id, action=permission, actor=actor, now=now
        )
    else:
        result = await workflow(sessions, case_id=case_id, actor=actor, now=now)
    log.info(
        "action",
        extra={"action": permission, "case": case_id, "user": user_id, "outcome": result.outcome},
    )
    if result.changed:
        if runtime.notify is not None:
            runtime.notify.wake()
    else:
        await respond(text=result.message, response_type="ephemeral", replace_original=False)
    return result


def register(bolt: AsyncApp, runtime: Runtime, groups: GroupDirectory) -> None:
    @bolt.action(ids.ACK)
    async def on_ack(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        await run_action(
            runtime, groups, body, respond, permission="ack", workflow=actions.acknowledge
        )
