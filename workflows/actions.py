"""What operators do to a case, callable from Slack buttons, the slash command and tests.

Each action runs in one transaction that locks the case row, so two clicks at once make one
change: the second finds it done. Every action, allowed or refused, is in the audit log, and
every change queues the update of the case's message and a line in its thread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import actors, cases
from storage.models import Account, ApiVersion, Case, CaseKind, CaseStatus
from workflows import links, subject
from workflows.events import AccountEvent
from workflows.lifecycle import apply_event
from workflows.links import LinkMaker
from workflows.notify import record_change
from workflows.nylas import NylasClient, NylasError, NylasNotFound, RemoteAccount
from workflows.snoozes import SNOOZE_CHOICES
from workflows.states import SEND_ONLY_RESOLUTION, Health, classify
from workflows.subject import ActionOutcome, ActionResult, Changed, result
from workflows.words import Person, Text, line

MAX_NOTE = 1000

Sessions = async_sessionmaker[AsyncSession]


def who(actor: str) -> Person:
    """An actor as the person a sentence names (a Slack user is shown as a mention)."""
    return Person(actor)


# A change: given the session and the locked, open case, apply it and return what changed,
# or an ActionResult to stop with no change.
Change = Callable[[AsyncSession, Case], Awaitable[Changed | ActionResult]]


async def _lock_open_case(session: AsyncSession, case_id: int) -> Case | ActionResult:
    """Lock the case for this transaction; a missing or resolved case stops the action."""
    case = await session.get(Case, case_id, with_for_update=True)
    if case is None:
        return ActionResult(ActionOutcome.MISSING, f"Case #{case_id} does not exist.")
    if case.status == CaseStatus.RESOLVED:
        # The resolution may hold text someone typed: the reply does not quote it.
        return ActionResult(ActionOutcome.STALE, f"Case #{case_id} is already resolved.", case)
    return case


async def _act(
    sessions: Sessions, *, case_id: int, actor: str, now: datetime, change: Change
) -> ActionResult:
    async def lock(session: AsyncSession) -> Case | ActionResult:
        return await _lock_open_case(session, case_id)

    async def record(session: AsyncSession, case: Case, changed: Changed) -> None:
        details = changed.details
        quote = str(details["note"]) if "note" in details else None
        await record_change(
            session,
            case,
            actor=actor,
            action=changed.action,
            now=now,
            line=changed.said,
            details=details,
            quote=quote,
        )

    return await subject.run(sessions, lock=lock, change=change, record=record)


async def refuse(
    sessions: Sessions, *, case_id: int, action: str, actor: str, now: datetime
) -> ActionResult:
    """Record a refused action; nothing else changes."""
    async with sessions() as session, session.begin():
        case = await cases.get_case(session, case_id=case_id)
        await cases.record_event(
            session,
            actor=actor,
            action="refused",
            at=now,
            case_id=case.id if case else None,
            account_id=case.account_id if case else None,
            details={"action": action},
        )
    return ActionResult(ActionOutcome.REFUSED, f"You are not allowed to {action} cases.", case)


async def acknowledge(
    sessions: Sessions, *, case_id: int, actor: str, now: datetime
) -> ActionResult:
    """Mark a case as taken care of by ``actor``; further escalation stops."""

    async def change(session: AsyncSession, case: Case) -> Changed | ActionResult:
        if case.acknowledged_at is not None:
            by = who(case.acknowledged_by or "someone")
            return result(
                ActionOutcome.ALREADY,
                line(f"Case #{case_id} was already acknowledged by ", by, "."),
                case,
            )
        if case.status == CaseStatus.OPEN:
            case.status = CaseStatus.ACKNOWLEDGED
        case.acknowledged_at, case.acknowledged_by = now, actor
        return Changed(
            "acknowledged",
            {},
            line("Acknowledged by ", who(actor), "."),
            f"You acknowledged case #{case_id}.",
        )

    return await _act(sessions, case_id=case_id, actor=actor, now=now, change=change)


async def snooze(
    sessions: Sessions, *, case_id: int, actor: str, now: datetime, duration: str
) -> ActionResult:
    """Silence a case (and its escalation) for one of ``SNOOZE_CHOICES``."""
    if duration not in SNOOZE_CHOICES:
        return ActionResult(
            ActionOutcome.MISSING, f"Snooze for {', '.join(SNOOZE_CHOICES)}, not {duration!r}."
        )
    until = now + SNOOZE_CHOICES[duration].length

    async def change(session: AsyncSession, case: Case) -> Changed | ActionResult:
        case.status, case.snoozed_until = CaseStatus.SNOOZED, until
        stamp = until.strftime("%Y-%m-%d %H:%M UTC")
        return Changed(
            "snoozed",
            {"until": until.isoformat(), "for": duration},
            line(f"Snoozed for {duration} by ", who(actor), f", until {stamp}."),
            f"Case #{case_id} is snoozed until {stamp}.",
        )

    return await _act(sessions, case_id=case_id, actor=actor, now=now, change=change)


async def resolve(
    sessions: Sessions, *, case_id: int, actor: str, now: datetime, note: str
) -> ActionResult:
    """Close a case by hand, with the operator's note as its resolution."""
    note = " ".join(note.split())[:MAX_NOTE] or "no note"

    async def change(session: AsyncSession, case: Case) -> Changed | ActionResult:
        case.status, case.resolved_at, case.resolved_by = CaseStatus.RESOLVED, now, actor
        case.resolution = note
        return Changed(
            "resolved",
            {"note": note},
            line("Resolved by ", who(actor), ":"),
            f"You resolved case #{case_id}.",
        )

    return await _act(sessions, case_id=case_id, actor=actor, now=now, change=change)


