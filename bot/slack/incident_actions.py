"""Button listeners on an incident's message: acknowledge all, re-auth links, retry all.

Like the case buttons: acknowledge first, check the permission of the matching single-case
action, call the workflow, answer privately.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond

from bot.services import Services
from bot.slack import ids
from bot.slack.actions import case_id_of, in_range, link_builder, permitted
from bot.slack.blocks import MAX_SECTION, escape, section, words
from bot.slack.groups import GroupDirectory
from storage import actors
from workflows import bulk
from workflows.bulk import BulkResult

log = logging.getLogger("reauthbot.slack.incidents")

BulkWorkflow = Callable[..., Awaitable[BulkResult]]
MAX_BLOCKS = 45  # Slack allows 50 blocks in a message; keep room for the heading


def links_blocks(result: BulkResult) -> list[dict[str, Any]]:
    """The links as CSV in code blocks the operator can copy, as many as fit one message."""
    chunks: list[str] = []
    current = ""
    for line in result.links_csv().splitlines(keepends=True):
        if len(current) + len(line) > MAX_SECTION - 8:
            chunks.append(current)
            current = ""
        current += line
    if current:
        chunks.append(current)
    shown = chunks[:MAX_BLOCKS]
    blocks = [section(words(result.words))]
    # In a code block Slack still reads <…> as links and mentions: the cells are escaped too.
    blocks += [section(f"```{escape(chunk)}```") for chunk in shown]
    if len(chunks) > len(shown):
        rows = sum(chunk.count("\n") for chunk in shown) - 1
        blocks.append(
            section(
                f"Only the first {rows} links fit in one message; the others are made too. "
                "`/reauth list --status waiting_on_user` lists their cases."
            )
        )
    return blocks


async def run_bulk(
    services: Services,
    groups: GroupDirectory,
    body: dict[str, Any],
    respond: AsyncRespond,
    *,
    permission: str,
    workflow: BulkWorkflow,
) -> BulkResult | None:
    """Run one bulk action from Slack and tell the operator what happened, privately."""
    user_id = str(body.get("user", {}).get("id", ""))
    incident_id = case_id_of(body)
    if not user_id or incident_id is None:
        await respond(
            text="This button does not name an incident.",
            response_type="ephemeral",
            replace_original=False,
        )
        return None
    if not in_range(incident_id):  # forged
        text = f"Incident #{incident_id} does not exist."
        await respond(text=text, response_type="ephemeral", replace_original=False)
        return None
    sessions = services.sessions
    now = services.clock()
    actor = actors.slack(user_id)
    if not await permitted(services, groups, permission, user_id):
        result = await bulk.refuse(
            sessions, incident_id=incident_id, action=permission, actor=actor, now=now
        )
    else:
        result = await workflow(sessions, incident_id=incident_id, actor=actor, now=now)
    log.info(
        "bulk action",
        extra={
            "action": permission,
            "incident": incident_id,
            "user": user_id,
            "outcome": result.outcome,
        },
    )
    if result.links:
        await respond(
            text=words(result.words),
            blocks=links_blocks(result),
            response_type="ephemeral",
            replace_original=False,
        )
    else:
        text = words(result.words)
        await respond(text=text, response_type="ephemeral", replace_original=False)
    return result


def register(bolt: AsyncApp, services: Services, groups: GroupDirectory) -> None:
    @bolt.action(ids.INCIDENT_ACK)
    async def on_ack_all(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        await run_bulk(
            services, groups, body, respond, permission="ack", workflow=bulk.acknowledge_all
        )

    @bolt.action(ids.INCIDENT_LINKS)
    async def on_links(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        workflow = partial(bulk.reauth_links, build=link_builder(services))
        await run_bulk(services, groups, body, respond, permission="link", workflow=workflow)

    @bolt.action(ids.INCIDENT_RETRY)
    async def on_retry_all(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        workflow = partial(bulk.retry_all, nylas=services.nylas)
        await run_bulk(services, groups, body, respond, permission="retry", workflow=workflow)
