"""Button listeners on alerts: ack, parse, check permission, call a workflow, answer.

The click is acknowledged first (Slack's 3 s deadline); the database and any API calls come
after. Who clicked, and what they may do, comes from the request's ``Operator``
(``bot.slack.operator``). Refused, stale and repeated clicks get a private answer and change
nothing else.

Most buttons do the same thing on a case or on an incident: they are rows of ``BUTTONS``,
each run by ``run_action``. The buttons that open a modal, and the modals' submissions, have
listeners of their own.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_bolt.context.async_context import AsyncBoltContext
from slack_sdk.web.async_client import AsyncWebClient

from bot.services import Services
from bot.slack import blocks, ids
from bot.slack.operator import Operator, operator_of
from bot.slack.replies import links_blocks
from storage import cases, slack_requests
from storage.models import ApiVersion
from storage.reports import MAX_CASE_NUMBER
from workflows import actions, bulk
from workflows.subject import ActionResult
from workflows.ticket import hand_out

log = logging.getLogger("reauthbot.slack.actions")

Workflow = Callable[..., Awaitable[ActionResult]]

MAX_TEXT = 40_000  # Slack cuts a message's text beyond this

# How long a modal the app opened may be submitted; an operator who leaves it open longer
# clicks the button again.
VIEW_LIFETIME = timedelta(hours=1)
UNKNOWN_VIEW = "This form was not opened by reauthbot, or it has expired: click the button again."

REVOKE_OFF = (
    "Revoking tokens is turned off. To allow it, name who may revoke under "
    "[permissions] revoke in the policy file (REAUTHBOT_CONFIG)."
)


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of alert subject, as the listeners name it and its workflows take it."""

    noun: str  # "case", "incident"
    argument: str  # the workflows' keyword for its number
    refuse: Workflow  # records a refused action: refuse(sessions, <argument>=n, action=…)
    logged: str  # the log message of an action on one


CASE = Kind("case", "case_id", actions.refuse, "action")
INCIDENT = Kind("incident", "incident_id", bulk.refuse, "bulk action")


def in_range(number: int) -> bool:
    """Whether a case (or incident) number can exist; the database refuses to look up others."""
    return 0 < number <= MAX_CASE_NUMBER


def case_number(raw: object) -> int:
    """The case number a modal carries; ValueError if it names none."""
    number = int(str(raw))
    if not in_range(number):
        raise ValueError(f"{number} is not a case number")
    return number


def case_id_of(body: dict[str, Any]) -> int | None:
    """The case a click is about: a button's value, or "<case>:<choice>" from a menu."""
    try:
        action = body["actions"][0]
        raw = action.get("value") or action["selected_option"]["value"]
        return int(str(raw).split(":", 1)[0])
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def choice_of(body: dict[str, Any]) -> str:
    try:
        return str(body["actions"][0]["selected_option"]["value"]).split(":", 1)[1]
    except (KeyError, IndexError, TypeError):
        return ""


async def run_action(
    services: Services,
    operator: Operator,
    respond: AsyncRespond,
    *,
    subject_id: int | None,
    permission: str,
    workflow: Workflow,
    kind: Kind = CASE,
    tell_on_success: bool = False,
) -> ActionResult | None:
    """Run one operator action from Slack and tell the operator what happened, privately.

    ``workflow`` is called as ``workflow(sessions, case_id=…, actor=…, now=…)``, or with
    ``incident_id=…`` for an incident.
    """
    if not operator.user_id or subject_id is None:
        await tell(respond, f"This button does not name a {kind.noun}.")
        return None
    if not in_range(subject_id):  # forged
        await tell(respond, f"{kind.noun.capitalize()} #{subject_id} does not exist.")
        return None
    sessions, now, actor = services.sessions, services.clock(), operator.actor
    about = {kind.argument: subject_id}
    if not await operator.may(permission):
        result = await kind.refuse(sessions, **about, action=permission, actor=actor, now=now)
    else:
        result = await workflow(sessions, **about, actor=actor, now=now)
    log.info(
        kind.logged,
        extra={
            "action": permission,
            kind.noun: subject_id,
            "user": operator.user_id,
            "outcome": result.outcome,
        },
    )
    if result.links:
        await respond(
            text=blocks.words(result.words),
            blocks=links_blocks(result),
            response_type="ephemeral",
            replace_original=False,
        )
    elif not result.changed or tell_on_success:
        await tell(respond, blocks.words(result.words))
    return result


