"""Tracked re-authentication links, and reaching the end user with them.

A link reauthbot hands out is ``{REAUTHBOT_PUBLIC_URL}/r/{token}``: the token is random and
only its hash is stored (``storage.links``), with the case, who asked for it, when, and when it
expires. Opening it (``open_link``) records the open and redirects to a Nylas hosted-auth URL
built at that moment, so a link never goes stale because the hosted URL changed. Without a
public URL, the Nylas hosted-auth URL itself is handed out, as before, and nothing is tracked.

Outreach (``[outreach]`` in the policy) sends the link to the end user through the durable
outbox, on ``OUTREACH_CHANNEL``: ``reauth.requested`` at once, then a ``reauth.nudge`` at each
of the policy's ``nudges`` while the case still waits on the user, and ``reauth.completed``
once the user re-authenticated. A nudge is withdrawn by recovery, resolve, snooze or a newer
link, and checked again before it is sent (``still_due``), so none goes out after the case is
resolved.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import actors, cases, outbox
from storage import links as store
from storage.incidents import LINKABLE_KINDS
from storage.models import (
    OUTREACH_CHANNEL,
    Account,
    ApiVersion,
    Case,
    CaseStatus,
    OutboxKind,
    OutboxMessage,
    ReauthLink,
)
from workflows import enduser
from workflows.enduser import OUTREACH_FAILED
from workflows.policy import Outreach
from workflows.words import Text, line

log = logging.getLogger("reauthbot.links")

# The token's random bytes: 32 URL-safe characters, never guessed.
TOKEN_BYTES = 24
TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
MAX_TOKEN = 64

# Nylas does not backfill the notifications of a grant out of service for longer than this
# (v3): a reminder is worth most before then.
RESEND_WINDOW = timedelta(hours=72)
# A last nudge that would fall after the window is moved to this long before it closes.
BEFORE_WINDOW_CLOSES = timedelta(hours=12)
# Bulk outreach: one message to an end user every this often, so a storm of 500 cases does
# not send 500 emails at once (500 take a little over 4 minutes).
BULK_PACE = timedelta(milliseconds=500)

REQUESTED = "reauth.requested"
NUDGE = "reauth.nudge"
COMPLETED = "reauth.completed"

HostedUrl = Callable[[Account], str]


@dataclass(frozen=True, slots=True)
class LinkMaker:
    """What handing out a re-auth link takes: a Nylas hosted-auth URL builder (None when
    Nylas' client id and redirect URI are not set), the public base URL (None: untracked
    links), how long a tracked link works, and the outreach policy."""

    hosted: HostedUrl | None
    public_url: str | None = None
    expire_after: timedelta = timedelta(days=7)
    outreach: Outreach = dataclasses.field(default_factory=Outreach)

    @property
    def tracked(self) -> bool:
        return self.public_url is not None

    @property
    def reaches_out(self) -> bool:
        return self.outreach.channel is not None and self.tracked


@dataclass(frozen=True, slots=True)
class Made:
    """A link handed out: its URL, and its row when tracked."""

    url: str
    link: ReauthLink | None


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def url_of(public_url: str, token: str) -> str:
    return f"{public_url}/r/{token}"


def well_formed(token: str) -> bool:
    """Whether ``token`` could be one reauthbot made (anything else is unknown at once)."""
    return 0 < len(token) <= MAX_TOKEN and set(token) <= TOKEN_CHARS


async def make(
    session: AsyncSession,
    case: Case,
    account: Account,
    *,
    actor: str,
    now: datetime,
    maker: LinkMaker,
) -> Made:
    """Hand out a link for the case: tracked when a public URL is set, else Nylas' own."""
    assert maker.hosted is not None and case.id is not None
    if maker.public_url is None:
        return Made(maker.hosted(account), None)
    token = new_token()
    link = await store.add(
        session,
        token=token,
        case_id=case.id,
        created_by=actor,
        now=now,
        expires_at=now + maker.expire_after,
    )
    return Made(url_of(maker.public_url, token), link)


