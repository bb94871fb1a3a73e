"""The Slack sink: posts an alert's parent message once, then updates it in place and threads.

A case and an incident are sent alike: each is a ``Card`` (where its message is, its text,
its blocks, the metadata that names it), and one path posts, updates, DMs or threads it.

``chat.postMessage`` is paced to one message per second per channel, Slack's documented
pace, so a burst of alerts is spread out instead of answered with 429s. A 429 that happens
anyway, a 5xx or a timeout is handed back to the notifier as a temporary error (retried
after ``Retry-After`` or with backoff); errors that retrying cannot fix are permanent.

A parent message carries the case number in its message metadata. When a post is attempted
again (the last attempt timed out, or the process died before recording it), the channel's
recent history is searched for that metadata first, so a message Slack did accept is adopted
instead of posted a second time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aiohttp import ClientError
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.notifier import Posted, SinkError
from bot.slack import blocks, incidents, notices
from storage.incidents import IncidentView
from storage.models import Account, Case, OutboxKind, OutboxMessage, ReauthLink
from workflows.words import from_json

log = logging.getLogger("reauthbot.slack.sink")

# Slack allows about one post per second per channel; a margin absorbs jitter in latency.
POST_INTERVAL = 1.1
CASE_EVENT = "reauthbot_case"  # metadata event_type of a case's parent message
INCIDENT_EVENT = "reauthbot_incident"  # and of an incident's message
NOTICE_EVENT = "reauthbot_notice"  # and of a notice with a key
NOTICE_KINDS = (OutboxKind.NOTICE, OutboxKind.NOTICE_UPDATE, OutboxKind.NOTICE_THREAD)
# How far back, before the message was queued, a retried post looks for an earlier copy
# (room for clock skew between this host and Slack), and how much history it reads at most.
LOOKBACK_MARGIN = timedelta(minutes=5)
LOOKBACK_PAGE = 200
LOOKBACK_PAGES = 10
PERMANENT_ERRORS = frozenset(
    {
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "no_permission",
        "missing_scope",
        "msg_too_long",
        "invalid_blocks",
        "invalid_blocks_format",
        "cant_update_message",
        "message_not_found",
        "edit_window_closed",
        "restricted_action",
    }
)


class SlackSink:
    name = "slack"

    def __init__(
        self,
        client: AsyncWebClient,
        *,
        post_interval: float = POST_INTERVAL,
        revoke_enabled: bool = False,
        outreach: str | None = None,
    ) -> None:
        self._client = client
        self._revoke_enabled = revoke_enabled
        self._outreach = outreach
        self._interval = post_interval
        self._next_post: dict[str, float] = {}

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
        notice = message.kind in NOTICE_KINDS
        if not notice and incident is None and (case is None or account is None):
            raise SinkError("case_missing", permanent=True)
        try:
            if notice:
                return await self._notice(message, parent)
            if incident is not None:
                return await self._send(message, incident_card(incident, outreach=self._outreach))
            assert case is not None and account is not None
            card = case_card(
                case,
                account,
                revoke_enabled=self._revoke_enabled,
                outreach=self._outreach,
                link=link,
            )
            return await self._send(message, card)
        except SlackApiError as exc:
            raise _sink_error(exc) from exc
        except (TimeoutError, ClientError) as exc:
            raise SinkError(type(exc).__name__) from exc

    async def _send(self, message: OutboxMessage, card: Card) -> Posted | None:
        """Post a subject's parent message once, update it in place, DM it, or thread a line.

        A direct message carries the whole alert, so it does not wait for the parent message:
        when the channel cannot be posted to, the people an escalation calls still hear of it.
        """
        if message.kind == OutboxKind.POST:
            channel = card.channel or message.channel
            return await self._post_once(message, channel, card.text, card.blocks(), card.metadata)
        if message.kind == OutboxKind.DM:
            await self._direct(message, card.text, card.blocks())
            return None
        if card.ts is None or card.channel is None:
            # The parent message is not posted yet (its post is being retried): wait for it.
            raise SinkError("parent_not_posted", retry_after=2.0)
        if message.kind == OutboxKind.UPDATE:
            await self._client.chat_update(
                channel=card.channel, ts=card.ts, text=card.text, blocks=card.blocks()
            )
            return None
        await self._reply(message, card.channel, card.ts)
        return None

    async def _post_once(
        self,
        message: OutboxMessage,
        channel: str,
        text: str,
        body: list[dict[str, Any]],
        metadata: dict[str, Any],
    ) -> Posted:
        """Post a parent message carrying ``metadata``, or adopt the copy a retry finds."""
        if message.attempts > 1:
            earlier = await self._find_post(channel, metadata, since=message.created_at)
            if earlier is not None:
                return earlier
        await self._pace(channel)
        response = await self._client.chat_postMessage(
            channel=channel,
            text=text,
            blocks=body,
            metadata=metadata,
            unfurl_links=False,
            unfurl_media=False,
        )
        return Posted(channel=str(response["channel"]), ts=str(response["ts"]))

    async def _direct(self, message: OutboxMessage, text: str, body: list[dict[str, Any]]) -> None:
        """Send a message to one person: the escalation's note, then the alert it is about."""
        await self._pace(message.channel)
        note = direct_note(message)
        await self._client.chat_postMessage(
            channel=message.channel,
            text=f"{note} {text}",
            blocks=[blocks.section(note), *body],
            unfurl_links=False,
            unfurl_media=False,
        )

    async def _reply(self, message: OutboxMessage, channel: str, ts: str) -> None:
        """Add one line to the thread of the parent message at ``channel``/``ts``."""
        await self._pace(channel)
        await self._client.chat_postMessage(
            channel=channel,
            thread_ts=ts,
            text=thread_text(message),
            reply_broadcast=bool(message.payload.get("broadcast")),
        )

    async def _notice(self, message: OutboxMessage, parent: Posted | None) -> Posted | None:
        """Post a message about no one case, update it in place, or add to its thread.

        A notice with a key (a webhook alert) is posted once, like a case's alert: a retried
        post adopts the copy an earlier attempt left in the channel.
        """
        payload = message.payload
        text, body = notices.notice_text(payload), notices.notice_blocks(payload)
        key = payload.get("key")
        if message.kind == OutboxKind.NOTICE:
            if key is not None:
                metadata = {"event_type": NOTICE_EVENT, "event_payload": {"key": str(key)}}
                return await self._post_once(message, message.channel, text, body, metadata)
            await self._pace(message.channel)
            await self._client.chat_postMessage(
                channel=message.channel,
                text=text,
                blocks=body,
                unfurl_links=False,
                unfurl_media=False,
            )
            return None
        if parent is None:
            raise SinkError("parent_not_posted", retry_after=2.0)
        if message.kind == OutboxKind.NOTICE_UPDATE:
            await self._client.chat_update(
                channel=parent.channel, ts=parent.ts, text=text, blocks=body
            )
            return None
        await self._pace(parent.channel)
        await self._client.chat_postMessage(
            channel=parent.channel,
            thread_ts=parent.ts,
            text=blocks.escape(str(payload.get("text", ""))),
        )
        return None

    async def _find_post(
        self, channel: str, metadata: dict[str, Any], *, since: datetime
    ) -> Posted | None:
        """The message carrying ``metadata`` if an earlier attempt did post it, else None."""
        oldest = f"{(since - LOOKBACK_MARGIN).timestamp():.6f}"
        cursor: str | None = None
        for _ in range(LOOKBACK_PAGES):
            try:
                page = await self._client.conversations_history(
                    channel=channel,
                    oldest=oldest,
                    limit=LOOKBACK_PAGE,
                    cursor=cursor,
                    include_all_metadata=True,
                )
            except SlackApiError as exc:
                error = _sink_error(exc)
                if exc.response.status_code == 429 or exc.response.status_code >= 500:
                    raise error from exc
                # Without history (e.g. the scope was not granted) a missed alert is worse
                # than a repeated one: post again.
                log.warning(
                    "cannot read the channel to check for an earlier post: %s",
                    error.code,
                    extra={**metadata["event_payload"], "channel": channel},
                )
                return None
            for found in page.get("messages") or []:
                if _carries(found, metadata):
                    log.info(
                        "adopted the parent message an earlier attempt posted",
                        extra={**metadata["event_payload"], "ts": found["ts"]},
                    )
                    return Posted(channel=channel, ts=str(found["ts"]))
            cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
            if not page.get("has_more") or cursor is None:
                return None
        return None

    async def _pace(self, channel: str) -> None:
        now = time.monotonic()
        due = self._next_post.get(channel, now)
        if due > now:
            await asyncio.sleep(due - now)
        self._next_post[channel] = max(due, now) + self._interval


