"""The ``/reauth`` slash command: ack at once, parse, run the workflow, answer privately.

Sub-commands that change a case go through the same permission check and workflows as the
alert's buttons (``bot.slack.actions.run_action``, for the request's ``Operator``);
``revoke`` answers with the alert's own revoke button, so its confirmation is the same too,
and so does ``retry`` when it would make Nylas bill a stopped account again. Wrong input
gets a usage line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from aiohttp import ClientError
from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.errors import SlackApiError
from sqlmodel import col, select

from bot.services import Services
from bot.slack import actions as buttons
from bot.slack import ids, replies
from bot.slack.blocks import escape, section
from bot.slack.command_line import KINDS, OPEN_STATUSES, Command, UsageError, help_text, parse
from bot.slack.groups import GroupDirectory
from bot.slack.operator import Operator, operator_of
from storage import cases, links, reports
from storage.models import Account, Case, CaseStatus, Incident
from workflows import actions, mutes
from workflows.billing import retry_restarts_billing
from workflows.diagnosis import diagnose, gather
from workflows.policy import parse_duration
from workflows.stats import case_stats

log = logging.getLogger("reauthbot.slack.commands")

Body = dict[str, Any]
# The furthest a "More" button can page (its value comes from the client).
MAX_OFFSET = 2**31 - 1
Handler = Callable[[Services, GroupDirectory, Operator, Command, AsyncRespond], Awaitable[None]]


async def _say(respond: AsyncRespond, text: str, blocks: list[Body] | None = None) -> None:
    await respond(text=text, blocks=blocks, response_type="ephemeral", replace_original=False)


async def _find(services: Services, respond: AsyncRespond, ref: str) -> tuple[Case, Account] | None:
    async with services.readers() as session:
        case = await reports.find_case(session, ref=ref)
        account = await cases.get_account(session, account_id=case.account_id) if case else None
    if case is None or account is None:
        await _say(respond, f"No case matches `{escape(ref[:80])}`. Try `/reauth list`.")
        return None
    return case, account


async def _list(
    services: Services, respond: AsyncRespond, filters: dict[str, Any], offset: int
) -> list[dict[str, Any]]:
    async with services.readers() as session:
        rows, more = await reports.list_open_cases(
            session,
            statuses=filters.get("statuses") or None,
            kinds=filters.get("kinds") or None,
            domain=filters.get("domain"),
            provider=filters.get("provider"),
            incident_id=filters.get("incident"),
            limit=replies.PAGE,
            offset=offset,
        )
    revoke = services.settings.policy.permissions.revoke is not None
    return replies.case_list(
        rows,
        has_more=more,
        offset=offset,
        filters=filters,
        revoke_enabled=revoke,
        outreach=services.settings.outreach_channel,
    )


async def on_list(
    services: Services,
    groups: GroupDirectory,
    operator: Operator,
    command: Command,
    respond: AsyncRespond,
) -> None:
    filters: dict[str, Any] = {
        "statuses": list(command.statuses),
        "kinds": list(command.kinds),
        "domain": command.domain,
        "provider": command.provider,
    }
    if command.incident is not None:
        filters["incident"] = command.incident
    await _say(respond, "Open cases", await _list(services, respond, filters, 0))


async def on_show(
    services: Services,
    groups: GroupDirectory,
    operator: Operator,
    command: Command,
    respond: AsyncRespond,
) -> None:
    found = await _find(services, respond, command.target or "")
    if found is None:
        return
    case, account = found
    assert case.id is not None
    async with services.readers() as session:
        history = await reports.case_history(session, case_id=case.id)
        # Fresh, and only shown: a reader does not store it on the case.
        facts = await gather(session, case=case, account=account, now=services.clock())
        link = await links.latest(session, case_id=case.id)
    revoke = services.settings.policy.permissions.revoke is not None
    card = replies.case_card(
        case,
        account,
        history,
        revoke_enabled=revoke,
        findings=diagnose(facts),
        outreach=services.settings.outreach_channel,
        link=link,
    )
    await _say(respond, f"Case #{case.id}", card)


def _acting(permission: str, workflow: Any) -> Handler:
    async def handle(
        services: Services,
        groups: GroupDirectory,
        operator: Operator,
        command: Command,
        respond: AsyncRespond,
    ) -> None:
        found = await _find(services, respond, command.target or "")
        if found is None:
            return
        await buttons.run_action(
            services,
            operator,
            respond,
            subject_id=found[0].id,
            permission=permission,
            workflow=workflow(services, command),
            tell_on_success=True,
        )

    return handle


async def on_revoke(
    services: Services,
    groups: GroupDirectory,
    operator: Operator,
    command: Command,
    respond: AsyncRespond,
) -> None:
    if services.settings.policy.permissions.revoke is None:
        await _say(respond, buttons.REVOKE_OFF)
        return
    found = await _find(services, respond, command.target or "")
    if found is None:
        return
    case, account = found
    assert case.id is not None
    if not await operator.may("revoke"):
        result = await actions.refuse(
            services.sessions,
            case_id=case.id,
            action="revoke",
            actor=operator.actor,
            now=services.clock(),
        )
        await _say(respond, escape(result.message))
        return
    if case.status == CaseStatus.RESOLVED:
        await _say(respond, f"Case #{case.id} is already resolved.")
        return
    await _say(respond, f"Revoke case #{case.id}?", replies.revoke_prompt(case, account))


async def on_retry(
    services: Services,
    groups: GroupDirectory,
    operator: Operator,
    command: Command,
    respond: AsyncRespond,
) -> None:
    found = await _find(services, respond, command.target or "")
    if found is None:
        return
    case, account = found
    assert case.id is not None
    if case.status == CaseStatus.RESOLVED or not retry_restarts_billing(case, account):
        await _retry_now(services, groups, operator, command, respond)
        return
    if not await operator.may("retry"):
        result = await actions.refuse(
            services.sessions,
            case_id=case.id,
            action="retry",
            actor=operator.actor,
            now=services.clock(),
        )
        await _say(respond, result.message)
        return
    # Retry would make Nylas bill the account again: answer with the confirmed button.
    await _say(respond, f"Retry case #{case.id}?", replies.retry_prompt(case, account))


async def on_stats(
    services: Services,
    groups: GroupDirectory,
    operator: Operator,
    command: Command,
    respond: AsyncRespond,
) -> None:
    async with services.readers() as session:
        report = await case_stats(
            session,
            now=services.clock(),
            window=parse_duration(command.window),
            cleanup=services.settings.policy.cleanup,
        )
    policy = services.settings.policy
    await _say(respond, "Case statistics", replies.stats(report, command.window, policy))


async def on_oncall(
    services: Services,
    groups: GroupDirectory,
    operator: Operator,
    command: Command,
    respond: AsyncRespond,
) -> None:
    policy = services.settings.policy.escalation
    wanted = {i for level in policy.levels for i in (*level.mention, *level.dm) if i[0] == "S"}
    members: dict[str, list[str]] = {}
    for group in sorted(wanted):
        try:
            members[group] = sorted(await groups.members(group))
        except (SlackApiError, ClientError, TimeoutError) as exc:  # e.g. a deleted group
            log.warning("cannot read user group %s: %s", group, exc)
    async with services.readers() as session:
        stmt = (
            select(Case)
            .where(col(Case.status) == CaseStatus.OPEN, col(Case.escalation_due_at).is_not(None))
            .order_by(col(Case.escalation_due_at))
            .limit(1)
        )
        upcoming = (await session.exec(stmt)).first()
    next_due = None
    if upcoming is not None and upcoming.escalation_due_at is not None:
        next_due = (upcoming, upcoming.escalation_due_at)
    paging = services.settings.pagerduty_routing_key is not None
    blocks = replies.oncall(policy, members, paging=paging, next_due=next_due)
    muting = await mutes.listing(services.sessions, now=services.clock())
    if muting:
        blocks += replies.mute_list(muting)
    await _say(respond, "Escalation policy", blocks)


async def _refuse(services: Services, operator: Operator, action: str) -> None:
    """Audit a refused mute or unmute; nothing else changes."""
    async with services.sessions() as session, session.begin():
        await cases.record_event(
            session,
            actor=operator.actor,
            action="refused",
            at=services.clock(),
            details={"action": action},
        )


async def on_mute(
    services: Services,
    groups: GroupDirectory,
    operator: Operator,
    command: Command,
    respond: AsyncRespond,
) -> None:
    now = services.clock()
    if command.scope is None or command.value is None or command.length is None:
        await _say(
            respond,
            "Mutes in force",
            replies.mute_list(await mutes.listing(services.sessions, now=now)),
        )
        return
    # Muting silences alerts as a snooze does, for a whole domain or provider.
    if not await operator.may("snooze"):
        await _refuse(services, operator, "mute")
        await _say(respond, replies.MUTE_REFUSED)
        return
    try:
        mute = await mutes.start(
            services.sessions,
            scope=command.scope,
            value=command.value,
            length=mutes.parse_length(command.length),
            actor=operator.actor,
            now=now,
            reason=command.reason,
        )
    except mutes.MuteError as exc:
        await _say(respond, escape(str(exc)))
        return
    await _say(respond, f"Muted {mutes.scope_words(mute)}", replies.mute_started(mute))


async def on_unmute(
    services: Services,
    groups: GroupDirectory,
    operator: Operator,
    command: Command,
    respond: AsyncRespond,
) -> None:
    assert command.mute_id is not None
    if not await operator.may("snooze"):
        await _refuse(services, operator, "unmute")
        await _say(respond, replies.UNMUTE_REFUSED)
        return
    try:
        mute = await mutes.end(
            services.sessions,
            mute_id=command.mute_id,
            actor=operator.actor,
            now=services.clock(),
            channel=services.settings.alert_channel,
        )
    except mutes.MuteError as exc:
        await _say(respond, escape(str(exc)))
        return
    await _say(respond, f"Ended mute #{mute.id}", replies.mute_ended(mute))


async def on_help(
    services: Services,
    groups: GroupDirectory,
    operator: Operator,
    command: Command,
    respond: AsyncRespond,
) -> None:
    text = help_text()
    if command.unknown is not None:
        text = f"`{escape(command.unknown)}` is not a /reauth command.\n{text}"
    await _say(respond, text, [section(text)])


_retry_now = _acting(
    "retry", lambda services, command: partial(actions.retry_sync, nylas=services.nylas)
)

HANDLERS: dict[str, Handler] = {
    "list": on_list,
    "show": on_show,
    "ack": _acting("ack", lambda services, command: actions.acknowledge),
    "retry": on_retry,
    "link": _acting(
        "link",
        lambda services, command: partial(
            actions.send_reauth_link, maker=services.links, send=command.send
        ),
    ),
    "snooze": _acting(
        "snooze", lambda services, command: partial(actions.snooze, duration=command.duration)
    ),
    "resolve": _acting(
        "resolve", lambda services, command: partial(actions.resolve, note=command.note)
    ),
    "revoke": on_revoke,
    "stats": on_stats,
    "oncall": on_oncall,
    "mute": on_mute,
    "unmute": on_unmute,
    "help": on_help,
}


def _more_filters(raw: str) -> tuple[dict[str, Any], int]:
    """Read a "More" button's value back, checking every field (it comes from the client)."""
    data = json.loads(raw)
    offset = data["offset"]
    statuses, kinds = list(data.get("statuses") or []), list(data.get("kinds") or [])
    domain, provider = data.get("domain"), data.get("provider")
    incident = data.get("incident")
    if (
        not isinstance(offset, int)
        or isinstance(offset, bool)
        or not 0 <= offset <= MAX_OFFSET
        or not all(s in OPEN_STATUSES for s in statuses)
        or not all(k in KINDS for k in kinds)
        or not all(v is None or isinstance(v, str) for v in (domain, provider))
        or not (incident is None or (type(incident) is int and buttons.in_range(incident)))
    ):
        raise ValueError("bad list page")
    filters = {"statuses": statuses, "kinds": kinds, "domain": domain, "provider": provider}
    if incident is not None:
        filters["incident"] = incident
    return filters, offset