def nudge_times(
    link_at: datetime,
    nudges: list[timedelta],
    *,
    window_end: datetime | None,
    expires_at: datetime,
) -> list[datetime]:
    """When to remind the end user of a link made at ``link_at``.

    A nudge after the link expires is dropped: it would carry a dead link. With Nylas' resend
    window (v3), the nudges after it give way to one, ``BEFORE_WINDOW_CLOSES`` before it
    ends (or half way there, if the link came late), unless an earlier one is as late.
    """
    times = [link_at + n for n in nudges]
    if window_end is not None and times and times[-1] > window_end > link_at:
        kept = [t for t in times if t <= window_end]
        last = max(window_end - BEFORE_WINDOW_CLOSES, link_at + (window_end - link_at) / 2)
        if not kept or last > kept[-1]:
            kept.append(last)
        times = kept
    return [t for t in times if t < expires_at]


def resend_window_end(case: Case, account: Account) -> datetime | None:
    """When Nylas stops backfilling the grant's notifications (v3); None for v2."""
    if account.api_version != ApiVersion.V3:
        return None
    return (case.broken_since or case.opened_at) + RESEND_WINDOW


async def reach_out(
    session: AsyncSession,
    case: Case,
    account: Account,
    made: Made,
    *,
    now: datetime,
    outreach: Outreach,
    after: timedelta = timedelta(0),
) -> int:
    """Queue the link to the end user, and its nudges; return how many messages were queued.

    Nudges of the case's earlier links are withdrawn: the newest link is the one to remind
    of. ``after`` holds the first message back (bulk outreach paces its messages).
    """
    link = made.link
    assert link is not None and link.id is not None and case.id is not None
    await store.cancel_outreach(session, case_id=case.id, now=now)
    forget_outreach_failure(session, case)
    base = {
        "to": account.email,
        "account_id": account.id,
        "provider": account.provider,
        "case": case.id,
        "link": made.url,
        "link_id": link.id,
        "link_expires_at": link.expires_at.isoformat(),
        "channel": outreach.channel,
    }
    due = [(REQUESTED, f"outreach:{link.id}:requested", now)]
    window_end = resend_window_end(case, account)
    times = nudge_times(now, outreach.nudges, window_end=window_end, expires_at=link.expires_at)
    due += [(NUDGE, f"outreach:{link.id}:nudge:{i}", at) for i, at in enumerate(times)]
    queued = 0
    for event, key, at in due:
        payload = {**base, "event": event, "id": _event_id(), "at": at.isoformat()}
        if await outbox.enqueue(
            session,
            channel=OUTREACH_CHANNEL,
            kind=OutboxKind.OUTREACH,
            now=now,
            case_id=case.id,
            payload=payload,
            dedupe_key=key,
            available_at=at + after,
        ):
            queued += 1
    return queued


def forget_outreach_failure(session: AsyncSession, case: Case) -> None:
    """Clear an earlier outreach's failure from the case: a newer message is on its way, or
    went out, so the card no longer says the end user could not be reached."""
    if (case.last_error or "").startswith(OUTREACH_FAILED):
        case.last_error = None
        session.add(case)


def _event_id() -> str:
    """A new event's id, kept across retries: the receiver drops a repeated one."""
    return f"evt_{uuid.uuid4().hex}"


