"""The notifier: drains the outbox into a sink (the log in local mode, Slack otherwise).

Each message is leased before it is sent and marked sent afterwards, so a crash between the two
leaves it to be retried when the lease runs out rather than lost. Temporary sink errors are
retried with backoff; permanent ones are recorded on the case and counted, and never retried.
On shutdown the notifier stops between two messages and hands back the leases of the rest of
its batch, so another replica (or the next start) sends them at once instead of after the
lease: a batch of posts paced at one a second would otherwise hold the shutdown for a minute.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from bot import logs, render
from bot.card import case_card, incident_card
from bot.metrics import Metrics, label_word
from storage import actors, cases, incidents, links, notices, outbox
from storage.incidents import IncidentView
from storage.models import Account, Case, OutboxKind, OutboxMessage, ReauthLink
from workflows.cleanup import ABOUT as CLEANUP
from workflows.cleanup import notice_text as cleanup_notice_text
from workflows.clock import Clock
from workflows.episodes import Episodes
from workflows.webhook_watch import ABOUT as WEBHOOK_DESTINATION

log = logging.getLogger("reauthbot.notifier")

MAX_ATTEMPTS = 12
MAX_BACKOFF = timedelta(minutes=5)
# Temporary errors are retried past MAX_ATTEMPTS until a message is this old: twelve
# attempts last 18 minutes against 5xx, 12 s against 429s with Retry-After 1, and 24 s for a
# line waiting on its parent, and an outage must delay messages, not drop them.
RETRY_FOR = timedelta(hours=24)
# Retryable errors that are no outage of the sink: a thread line waiting for its parent.
WAITING_CODES = frozenset({"parent_not_posted"})
# Messages that go where an earlier notice was posted (its payload "key" names it).
NOTICE_FOLLOWUPS = (OutboxKind.NOTICE_UPDATE, OutboxKind.NOTICE_THREAD)
NOTICE_KINDS = (OutboxKind.NOTICE, *NOTICE_FOLLOWUPS)
# Messages that show a case's card, and so its re-authentication link.
CARD_KINDS = (OutboxKind.POST, OutboxKind.UPDATE, OutboxKind.DM)


@dataclass(frozen=True, slots=True)
class Posted:
    """Where a parent message landed, to be stored on its case."""

    channel: str
    ts: str


class SinkError(Exception):
    """A sink could not deliver; ``permanent`` errors are never retried."""

    def __init__(
        self, code: str, *, permanent: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(code)
        self.code = code
        self.permanent = permanent
        self.retry_after = retry_after


class Sink(Protocol):
    name: str

    async def deliver(
        self,
        message: OutboxMessage,
        case: Case | None,
        account: Account | None,
        incident: IncidentView | None = None,
        *,
        parent: Posted | None = None,
        link: ReauthLink | None = None,
    ) -> Posted | None:
        """Send one message; return the coordinates of a newly posted parent message.

        A message of an incident comes with ``incident`` (and no case). An update or thread
        line of a notice comes with ``parent``, where the notice was posted (None: not yet).
        A message of a case comes with the case's newest re-authentication ``link``, if any.
        """


class LogSink:
    """Local mode: every alert is written to the log instead of Slack.

    A case's or an incident's card is one record: its header as the message, and the card
    as it would show in Slack below it, as lines (``bot.render``, ``logs.BLOCK``).
    """

    name = "log"

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        revoke_enabled: bool = False,
        outreach: str | None = None,
    ) -> None:
        self._log = logger or logging.getLogger("reauthbot.alerts")
        self._revoke_enabled = revoke_enabled
        self._outreach = outreach

    async def deliver(
        self,
        message: OutboxMessage,
        case: Case | None,
        account: Account | None,
        incident: IncidentView | None = None,
        *,
        parent: Posted | None = None,
        link: ReauthLink | None = None,
    ) -> Posted | None:
        fields: dict[str, object] = {}
        if message.case_id is not None:
            fields["case"] = message.case_id
        if message.incident_id is not None:
            fields["incident"] = message.incident_id
        fields["kind"] = message.kind
        if incident is not None and message.kind in (OutboxKind.POST, OutboxKind.UPDATE):
            verb = "storm" if message.kind == OutboxKind.POST else "storm updated"
            lines = render.incident_lines(incident_card(incident, outreach=self._outreach))
            self._card(verb, lines, fields)
        elif message.kind == OutboxKind.THREAD:
            line = render.thread_line(message.payload)
            self._log.info("alert thread: %s", line, extra=fields)
        elif message.kind == OutboxKind.DM:
            line = render.inline(str(message.payload.get("text", "")))
            self._log.warning("alert for %s: %s", message.channel, line, extra=fields)
        elif message.payload.get("about") == WEBHOOK_DESTINATION:
            self._log.warning("webhook alert: %s", render.webhook_notice_text(message.payload))
        elif message.payload.get("about") == CLEANUP and message.kind != OutboxKind.NOTICE_THREAD:
            self._log.warning("billing clean-up: %s", cleanup_notice_text(message.payload))
        elif message.kind == OutboxKind.NOTICE_THREAD:
            self._log.info("notice thread: %s", message.payload.get("text", ""), extra=fields)
        elif message.kind in (OutboxKind.NOTICE, OutboxKind.NOTICE_UPDATE):
            title = str(message.payload.get("title", "notice"))
            lines = [str(line) for line in message.payload.get("lines") or []]
            self._log.info("%s: %s", title, " ".join(lines), extra=fields)
        elif case is not None and account is not None:
            verb = "alert" if message.kind == OutboxKind.POST else "alert updated"
            card = case_card(
                case,
                account,
                revoke_enabled=self._revoke_enabled,
                outreach=self._outreach,
                link=link,
            )
            self._card(verb, render.card_lines(card), fields)
        return None

    def _card(self, verb: str, lines: list[str], fields: dict[str, object]) -> None:
        header, *rest = lines
        self._log.warning("%s: %s", verb, header, extra={**fields, logs.BLOCK: rest})


# Asked before a message is sent, with a reading session and the time: should it still go?
MessageCheck = Callable[[AsyncSession, OutboxMessage, datetime], Awaitable[bool]]
# Called in the transaction that marks a message sent.
AfterSent = Callable[[AsyncSession, OutboxMessage, datetime], Awaitable[None]]
# Called in the transaction that gives a message up, with the error's code.
AfterFailed = Callable[[AsyncSession, OutboxMessage, str, datetime], Awaitable[None]]


def _subject(message: OutboxMessage) -> tuple[int | None, int | None]:
    """What a message is about: updates of one subject coalesce."""
    return (message.case_id, message.incident_id)


def backoff(attempts: int, retry_after: float | None = None) -> timedelta:
    """Delay before the next attempt: Slack's Retry-After when given, else doubling from 1 s."""
    if retry_after is not None:
        return timedelta(seconds=max(retry_after, 0.0))
    # The exponent is capped too: attempts go on past MAX_ATTEMPTS while an outage lasts.
    return min(timedelta(seconds=2 ** min(max(attempts - 1, 0), 20)), MAX_BACKOFF)