async def mark_send_only(
    sessions: Sessions, *, case_id: int, actor: str, now: datetime
) -> ActionResult:
    """Say a stuck-initializing account only sends: resolve the case, never alert it again."""

    async def change(session: AsyncSession, case: Case) -> Changed | ActionResult:
        if case.kind != CaseKind.STUCK or case.state != "initializing":
            return ActionResult(
                ActionOutcome.REFUSED,
                f"Case #{case_id} is not about an account stuck initializing.",
                case,
            )
        account = await session.get(Account, case.account_id, with_for_update=True)
        assert account is not None, "a case's account is never deleted"
        account.send_only, account.updated_at = True, now
        session.add(account)
        case.status, case.resolved_at, case.resolved_by = CaseStatus.RESOLVED, now, actor
        case.resolution = SEND_ONLY_RESOLUTION
        return Changed(
            "marked_send_only",
            {"reason": SEND_ONLY_RESOLUTION},
            line(
                "Marked send-only by ", who(actor), ": staying initializing is expected; resolved."
            ),
            f"Case #{case_id} is resolved and {account.email or account.id} is marked "
            "send-only: it is not alerted for initializing again (undo from /reauth show).",
        )

    return await _act(sessions, case_id=case_id, actor=actor, now=now, change=change)


async def undo_send_only(
    sessions: Sessions, *, case_id: int, actor: str, now: datetime
) -> ActionResult:
    """Take back a send-only mark: the case's account is alerted for initializing again."""
    async with sessions() as session, session.begin():
        # The case is resolved (that is what marking did): lock it without asking it be open.
        case = await session.get(Case, case_id, with_for_update=True)
        if case is None:
            return ActionResult(ActionOutcome.MISSING, f"Case #{case_id} does not exist.")
        account = await session.get(Account, case.account_id, with_for_update=True)
        assert account is not None, "a case's account is never deleted"
        who_ = account.email or account.id
        if not account.send_only:
            return ActionResult(ActionOutcome.ALREADY, f"{who_} is not marked send-only.", case)
        account.send_only, account.updated_at = False, now
        session.add(account)
        await record_change(
            session,
            case,
            actor=actor,
            action="unmarked_send_only",
            now=now,
            line=line(
                "Send-only mark taken back by ", who(actor), ": initializing is alerted again."
            ),
        )
    return ActionResult(
        ActionOutcome.DONE,
        f"{who_} is no longer marked send-only: if it stays initializing, it is alerted again.",
        case,
    )


