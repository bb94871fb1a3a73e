"""Button listeners on the alert: ack, parse, check permission, call a workflow, answer.

The click is acknowledged first (Slack's 3 s deadline); the database and any API calls come
after. Refused, stale and repeated clicks get a private answer and change nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from functools import partial
from typing import Any

from slack_bolt.async_app import AsyncAck, AsyncApp, AsyncRespond
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.services import Services
from bot.slack import blocks, ids
from bot.slack.groups import GroupDirectory
from storage import actors, cases, slack_requests
from storage.models import Account, ApiVersion
from storage.reports import MAX_CASE_NUMBER
from workflows import actions
from workflows.actions import ActionResult
from workflows.permissions import is_allowed
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


async def permitted(services: Services, groups: GroupDirectory, action: str, user_id: str) -> bool:
    return await is_allowed(services.settings.policy.permissions, action, user_id, groups.members)


async def run_action(
    services: Services,
    groups: GroupDirectory,
    body: dict[str, Any],
    respond: AsyncRespond,
    *,
    permission: str,
    workflow: Workflow,
    case_id: int | None = None,
    tell_on_success: bool = False,
) -> ActionResult | None:
    """Run one operator action from Slack and tell the operator what happened, privately.

    ``workflow`` is called as ``workflow(sessions, case_id=…, actor=…, now=…)``.
    """
    user_id = str(body.get("user", {}).get("id", ""))
    case_id = case_id if case_id is not None else case_id_of(body)
    if not user_id or case_id is None:
        await respond(
            text="This button does not name a case.",
            response_type="ephemeral",
            replace_original=False,
        )
        return None
    if not in_range(case_id):  # forged
        text = f"Case #{case_id} does not exist."
        await respond(text=text, response_type="ephemeral", replace_original=False)
        return None
    sessions: async_sessionmaker[AsyncSession] = services.sessions
    now: datetime = services.clock()
    actor = actors.slack(user_id)
    if not await permitted(services, groups, permission, user_id):
        result = await actions.refuse(
            sessions, case_id=case_id, action=permission, actor=actor, now=now
        )
    else:
        result = await workflow(sessions, case_id=case_id, actor=actor, now=now)
    log.info(
        "action",
        extra={"action": permission, "case": case_id, "user": user_id, "outcome": result.outcome},
    )
    if not result.changed or tell_on_success:
        await respond(
            text=blocks.words(result.words), response_type="ephemeral", replace_original=False
        )
    return result


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


def link_builder(services: Services) -> actions.LinkBuilder | None:
    """Build hosted-auth links with ``login_hint`` when Nylas and a redirect URI are set."""
    settings, nylas = services.settings, services.nylas
    if nylas is None or not settings.nylas_client_id or not settings.nylas_redirect_uri:
        return None
    redirect = settings.nylas_redirect_uri

    def build(account: Account) -> str:
        assert nylas is not None and account.email is not None
        # No state: the account id in it would let anyone who sees the link guess others.
        return nylas.reauth_url(email=account.email, redirect_uri=redirect)

    return build


def register(bolt: AsyncApp, services: Services, groups: GroupDirectory) -> None:
    @bolt.action(ids.ACK)
    async def on_ack(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        await run_action(
            services, groups, body, respond, permission="ack", workflow=actions.acknowledge
        )

    @bolt.action(ids.LINK)
    async def on_link(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        workflow = partial(actions.send_reauth_link, build=link_builder(services))
        await run_action(
            services,
            groups,
            body,
            respond,
            permission="link",
            workflow=workflow,
            tell_on_success=True,
        )

    @bolt.action(ids.SNOOZE)
    async def on_snooze(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        workflow = partial(actions.snooze, duration=choice_of(body))
        await run_action(services, groups, body, respond, permission="snooze", workflow=workflow)

    @bolt.action(ids.RESOLVE)
    async def on_resolve(
        ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond, client: AsyncWebClient
    ) -> None:
        await ack()
        user_id, case_id = str(body.get("user", {}).get("id", "")), case_id_of(body)
        if (
            case_id is None
            or not in_range(case_id)
            or not await permitted(services, groups, "resolve", user_id)
        ):
            await run_action(
                services, groups, body, respond, permission="resolve", workflow=actions.resolve
            )
            return
        async with services.readers() as session:
            case = await cases.get_case(session, case_id=case_id)
            account = await cases.get_account(session, account_id=case.account_id) if case else None
        if case is None or account is None or case.status == "resolved":
            reason = "is already resolved" if case else "does not exist"
            await respond(
                text=f"Case #{case_id} {reason}.", response_type="ephemeral", replace_original=False
            )
            return
        await open_modal(services, client, body["trigger_id"], blocks.resolve_modal(case, account))

    @bolt.action(ids.RETRY)
    async def on_retry(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        workflow = partial(actions.retry_sync, nylas=services.nylas)
        await run_action(
            services,
            groups,
            body,
            respond,
            permission="retry",
            workflow=workflow,
            tell_on_success=True,
        )

    @bolt.action(ids.SEND_ONLY)
    async def on_send_only(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        await run_action(
            services,
            groups,
            body,
            respond,
            permission="resolve",
            workflow=actions.mark_send_only,
            tell_on_success=True,
        )

    @bolt.action(ids.UNDO_SEND_ONLY)
    async def on_undo_send_only(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        # Pressed on a private /reauth show card, which is not updated: say what happened.
        await run_action(
            services,
            groups,
            body,
            respond,
            permission="resolve",
            workflow=actions.undo_send_only,
            tell_on_success=True,
        )

    @bolt.action(ids.REVOKE)
    async def on_revoke(
        ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond, client: AsyncWebClient
    ) -> None:
        await ack()
        user_id, case_id = str(body.get("user", {}).get("id", "")), case_id_of(body)
        if services.settings.policy.permissions.revoke is None:
            await respond(text=REVOKE_OFF, response_type="ephemeral", replace_original=False)
            return
        case = account = None
        if case_id is not None and in_range(case_id):
            async with services.readers() as session:
                case = await cases.get_case(session, case_id=case_id)
                if case is not None:
                    account = await cases.get_account(session, account_id=case.account_id)
        allowed = await permitted(services, groups, "revoke", user_id)
        if (
            allowed
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
        workflow = partial(actions.revoke, nylas=services.nylas)
        await run_action(
            services,
            groups,
            body,
            respond,
            permission="revoke",
            workflow=workflow,
            tell_on_success=True,
        )

    @bolt.action(ids.DELETE_OLD)
    async def on_delete_old(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        if services.settings.policy.permissions.revoke is None:
            await respond(text=REVOKE_OFF, response_type="ephemeral", replace_original=False)
            return
        workflow = partial(actions.delete_duplicate, nylas=services.nylas)
        await run_action(
            services,
            groups,
            body,
            respond,
            permission="revoke",
            workflow=workflow,
            tell_on_success=True,
        )

    @bolt.action(ids.SUPPORT_TICKET)
    async def on_support_ticket(ack: AsyncAck, body: dict[str, Any], respond: AsyncRespond) -> None:
        await ack()
        user_id, case_id = str(body.get("user", {}).get("id", "")), case_id_of(body)
        if not user_id or case_id is None:
            await respond(
                text="This button does not name a case.",
                response_type="ephemeral",
                replace_original=False,
            )
            return
        # Reading only: anyone who sees the alert may take the ticket text.
        text = await hand_out(
            services.sessions,
            case_id=case_id,
            actor=actors.slack(user_id),
            now=services.clock(),
        )
        log.info("support ticket", extra={"case": case_id, "user": user_id, "found": bool(text)})
        answer = f"Case #{case_id} does not exist." if text is None else ticket_message(text)
        await respond(text=answer, response_type="ephemeral", replace_original=False)

    @bolt.view(ids.REVOKE_MODAL)
    async def on_revoke_submitted(
        ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]
    ) -> None:
        user_id = str(body.get("user", {}).get("id", ""))
        try:
            case_id = case_number(view["private_metadata"])
            typed = view["state"]["values"][ids.CONFIRM_BLOCK][ids.CONFIRM_INPUT].get("value") or ""
        except (KeyError, ValueError, TypeError):
            await ack(response_action="errors", errors={ids.CONFIRM_BLOCK: "This form is broken."})
            return
        if not await opened_here(services, view):
            await ack(response_action="errors", errors={ids.CONFIRM_BLOCK: UNKNOWN_VIEW})
            return
        now, actor = services.clock(), actors.slack(user_id)
        if services.settings.policy.permissions.revoke is None or not await permitted(
            services, groups, "revoke", user_id
        ):
            result = await actions.refuse(
                services.sessions, case_id=case_id, action="revoke", actor=actor, now=now
            )
        else:
            result = await actions.revoke(
                services.sessions,
                case_id=case_id,
                actor=actor,
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
        ack: AsyncAck, body: dict[str, Any], view: dict[str, Any]
    ) -> None:
        user_id = str(body.get("user", {}).get("id", ""))
        try:
            case_id = case_number(view["private_metadata"])
            note = view["state"]["values"][ids.NOTE_BLOCK][ids.NOTE_INPUT].get("value") or ""
        except (KeyError, ValueError, TypeError):
            await ack(response_action="errors", errors={ids.NOTE_BLOCK: "This form is broken."})
            return
        if not await opened_here(services, view):
            await ack(response_action="errors", errors={ids.NOTE_BLOCK: UNKNOWN_VIEW})
            return
        now, actor = services.clock(), actors.slack(user_id)
        if not await permitted(services, groups, "resolve", user_id):
            result = await actions.refuse(
                services.sessions, case_id=case_id, action="resolve", actor=actor, now=now
            )
        else:
            result = await actions.resolve(
                services.sessions, case_id=case_id, actor=actor, now=now, note=note
            )
        if not result.changed:
            await ack(response_action="errors", errors={ids.NOTE_BLOCK: result.message[:150]})
            return
        await ack()
        await close_view(services, view)