async def tell(respond: AsyncRespond, text: str) -> None:
    """Answer the operator privately, leaving the message they clicked as it is."""
    await respond(text=text, response_type="ephemeral", replace_original=False)


async def open_modal(
    services: Services, client: AsyncWebClient, trigger_id: str, view: dict[str, Any]
) -> None:
    """Open a modal and remember it, so that its submission is the only one accepted."""
    answer = await client.views_open(trigger_id=trigger_id, view=view)
    now = services.clock()
    async with services.sessions() as session, session.begin():
        await slack_requests.remember_view(
            session, view_id=str(answer["view"]["id"]), expires_at=now + VIEW_LIFETIME, now=now
        )


async def opened_here(services: Services, view: dict[str, Any]) -> bool:
    """Whether a submitted modal is one this app opened (on any replica) and still expects."""
    view_id = view.get("id")
    if not isinstance(view_id, str) or not view_id:
        return False
    async with services.readers() as session:
        return await slack_requests.view_opened(session, view_id=view_id, now=services.clock())


async def close_view(services: Services, view: dict[str, Any]) -> None:
    """Forget a modal whose submission was accepted: a second copy of it is refused."""
    async with services.sessions() as session, session.begin():
        await slack_requests.forget_view(session, view_id=str(view["id"]))


def ticket_message(text: str) -> str:
    """The ticket as a code block to copy, escaped and clipped to Slack's limit."""
    return f"```\n{blocks.clip(blocks.escape(text), MAX_TEXT - 8)}\n```"


# Builds the workflow a click runs, from the services and the click's payload.
Build = Callable[[Services, dict[str, Any]], Workflow]


@dataclass(frozen=True, slots=True)
class Button:
    """A button that runs one workflow on the case or incident its value names."""

    action_id: str
    permission: str  # the [permissions] entry that governs it
    build: Build
    kind: Kind = CASE
    tell_on_success: bool = False  # else only a refusal, or a click that changed nothing, is told
    revoking: bool = False  # turned off, with REVOKE_OFF, while no one may revoke


def _same(workflow: Workflow) -> Build:
    return lambda services, body: workflow


def _links(services: Services, body: dict[str, Any]) -> Workflow:
    return partial(actions.send_reauth_link, maker=services.links)


def _send_link(services: Services, body: dict[str, Any]) -> Workflow:
    return partial(actions.send_reauth_link, maker=services.links, send=True)


def _snooze(services: Services, body: dict[str, Any]) -> Workflow:
    return partial(actions.snooze, duration=choice_of(body))


def _retry(services: Services, body: dict[str, Any]) -> Workflow:
    return partial(actions.retry_sync, nylas=services.nylas)


def _revoke(services: Services, body: dict[str, Any]) -> Workflow:
    return partial(actions.revoke, nylas=services.nylas)


def _delete_old(services: Services, body: dict[str, Any]) -> Workflow:
    return partial(actions.delete_duplicate, nylas=services.nylas)


def _links_all(services: Services, body: dict[str, Any]) -> Workflow:
    return partial(bulk.reauth_links, maker=services.links)


def _send_links_all(services: Services, body: dict[str, Any]) -> Workflow:
    return partial(bulk.reauth_links, maker=services.links, send=True)