async def case_closed(session: AsyncSession, case: Case, *, now: datetime) -> None:
    """A case was resolved or snoozed: withdraw its nudges, and tell the team's product
    (``webhook``) of a re-authentication when the end user was reached through it."""
    assert case.id is not None
    withdrawn = await store.cancel_outreach(session, case_id=case.id, now=now)
    if withdrawn:
        log.debug("nudges withdrawn", extra={"case": case.id, "count": withdrawn})
    if not enduser.reauthenticated(case):
        return
    link = await store.latest(session, case_id=case.id)
    # Only the team's product is told: an email saying so would tell the user what they did.
    if link is None or link.sent_via != "webhook" or link.id is None:
        return
    account = await cases.get_account(session, account_id=case.account_id)
    payload = {
        "event": COMPLETED,
        "id": _event_id(),
        "at": now.isoformat(),
        "to": account.email if account is not None else None,
        "account_id": case.account_id,
        "provider": account.provider if account is not None else None,
        "case": case.id,
        "link": None,
        "link_id": link.id,
        "link_expires_at": None,
        "channel": link.sent_via,
        "resolution": case.resolution,
    }
    await outbox.enqueue(
        session,
        channel=OUTREACH_CHANNEL,
        kind=OutboxKind.OUTREACH,
        now=now,
        case_id=case.id,
        payload=payload,
        dedupe_key=f"outreach:{link.id}:completed",
    )


async def still_due(session: AsyncSession, message: OutboxMessage, now: datetime) -> bool:
    """Whether an outreach message should still go out: the case waits on the end user, and
    its link is the case's newest and has not expired. ``reauth.completed`` always goes."""
    payload = message.payload
    if payload.get("event") == COMPLETED:
        return True
    if message.case_id is None:
        return False
    case = await cases.get_case(session, case_id=message.case_id)
    if case is None or case.status in (CaseStatus.RESOLVED, CaseStatus.SNOOZED):
        return False
    link = await store.latest(session, case_id=message.case_id)
    return link is not None and link.id == payload.get("link_id") and now < link.expires_at


def sent_line(payload: dict[str, Any]) -> Text:
    """The case's thread line for an outreach message that went out."""
    event, email = payload.get("event"), payload.get("channel") == "nylas"
    if event == NUDGE:
        return "Reminder emailed to the end user." if email else "The end user was reminded."
    if event == COMPLETED:
        return "The team's product was told the mailbox is connected again."
    if email:
        return "Re-authentication link emailed to the end user."
    return "The end user was notified with the re-authentication link."


async def record_sent(session: AsyncSession, message: OutboxMessage, now: datetime) -> None:
    """Note on the link and the case that an outreach message reached its channel."""
    from workflows.notify import record_change  # notify closes cases through this module

    payload = message.payload
    link_id = payload.get("link_id")
    link = await store.get(session, link_id=link_id, lock=True) if link_id else None
    if link is not None and payload.get("event") in (REQUESTED, NUDGE) and link.sent_at is None:
        link.sent_at, link.sent_via = now, str(payload.get("channel") or "")
        session.add(link)
    case = await cases.get_case(session, case_id=message.case_id) if message.case_id else None
    if case is None:
        return
    forget_outreach_failure(session, case)
    await record_change(
        session,
        case,
        actor=actors.SYSTEM,
        action="outreach_sent",
        now=now,
        line=sent_line(payload),
        details={"event": payload.get("event"), "channel": payload.get("channel")},
    )


async def record_failed(
    session: AsyncSession, message: OutboxMessage, error: str, now: datetime
) -> None:
    """Show on the case that an outreach message was given up (the notifier stored the error
    in ``case.last_error``)."""
    from workflows.notify import record_change

    case = await cases.get_case(session, case_id=message.case_id) if message.case_id else None
    if case is None:
        return
    await record_change(
        session,
        case,
        actor=actors.SYSTEM,
        action="outreach_failed",
        now=now,
        line=f"Reaching the end user failed ({error}): send them the link another way.",
        details={"event": message.payload.get("event"), "error": error},
    )


# Cases ``auto_outreach`` takes on in one pass.
AUTO_BATCH = 100
# Only cases opened this recently are reached automatically: turning ``auto`` on must not
# email every end user of an old backlog at once.
AUTO_SINCE = timedelta(days=1)