async def send_reauth_link(
    sessions: Sessions,
    *,
    case_id: int,
    actor: str,
    now: datetime,
    maker: LinkMaker | None,
    send: bool = False,
) -> ActionResult:
    """Make the end user's re-authentication link, and with ``send`` send it to them (the
    policy's ``[outreach]``); the case then waits on the end user."""
    refused = links_refused(maker, send=send)
    if refused is not None:
        return refused
    assert maker is not None

    async def change(session: AsyncSession, case: Case) -> Changed | ActionResult:
        account = await cases.get_account(session, account_id=case.account_id)
        if account is None or not account.email:
            return ActionResult(
                ActionOutcome.UNAVAILABLE,
                f"Case #{case_id}: the account's email is not known yet.",
                case,
            )
        made = await links.make(session, case, account, actor=actor, now=now, maker=maker)
        if send:
            await links.reach_out(session, case, account, made, now=now, outreach=maker.outreach)
        case.status = CaseStatus.WAITING_ON_USER
        channel = maker.outreach.channel if send else None
        return Changed(
            "reauth_link",
            {"email": account.email, "tracked": made.link is not None, "sent": channel},
            link_line(actor, channel),
            # The email is the end user's own text: the renderer escapes it like any other.
            link_reply(account.email, made, channel),
        )

    return await _act(sessions, case_id=case_id, actor=actor, now=now, change=change)


def links_refused(maker: LinkMaker | None, *, send: bool) -> ActionResult | None:
    """Why links cannot be made (or sent) as asked, or None when they can."""
    if maker is None or maker.hosted is None:
        return ActionResult(
            ActionOutcome.UNAVAILABLE,
            "Re-authentication links need NYLAS_CLIENT_ID and NYLAS_REDIRECT_URI to be set.",
        )
    if send and not maker.reaches_out:
        return ActionResult(
            ActionOutcome.UNAVAILABLE,
            "Sending links to end users needs REAUTHBOT_PUBLIC_URL and an [outreach] channel "
            "in the policy file.",
        )
    return None


def link_line(actor: str, channel: str | None, *, incident: int | None = None) -> Text:
    """The case's thread line for a link made (and sent through ``channel``)."""
    where = f" with all of incident #{incident}" if incident is not None else ""
    how = ""
    if channel is not None:
        how = " and emailed to the end user" if channel == "nylas" else " and sent to the end user"
    return line(
        "Re-authentication link made by ", who(actor), f"{where}{how}; waiting on the end user."
    )


def link_reply(email: str, made: links.Made, channel: str | None) -> str:
    if channel == "nylas":
        return f"Emailing a re-authentication link to {email}; the card shows when it is opened."
    if channel is not None:
        return (
            f"Your product is being asked to send {email} a re-authentication link; the card "
            "shows when it is opened."
        )
    if made.link is None:
        return f"Send this link to {email} to re-authenticate:\n{made.url}"
    until = made.link.expires_at.strftime("%b %-d %H:%M UTC")
    return (
        f"Send this link to {email} to re-authenticate (it works until {until}, and the card "
        f"shows when it is opened):\n{made.url}"
    )


async def end_snoozes(sessions: Sessions, *, now: datetime) -> int:
    """Wake the cases whose snooze is over; return how many."""
    async with sessions() as session, session.begin():
        stmt = select(Case).where(
            col(Case.status) == CaseStatus.SNOOZED, col(Case.snoozed_until) <= now
        )
        woken = list((await session.exec(stmt.with_for_update(skip_locked=True))).all())
        for case in woken:
            acked = case.acknowledged_at is not None
            case.status = CaseStatus.ACKNOWLEDGED if acked else CaseStatus.OPEN
            case.snoozed_until = None
            await record_change(
                session,
                case,
                actor=actors.SYSTEM,
                action="snooze_ended",
                now=now,
                line="Snooze is over.",
            )
    return len(woken)