@dataclass(frozen=True, slots=True)
class Card:
    """An alert subject's parent message as the sink sends it: a case's or an incident's."""

    channel: str | None  # where it is posted, once it is
    ts: str | None
    text: str  # the notification text
    blocks: Callable[[], list[dict[str, Any]]]  # rendered only when a message needs them
    metadata: dict[str, Any]  # names the subject, so a retried post finds an earlier copy


def case_card(
    case: Case,
    account: Account,
    *,
    revoke_enabled: bool,
    outreach: str | None = None,
    link: ReauthLink | None = None,
) -> Card:
    """The card of a case: its alert, with what became of its newest re-auth ``link``."""
    return Card(
        channel=case.slack_channel,
        ts=case.slack_ts,
        text=blocks.fallback_text(case, account),
        blocks=lambda: blocks.alert_blocks(
            case, account, revoke_enabled=revoke_enabled, outreach=outreach, link=link
        ),
        metadata=case_metadata(case),
    )


def incident_card(view: IncidentView, *, outreach: str | None = None) -> Card:
    """The card of an incident: one message for its storm of cases."""
    incident = view.incident
    return Card(
        channel=incident.slack_channel,
        ts=incident.slack_ts,
        text=incidents.incident_fallback(view),
        blocks=lambda: incidents.incident_blocks(view, outreach=outreach),
        metadata=incident_metadata(view),
    )