def _retry_all(services: Services, body: dict[str, Any]) -> Workflow:
    return partial(bulk.retry_all, nylas=services.nylas)


BUTTONS = (
    Button(ids.ACK, "ack", _same(actions.acknowledge)),
    Button(ids.LINK, "link", _links, tell_on_success=True),
    Button(ids.SEND_LINK, "link", _send_link, tell_on_success=True),
    Button(ids.SNOOZE, "snooze", _snooze),
    Button(ids.RETRY, "retry", _retry, tell_on_success=True),
    Button(ids.SEND_ONLY, "resolve", _same(actions.mark_send_only), tell_on_success=True),
    # Pressed on a private /reauth show card, which is not updated: say what happened.
    Button(ids.UNDO_SEND_ONLY, "resolve", _same(actions.undo_send_only), tell_on_success=True),
    Button(ids.DELETE_OLD, "revoke", _delete_old, tell_on_success=True, revoking=True),
    # Bulk actions on an incident always say what they did.
    Button(ids.INCIDENT_ACK, "ack", _same(bulk.acknowledge_all), INCIDENT, tell_on_success=True),
    Button(ids.INCIDENT_LINKS, "link", _links_all, INCIDENT, tell_on_success=True),
    Button(ids.INCIDENT_SEND_LINKS, "link", _send_links_all, INCIDENT, tell_on_success=True),
    Button(ids.INCIDENT_RETRY, "retry", _retry_all, INCIDENT, tell_on_success=True),
)


def _listener(services: Services, button: Button) -> Callable[..., Awaitable[None]]:
    async def on_click(
        ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond, context: AsyncBoltContext
    ) -> None:
        await ack()
        if button.revoking and services.settings.policy.permissions.revoke is None:
            await tell(respond, REVOKE_OFF)
            return
        await run_action(
            services,
            operator_of(context),
            respond,
            subject_id=case_id_of(body),
            permission=button.permission,
            workflow=button.build(services, body),
            kind=button.kind,
            tell_on_success=button.tell_on_success,
        )

    on_click.__name__ = f"on_{button.action_id}"
    return on_click