# --- actions that call Nylas ------------------------------------------------------------------

NYLAS_LEASE = timedelta(minutes=2)


async def hold_for_nylas(
    sessions: Sessions, *, case_id: int, now: datetime, what: str
) -> ActionResult | tuple[Case, Account]:
    """Take the case for an action that calls Nylas, so concurrent clicks make one call."""
    async with sessions() as session, session.begin():
        case = await _lock_open_case(session, case_id)
        if isinstance(case, ActionResult):
            return case
        if case.busy_until is not None and case.busy_until > now:
            return ActionResult(
                ActionOutcome.ALREADY,
                f"{case.busy_with} is already in progress for case #{case_id}.",
                case,
            )
        account = await cases.get_account(session, account_id=case.account_id)
        if account is None:
            return ActionResult(ActionOutcome.MISSING, f"Case #{case_id} has no account.", case)
        case.busy_with, case.busy_until = what, now + NYLAS_LEASE
        session.add(case)
    return case, account


async def finish_hold(
    sessions: Sessions,
    *,
    case_id: int,
    actor: str,
    now: datetime,
    action: str,
    details: dict[str, object],
    said: Text,
    event: AccountEvent | None = None,
) -> None:
    """Release the case, record what happened, and apply the account state Nylas reported."""
    async with sessions() as session, session.begin():
        case = await session.get(Case, case_id, with_for_update=True)
        assert case is not None
        case.busy_with, case.busy_until = None, None
        await record_change(
            session, case, actor=actor, action=action, now=now, line=said, details=details
        )
        if event is not None:
            await apply_event(session, event, now=now, route=lambda _: case.slack_channel or "")


def gone_event(account: Account, now: datetime, source: str) -> AccountEvent:
    """The account no longer exists in Nylas, as an operator's action (``source``) found."""
    return AccountEvent(
        account_id=account.id,
        api_version=account.api_version,
        event_type=source,
        state="deleted",
        occurred_at=now,
        source=source,
    )


def reported_event(
    account: Account, remote: RemoteAccount, now: datetime, source: str
) -> AccountEvent:
    return AccountEvent(
        account_id=account.id,
        api_version=account.api_version,
        event_type=source,
        state=remote.sync_state,
        occurred_at=now,
        source=source,
        email=remote.email,
        provider=remote.provider,
        billing_state=remote.billing_state,
    )


async def retry_sync(
    sessions: Sessions, *, case_id: int, actor: str, now: datetime, nylas: NylasClient | None
) -> ActionResult:
    """v2: downgrade then upgrade the account, then read it again; v3: read the grant again."""
    if nylas is None:
        return ActionResult(
            ActionOutcome.UNAVAILABLE, "Retry needs the Nylas API credentials to be set."
        )
    held = await hold_for_nylas(sessions, case_id=case_id, now=now, what="A retry")
    if isinstance(held, ActionResult):
        return held
    case, account = held
    steps = "downgrade, upgrade and re-read" if account.api_version == ApiVersion.V2 else "re-read"
    try:
        if account.api_version == ApiVersion.V2:
            await nylas.downgrade(account.id)
            await nylas.upgrade(account.id)
        remote = await nylas.get_account(account.id)
    except NylasError as exc:
        await finish_hold(
            sessions,
            case_id=case_id,
            actor=actor,
            now=now,
            action="retry_failed",
            details={"error": str(exc)},
            said=line("Retry sync by ", who(actor), f" failed: {exc}"),
        )
        return ActionResult(ActionOutcome.DONE, f"Retry of case #{case_id} failed: {exc}", case)
    state = remote.sync_state or "unknown"
    words = classify(account.api_version, state).words
    await finish_hold(
        sessions,
        case_id=case_id,
        actor=actor,
        now=now,
        action="retried",
        details={"steps": steps, "state": state},
        said=line(
            "Retry sync by ", who(actor), f" ({steps}): the account is now {state}, {words}."
        ),
        event=reported_event(account, remote, now, "retry"),
    )
    return ActionResult(
        ActionOutcome.DONE, f"Retried case #{case_id}: the account is now {state}.", case
    )