def case_metadata(case: Case) -> dict[str, Any]:
    """Message metadata that names the case a parent message belongs to."""
    return {"event_type": CASE_EVENT, "event_payload": {"case_id": case.id}}


def incident_metadata(view: IncidentView) -> dict[str, Any]:
    """Message metadata that names the incident a message belongs to."""
    return {"event_type": INCIDENT_EVENT, "event_payload": {"incident_id": view.incident.id}}


def _carries(message: dict[str, Any], wanted: dict[str, Any]) -> bool:
    metadata = message.get("metadata") or {}
    payload = metadata.get("event_payload") or {}
    return bool(
        metadata.get("event_type") == wanted["event_type"]
        and all(payload.get(k) == v for k, v in wanted["event_payload"].items())
    )


def direct_note(message: OutboxMessage) -> str:
    """The note a direct message starts with, escaped: it names an account by its email."""
    return blocks.escape(str(message.payload.get("text", "")))


def thread_text(message: OutboxMessage) -> str:
    """A thread line, then whatever someone typed: escaped, so that neither can ping or link.

    The people a line names (``parts``) are the only mentions; its words may quote an email,
    a Nylas error or a state Nylas reported, and are escaped like a quote. A line without
    ``parts`` names no one and is escaped whole.
    """
    payload = message.payload
    parts = payload.get("parts")
    text = (
        blocks.words(from_json(parts))
        if parts is not None
        else blocks.escape(str(payload.get("text", "")))
    )
    quote = payload.get("quote")
    return f"{text} {blocks.escape(str(quote))}" if quote else text


def _sink_error(exc: SlackApiError) -> SinkError:
    response = exc.response
    code = str(response.get("error") or f"http_{response.status_code}")
    if response.status_code == 429:
        try:
            retry_after = float(response.headers.get("Retry-After", "1"))
        except ValueError:
            retry_after = 1.0
        return SinkError("ratelimited", retry_after=retry_after)
    if response.status_code >= 500:
        return SinkError(f"http_{response.status_code}")
    return SinkError(code, permanent=code in PERMANENT_ERRORS)