class Notifier:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        sink: Sink,
        *,
        clock: Clock,
        metrics: Metrics,
        batch: int = 50,
        lease: timedelta = timedelta(seconds=60),
        readers: async_sessionmaker[AsyncSession] | None = None,
        channel: str | None = None,
        not_channels: Sequence[str] = (),
        stopping: Callable[[], bool] = lambda: False,
        still_due: MessageCheck | None = None,
        after_sent: AfterSent | None = None,
        after_failed: AfterFailed | None = None,
        mark_in_flight: bool = False,
        episodes: Episodes | None = None,
    ) -> None:
        self._sessions = sessions
        self._episodes = episodes or Episodes()
        self._stopping = stopping
        self._channel = channel
        self._not_channels = tuple(not_channels)
        self._still_due = still_due
        self._after_sent = after_sent
        self._after_failed = after_failed
        # Commit, before each send, that it has begun: for sinks that must never send twice.
        self._mark_in_flight = mark_in_flight
        self._readers = readers or sessions
        self._sink = sink
        self._clock = clock
        self._metrics = metrics
        self._batch = batch
        self._lease = lease
        self._owner = f"notifier-{uuid.uuid4().hex[:8]}"

    async def drain_once(self) -> int:
        """Deliver the messages that are due now; return how many were handled.

        Several pending updates of one case's message become one: the message is rendered
        from the case as it is now, so the last update carries every earlier change.
        """
        async with self._sessions() as session, session.begin():
            claimed = list(
                await outbox.claim(
                    session,
                    owner=self._owner,
                    now=self._clock(),
                    lease=self._lease,
                    limit=self._batch,
                    channel=self._channel,
                    not_channels=self._not_channels,
                )
            )
            last_update = {_subject(m): m.id for m in claimed if m.kind == OutboxKind.UPDATE}
            redundant = [
                m.id
                for m in claimed
                if m.kind == OutboxKind.UPDATE
                and m.id is not None
                and last_update.get(_subject(m)) != m.id
            ]
            await outbox.mark_superseded(
                session, message_ids=redundant, owner=self._owner, now=self._clock()
            )
        for index, message in enumerate(claimed):
            if self._stopping():
                await self._release(claimed[index:], redundant)
                break
            if message.id in redundant:
                self._metrics.notifier_messages.labels(
                    sink=self._sink.name, kind=message.kind, outcome="coalesced"
                ).inc()
                continue
            await self._deliver(message)
        return len(claimed)

    async def _release(self, rest: list[OutboxMessage], redundant: list[int]) -> None:
        ids = [m.id for m in rest if m.id is not None and m.id not in redundant]
        async with self._sessions() as session, session.begin():
            released = await outbox.release(session, message_ids=ids, owner=self._owner)
        log.info("stopping: %d leased messages handed back unsent", released)

    async def _deliver(self, message: OutboxMessage) -> None:
        assert message.id is not None
        case = account = incident = parent = link = None
        notice_key = message.payload.get("key") if message.kind in NOTICE_KINDS else None
        async with self._readers() as session:
            if message.case_id is not None:
                case = await cases.get_case(session, case_id=message.case_id)
                if case is not None:
                    account = await cases.get_account(session, account_id=case.account_id)
                if case is not None and message.kind in CARD_KINDS:
                    link = await links.latest(session, case_id=message.case_id)
            if message.incident_id is not None:
                incident = await incidents.view(session, incident_id=message.incident_id)
            if notice_key is not None and message.kind in NOTICE_FOLLOWUPS:
                where = await notices.find_posted(session, key=str(notice_key))
                if where is not None:
                    parent = Posted(channel=where.channel, ts=where.ts)
            due = self._still_due is None or await self._still_due(session, message, self._clock())
        sink = self._sink.name
        if not due:
            await self._withdraw(message)
            return
        if self._mark_in_flight:
            async with self._sessions() as session, session.begin():
                await outbox.mark_in_flight(session, message_id=message.id, owner=self._owner)
        began = self._episodes.now()
        try:
            if message.incident_id is not None and incident is None:
                raise SinkError("incident_missing", permanent=True)
            posted = await self._sink.deliver(
                message, case, account, incident, parent=parent, link=link
            )
        except SinkError as exc:
            self._metrics.notifier_errors.labels(sink=sink, error=label_word(exc.code)).inc()
            await self._failed(message, exc, began)
            return
        except Exception as exc:
            # A bug in the sink, not an outage: its own episode, with the traceback once.
            unexpected = f"{sink} sink"
            self._episodes.failed(exc, loop=unexpected, what=unexpected, began=began)
            log.debug("sink raised an unexpected error", extra={"message_id": message.id})
            error = label_word(type(exc).__name__)
            self._metrics.notifier_errors.labels(sink=sink, error=error).inc()
            await self._failed(message, SinkError(type(exc).__name__), began)
            return
        async with self._sessions() as session, session.begin():
            now = self._clock()
            owner = self._owner
            sent = await outbox.mark_sent(session, message_id=message.id, owner=owner, now=now)
            if not sent:
                log.warning("lease lost before marking sent", extra={"message_id": message.id})
            elif self._after_sent is not None:
                await self._after_sent(session, message, now)
            if posted is not None and case is not None:
                stored = await cases.get_case(session, case_id=case.id or 0)
                if stored is not None:
                    stored.slack_channel, stored.slack_ts = posted.channel, posted.ts
                    session.add(stored)
            if posted is not None and notice_key is not None and message.kind == OutboxKind.NOTICE:
                await notices.record_posted(
                    session, key=str(notice_key), channel=posted.channel, ts=posted.ts, now=now
                )
            if posted is not None and incident is not None:
                incident_id = incident.incident.id or 0
                found = await incidents.lock_incident(session, incident_id=incident_id)
                if found is not None:
                    found.slack_channel, found.slack_ts = posted.channel, posted.ts
                    session.add(found)
        self._episodes.succeeded(sink, f"{sink} sink", began=began)
        self._metrics.notifier_messages.labels(sink=sink, kind=message.kind, outcome="sent").inc()

    async def _withdraw(self, message: OutboxMessage) -> None:
        """Drop a message that is no longer due (``still_due`` said so) without sending it."""
        assert message.id is not None
        async with self._sessions() as session, session.begin():
            await outbox.mark_superseded(
                session, message_ids=[message.id], owner=self._owner, now=self._clock()
            )
        self._metrics.notifier_messages.labels(
            sink=self._sink.name, kind=message.kind, outcome="withdrawn"
        ).inc()

    async def _failed(
        self, message: OutboxMessage, error: SinkError, began: datetime | None = None
    ) -> None:
        assert message.id is not None
        now = self._clock()
        give_up = error.permanent or (
            message.attempts >= MAX_ATTEMPTS and now - message.created_at >= RETRY_FOR
        )
        retry_at = now + backoff(message.attempts, error.retry_after)
        async with self._sessions() as session, session.begin():
            if not give_up:
                await outbox.retry_later(
                    session,
                    message_id=message.id,
                    owner=self._owner,
                    error=error.code,
                    available_at=retry_at,
                )
                outcome = "retried"
            else:
                await outbox.mark_failed(
                    session, message_id=message.id, owner=self._owner, error=error.code
                )
                outcome = "failed"
                case = (
                    await cases.get_case(session, case_id=message.case_id)
                    if message.case_id is not None
                    else None
                )
                if case is not None:
                    case.last_error = f"{message.kind} failed: {error.code}"
                    session.add(case)
                    await cases.record_event(
                        session,
                        actor=actors.SYSTEM,
                        action="notify_failed",
                        at=now,
                        case_id=case.id,
                        account_id=case.account_id,
                        details={"kind": message.kind, "error": error.code},
                    )
                if self._after_failed is not None:
                    await self._after_failed(session, message, error.code, now)
        fields = {"message_id": message.id, "case": message.case_id, "attempts": message.attempts}
        if give_up:
            log.error("message %s: %s", outcome, error.code, extra=fields)
        else:
            # Each message retried is one line at DEBUG; an outage is one episode of the sink
            # (a thread line waiting for its parent to be posted is no outage).
            log.debug("message %s: %s", outcome, error.code, extra=fields)
            if error.code not in WAITING_CODES:
                name = self._sink.name
                self._episodes.failed(
                    error.code, loop=name, what=name, retry_at=retry_at, began=began
                )
        self._metrics.notifier_messages.labels(
            sink=self._sink.name, kind=message.kind, outcome=outcome
        ).inc()