async def revoke(
    sessions: Sessions,
    *,
    case_id: int,
    actor: str,
    now: datetime,
    nylas: NylasClient | None,
    confirmation: str | None = None,
) -> ActionResult:
    """v2: revoke every access token; v3: delete the grant, once the email is typed back."""
    if nylas is None:
        return ActionResult(
            ActionOutcome.UNAVAILABLE, "Revoking needs the Nylas API credentials to be set."
        )
    held = await hold_for_nylas(sessions, case_id=case_id, now=now, what="A revoke")
    if isinstance(held, ActionResult):
        return held
    case, account = held
    v3 = account.api_version == ApiVersion.V3
    if v3 and (confirmation or "").strip().lower() != (account.email or "").lower():
        await _release(sessions, case_id=case_id)
        return ActionResult(
            ActionOutcome.REFUSED, "Type the account's email exactly to delete its grant.", case
        )
    method = "delete-grant" if v3 else "revoke-all"
    # The end user may have re-authenticated since the alert: revoking now would undo that.
    fresh = await _reread_before_revoke(
        sessions, nylas, case=case, account=account, actor=actor, now=now, method=method
    )
    if fresh is not None:
        return fresh
    try:
        if v3:
            await nylas.delete_account(account.id)
        else:
            await nylas.revoke_all(account.id)
    except NylasError as exc:
        await finish_hold(
            sessions,
            case_id=case_id,
            actor=actor,
            now=now,
            action="revoke_failed",
            details={"method": method, "error": str(exc)},
            said=line("Revoking by ", who(actor), f" failed: {exc}"),
        )
        return ActionResult(ActionOutcome.DONE, f"Revoking for case #{case_id} failed: {exc}", case)
    deleted = gone_event(account, now, "revoke")
    done = (
        line("Grant deleted by ", who(actor), ".")
        if v3
        else line(
            "All access tokens revoked by ", who(actor), "; the end user must re-authenticate."
        )
    )
    await finish_hold(
        sessions,
        case_id=case_id,
        actor=actor,
        now=now,
        action="revoked",
        details={"method": method},
        said=done,
        event=deleted if v3 else None,
    )
    return result(ActionOutcome.DONE, line("Done: ", *done), case)


def syncs_again(case: Case, account: Account, remote: RemoteAccount) -> bool:
    """Whether the account as Nylas reports it now would close the case: it syncs again."""
    state = remote.sync_state or "unknown"
    health = classify(account.api_version, state).health
    if health is Health.HEALTHY:
        return True
    # Connecting or catching up after a re-authentication; but a stuck case is about exactly
    # that state lasting.
    return health is Health.TRANSIENT and not (case.kind == CaseKind.STUCK and case.state == state)