async def auto_outreach(
    sessions: async_sessionmaker[AsyncSession], *, now: datetime, maker: LinkMaker
) -> int:
    """Send a link to the end user of every new re-auth case nobody has made one for
    (``[outreach] auto = true``); return how many were reached.

    A case an operator acknowledged, snoozed or made a link for is theirs to handle. Safe
    with several replicas: cases are taken FOR UPDATE SKIP LOCKED, and one with a link is
    left alone.
    """
    if not (maker.reaches_out and maker.outreach.auto and maker.hosted is not None):
        return 0
    has_link = select(ReauthLink.id).where(col(ReauthLink.case_id) == col(Case.id)).exists()
    stmt = (
        select(Case)
        .where(
            col(Case.status) == CaseStatus.OPEN,
            col(Case.kind).in_(LINKABLE_KINDS),
            col(Case.opened_at) >= now - AUTO_SINCE,
            ~has_link,
        )
        .order_by(col(Case.id))
        .limit(AUTO_BATCH)
        .with_for_update(skip_locked=True)
    )
    from workflows.notify import record_change

    reached = 0
    async with sessions() as session, session.begin():
        for case in (await session.exec(stmt)).all():
            account = await cases.get_account(session, account_id=case.account_id)
            if account is None or not account.email:
                continue
            made = await make(session, case, account, actor=actors.SYSTEM, now=now, maker=maker)
            after = BULK_PACE * reached
            await reach_out(
                session, case, account, made, now=now, outreach=maker.outreach, after=after
            )
            case.status = CaseStatus.WAITING_ON_USER
            how = "emailed to" if maker.outreach.channel == "nylas" else "sent to"
            await record_change(
                session,
                case,
                actor=actors.SYSTEM,
                action="reauth_link",
                now=now,
                line=f"Re-authentication link {how} the end user automatically; waiting on them.",
                details={"sent": maker.outreach.channel, "auto": True},
            )
            reached += 1
    return reached


class Opening(StrEnum):
    """What opening a tracked link came to."""

    REDIRECT = "redirect"  # to Nylas' hosted authentication
    CONNECTED = "connected"  # the case is resolved: nothing to do
    UNKNOWN = "unknown"
    EXPIRED = "expired"  # too old, or a newer case of the account needs a newer link
    UNAVAILABLE = "unavailable"  # no hosted-auth URL can be built now


@dataclass(frozen=True, slots=True)
class Opened:
    outcome: Opening
    url: str | None = None
    case_id: int | None = None
    first: bool = False


async def open_link(
    session: AsyncSession, token: str, *, now: datetime, hosted: HostedUrl | None
) -> Opened:
    """Record that the end user opened a link, and say where to send them."""
    from workflows.notify import queue_case_change, record_change

    if not well_formed(token):
        return Opened(Opening.UNKNOWN)
    link = await store.by_token(session, token, lock=True)
    if link is None:
        return Opened(Opening.UNKNOWN)
    case = await cases.get_case(session, case_id=link.case_id)
    if case is None:
        return Opened(Opening.UNKNOWN)
    if case.status == CaseStatus.RESOLVED:
        newer = await cases.get_open_case(session, account_id=case.account_id)
        if newer is not None:  # broken again since: this case's link is not the one
            return Opened(Opening.EXPIRED, case_id=case.id)
        return Opened(Opening.CONNECTED, case_id=case.id)
    if now >= link.expires_at:
        return Opened(Opening.EXPIRED, case_id=case.id)
    account = await cases.get_account(session, account_id=case.account_id)
    if hosted is None or account is None or not account.email:
        return Opened(Opening.UNAVAILABLE, case_id=case.id)
    url = hosted(account)
    first = link.first_opened_at is None
    link.first_opened_at = link.first_opened_at or now
    link.last_opened_at, link.opens = now, link.opens + 1
    session.add(link)
    if first:
        await record_change(
            session,
            case,
            actor=actors.END_USER,
            action="link_opened",
            now=now,
            line=line("The end user opened the re-authentication link."),
            details={"link": link.id},
        )
    else:
        # The card's count of opens: its message is updated, without a thread line.
        case.updated_at = now
        session.add(case)
        await queue_case_change(session, case, "", now, thread=False)
    return Opened(Opening.REDIRECT, url, case.id, first)