def register(bolt: AsyncApp, services: Services) -> None:
    for button in BUTTONS:
        bolt.action(button.action_id)(_listener(services, button))

    @bolt.action(ids.RESOLVE)
    async def on_resolve(
        ack: AsyncAck,
        body: dict[str, Any],
        respond: AsyncRespond,
        client: AsyncWebClient,
        context: AsyncBoltContext,
    ) -> None:
        await ack()
        operator, case_id = operator_of(context), case_id_of(body)
        if case_id is None or not in_range(case_id) or not await operator.may("resolve"):
            await run_action(
                services,
                operator,
                respond,
                subject_id=case_id,
                permission="resolve",
                workflow=actions.resolve,
            )
            return
        async with services.readers() as session:
            case = await cases.get_case(session, case_id=case_id)
            account = await cases.get_account(session, account_id=case.account_id) if case else None
        if case is None or account is None or case.status == "resolved":
            reason = "is already resolved" if case else "does not exist"
            await tell(respond, f"Case #{case_id} {reason}.")
            return
        await open_modal(services, client, body["trigger_id"], blocks.resolve_modal(case, account))

    @bolt.action(ids.REVOKE)
    async def on_revoke(
        ack: AsyncAck,
        body: dict[str, Any],
        respond: AsyncRespond,
        client: AsyncWebClient,
        context: AsyncBoltContext,
    ) -> None:
        await ack()
        operator, case_id = operator_of(context), case_id_of(body)
        if services.settings.policy.permissions.revoke is None:
            await tell(respond, REVOKE_OFF)
            return
        case = account = None
        if case_id is not None and in_range(case_id):
            async with services.readers() as session:
                case = await cases.get_case(session, case_id=case_id)
                if case is not None:
                    account = await cases.get_account(session, account_id=case.account_id)
        if (
            await operator.may("revoke")
            and case is not None
            and account is not None
            and account.api_version == ApiVersion.V3
        ):
            # Deleting a grant cannot be undone: ask for the email first (see on_revoke_submitted).
            await open_modal(
                services, client, body["trigger_id"], blocks.revoke_modal(case, account)
            )
            return
        # v2 (the button's own confirm dialog was accepted), refusals and stale clicks.
        await run_action(
            services,
            operator,
            respond,
            subject_id=case_id,
            permission="revoke",
            workflow=_revoke(services, body),
            tell_on_success=True,
        )

    @bolt.action(ids.SUPPORT_TICKET)
    async def on_support_ticket(
        ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond, context: AsyncBoltContext
    ) -> None:
        await ack()
        operator, case_id = operator_of(context), case_id_of(body)
        if not operator.user_id or case_id is None:
            await tell(respond, "This button does not name a case.")
            return
        # Reading only: anyone who sees the alert may take the ticket text.
        text = await hand_out(
            services.sessions, case_id=case_id, actor=operator.actor, now=services.clock()
        )
        log.info(
            "support ticket",
            extra={"case": case_id, "user": operator.user_id, "found": bool(text)},
        )
        answer = f"Case #{case_id} does not exist." if text is None else ticket_message(text)
        await tell(respond, answer)

    @bolt.view(ids.REVOKE_MODAL)
    async def on_revoke_submitted(
        ack: AsyncAck, view: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        try:
            case_id = case_number(view["private_metadata"])
            typed = view["state"]["values"][ids.CONFIRM_BLOCK][ids.CONFIRM_INPUT].get("value") or ""
        except (KeyError, ValueError, TypeError):
            await ack(response_action="errors", errors={ids.CONFIRM_BLOCK: "This form is broken."})
            return
        if not await opened_here(services, view):
            await ack(response_action="errors", errors={ids.CONFIRM_BLOCK: UNKNOWN_VIEW})
            return
        operator, now = operator_of(context), services.clock()
        if services.settings.policy.permissions.revoke is None or not await operator.may("revoke"):
            result = await actions.refuse(
                services.sessions, case_id=case_id, action="revoke", actor=operator.actor, now=now
            )
        else:
            result = await actions.revoke(
                services.sessions,
                case_id=case_id,
                actor=operator.actor,
                now=now,
                nylas=services.nylas,
                confirmation=typed,
            )
        if not result.changed:
            await ack(response_action="errors", errors={ids.CONFIRM_BLOCK: result.message[:150]})
            return
        # Say what happened: the grant may have been kept (the end user re-authenticated).
        await ack(
            response_action="update", view=blocks.notice_modal("Delete the grant", result.message)
        )
        await close_view(services, view)

    @bolt.view(ids.RESOLVE_MODAL)
    async def on_resolve_submitted(
        ack: AsyncAck, view: dict[str, Any], context: AsyncBoltContext
    ) -> None:
        try:
            case_id = case_number(view["private_metadata"])
            note = view["state"]["values"][ids.NOTE_BLOCK][ids.NOTE_INPUT].get("value") or ""
        except (KeyError, ValueError, TypeError):
            await ack(response_action="errors", errors={ids.NOTE_BLOCK: "This form is broken."})
            return
        if not await opened_here(services, view):
            await ack(response_action="errors", errors={ids.NOTE_BLOCK: UNKNOWN_VIEW})
            return
        operator, now = operator_of(context), services.clock()
        if not await operator.may("resolve"):
            result = await actions.refuse(
                services.sessions, case_id=case_id, action="resolve", actor=operator.actor, now=now
            )
        else:
            result = await actions.resolve(
                services.sessions, case_id=case_id, actor=operator.actor, now=now, note=note
            )
        if not result.changed:
            await ack(response_action="errors", errors={ids.NOTE_BLOCK: result.message[:150]})
            return
        await ack()
        await close_view(services, view)