async def _reread_before_revoke(
    sessions: Sessions,
    nylas: NylasClient,
    *,
    case: Case,
    account: Account,
    actor: str,
    now: datetime,
    method: str,
) -> ActionResult | None:
    """Read the account again; an ActionResult when nothing must be revoked, else None."""
    assert case.id is not None
    try:
        remote = await nylas.get_account(account.id)
    except NylasNotFound:
        gone = gone_event(account, now, "revoke")
        await finish_hold(
            sessions,
            case_id=case.id,
            actor=actor,
            now=now,
            action="revoke_skipped",
            details={"method": method, "reason": "the account no longer exists in Nylas"},
            said=line(
                "Revoke by ", who(actor), " not needed: the account no longer exists in Nylas."
            ),
            event=gone,
        )
        return ActionResult(
            ActionOutcome.DONE, "Nothing was revoked: the account no longer exists in Nylas.", case
        )
    except NylasError as exc:
        await finish_hold(
            sessions,
            case_id=case.id,
            actor=actor,
            now=now,
            action="revoke_failed",
            details={"method": method, "error": str(exc), "step": "re-read"},
            said=line(
                "Revoke by ", who(actor), " not done: Nylas could not be asked about the account."
            ),
        )
        return ActionResult(
            ActionOutcome.UNAVAILABLE,
            f"Nothing was revoked for case #{case.id}: Nylas could not be asked whether the "
            f"account is still broken. {exc}",
            case,
        )
    if not syncs_again(case, account, remote):
        return None
    state = remote.sync_state or "unknown"
    await finish_hold(
        sessions,
        case_id=case.id,
        actor=actor,
        now=now,
        action="revoke_skipped",
        details={"method": method, "state": state, "reason": "the account syncs again"},
        said=line(
            "Revoke by ",
            who(actor),
            f" not done: the account is {state} again (the end user re-authenticated), so "
            "nothing was revoked.",
        ),
        event=reported_event(account, remote, now, "revoke"),
    )
    return ActionResult(
        ActionOutcome.DONE,
        f"Nothing was revoked: the account of case #{case.id} is {state} again, so the end "
        "user re-authenticated meanwhile and revoking would undo it.",
        case,
    )


async def _release(sessions: Sessions, *, case_id: int) -> None:
    async with sessions() as session, session.begin():
        case = await session.get(Case, case_id, with_for_update=True)
        if case is not None:
            case.busy_with, case.busy_until = None, None
            session.add(case)


async def delete_duplicate(
    sessions: Sessions, *, case_id: int, actor: str, now: datetime, nylas: NylasClient | None
) -> ActionResult:
    """Delete the old account id of a duplicate case: v2 account or v3 grant, in Nylas."""
    if nylas is None:
        return ActionResult(
            ActionOutcome.UNAVAILABLE, "Deleting needs the Nylas API credentials to be set."
        )
    held = await hold_for_nylas(sessions, case_id=case_id, now=now, what="A delete")
    if isinstance(held, ActionResult):
        return held
    case, account = held
    refusal = None
    if case.kind != CaseKind.DUPLICATE:
        refusal = f"Case #{case_id} is not a duplicate account; nothing was deleted."
    elif account.api_version != nylas.api_version:
        refusal = (
            f"Account {account.id} is a {account.api_version} account and reauthbot talks to "
            f"the {nylas.api_version} API; delete it in the Nylas Dashboard."
        )
    if refusal is not None:
        await _release(sessions, case_id=case_id)
        return ActionResult(ActionOutcome.REFUSED, refusal, case)
    kept = case.related_account_id or "the newer account"
    try:
        await nylas.delete_account(account.id)
    except NylasNotFound:
        pass  # already gone (deleted elsewhere, or a replay of a delete that happened)
    except NylasError as exc:
        await finish_hold(
            sessions,
            case_id=case_id,
            actor=actor,
            now=now,
            action="delete_failed",
            details={"error": str(exc)},
            said=line("Deleting the old account by ", who(actor), f" failed: {exc}"),
        )
        return ActionResult(
            ActionOutcome.DONE, f"Deleting account {account.id} failed: {exc}", case
        )
    gone = gone_event(account, now, "delete")
    done = line(f"Old account {account.id} deleted by ", who(actor), f"; {kept} is kept.")
    await finish_hold(
        sessions,
        case_id=case_id,
        actor=actor,
        now=now,
        action="deleted_duplicate",
        details={"deleted": account.id, "kept": kept},
        said=done,
        event=gone,
    )
    return result(ActionOutcome.DONE, line("Done: ", *done), case)