def register(bolt: AsyncApp, services: Services, groups: GroupDirectory) -> None:
    @bolt.command(ids.COMMAND)
    async def on_command(
        ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond, context: AsyncBoltContext
    ) -> None:
        await ack()
        try:
            command = parse(str(body.get("text") or ""))
        except UsageError as exc:
            await _say(respond, escape(str(exc)))
            return
        log.info("command", extra={"command": command.name, "user": body.get("user_id")})
        await HANDLERS[command.name](services, groups, operator_of(context), command, respond)

    @bolt.action(ids.INCIDENT_SHOW)
    async def on_show_cases(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        # Reading only: anyone who sees the incident may list its cases (as /reauth list).
        await ack()
        incident_id = buttons.case_id_of(body)
        if incident_id is None or not buttons.in_range(incident_id):
            await _say(respond, "This button does not name an incident.")
            return
        async with services.readers() as session:
            incident = await session.get(Incident, incident_id)
        if incident is None:
            await _say(respond, f"Incident #{incident_id} does not exist.")
            return
        filters: dict[str, Any] = {"statuses": [], "kinds": [], "incident": incident_id}
        page = await _list(services, respond, filters, 0)
        await _say(respond, f"Open cases of incident #{incident_id}", page)

    @bolt.action(ids.LIST_MORE)
    async def on_more(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        try:
            filters, offset = _more_filters(str(body["actions"][0]["value"]))
        except (KeyError, IndexError, TypeError, ValueError):
            await _say(respond, "This list can no longer be paged. Run `/reauth list` again.")
            return
        page = await _list(services, respond, filters, offset)
        await respond(text="Open cases", blocks=page, replace_original=True)
