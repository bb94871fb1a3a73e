"""The outreach sink: tells the end user of a broken mailbox how to reconnect it.

The outbox message's payload says what happened (``event``: requested, nudge or completed),
to whom (``to``) and with which tracked link. On the ``nylas`` channel the requested and
nudge events each send one email from the support mailbox, and completed sends nothing. On
the ``webhook`` channel every event is POSTed, signed, to the receiver, who writes to the user.

An email must never go out twice, so when Nylas may or may not have taken it (the request
left and no answer came) the message fails for good and the card shows it as failed. A
webhook event in that state is sent again: it carries the same ``id`` on every attempt, and
the receiver is expected to drop an id it has already handled.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bot.metrics import Metrics
from bot.notifier import Posted, SinkError
from storage import outbox
from storage.incidents import IncidentView
from storage.models import Account, Case, OutboxMessage, ReauthLink
from workflows.outreach import (
    COMPLETED,
    EVENTS,
    NUDGE,
    NylasMailer,
    OutreachError,
    OutreachRejected,
    OutreachUnavailable,
    OutreachWebhook,
    check_template,
    email_text,
)

CHANNELS = ("nylas", "webhook")
DEFAULT_SUBJECT = "Please reconnect your mailbox"
NUDGE_PREFIX = "Reminder: "


class OutreachSink:
    """Deliver outreach events by email through Nylas or to a signed webhook."""

    name = "outreach"

    def __init__(
        self,
        *,
        channel: str,
        mailer: NylasMailer | None = None,
        webhook: OutreachWebhook | None = None,
        subject: str = DEFAULT_SUBJECT,
        template: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if channel not in CHANNELS:
            raise ValueError(f"The outreach channel must be one of {CHANNELS}, not {channel!r}.")
        if channel == "nylas" and mailer is None:
            raise ValueError("The nylas outreach channel needs a NylasMailer.")
        if channel == "webhook" and webhook is None:
            raise ValueError("The webhook outreach channel needs an OutreachWebhook.")
        if template is not None:
            check_template(template)  # a bad template stops the start, not each send
        self.channel = channel
        self._mailer = mailer
        self._webhook = webhook
        self._subject = subject
        self._template = template
        self._metrics = metrics

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
        payload = message.payload
        event = payload.get("event")
        to = payload.get("to")
        if event not in EVENTS or not isinstance(to, str) or not to:
            raise SinkError("outreach_bad_message", permanent=True)
        if self.channel == "nylas" and message.last_error == outbox.IN_FLIGHT:
            # An earlier attempt was cut off mid-send (the process died): the email may have
            # gone out, and it must never go out twice.
            self._count("uncertain")
            raise SinkError("outreach_uncertain", permanent=True)
        try:
            if self.channel == "nylas":
                if event == COMPLETED:
                    return None
                await self._email(payload, to, nudge=event == NUDGE)
            else:
                await self._post(payload, event, to)
        except OutreachRejected as exc:
            self._count("rejected")
            raise SinkError(f"outreach_rejected_{exc.status}", permanent=True) from exc
        except OutreachUnavailable as exc:
            self._count("unavailable")
            raise SinkError("outreach_unavailable", retry_after=exc.retry_after) from exc
        except OutreachError as exc:  # OutreachUncertain: sent, but no answer came
            self._count("uncertain")
            if self.channel == "nylas":
                raise SinkError("outreach_uncertain", permanent=True) from exc
            raise SinkError("outreach_unavailable") from exc
        self._count("sent")
        return None

    async def _email(self, payload: dict[str, Any], to: str, *, nudge: bool) -> None:
        assert self._mailer is not None
        link = payload.get("link")
        expires = payload.get("link_expires_at")
        if not isinstance(link, str) or not link or not isinstance(expires, str):
            raise SinkError("outreach_bad_message", permanent=True)
        try:
            expires_at = datetime.fromisoformat(expires)
        except ValueError:
            raise SinkError("outreach_bad_message", permanent=True) from None
        text = email_text(link=link, expires_at=expires_at, nudge=nudge, template=self._template)
        subject = NUDGE_PREFIX + self._subject if nudge else self._subject
        await self._mailer.send(to=to, subject=subject, text=text)

    async def _post(self, payload: dict[str, Any], event: str, to: str) -> None:
        assert self._webhook is not None
        event_id = payload.get("id")
        if not isinstance(event_id, str) or not event_id:
            raise SinkError("outreach_bad_message", permanent=True)
        await self._webhook.post(
            {
                "id": event_id,
                "type": event,
                "created_at": payload.get("at"),
                "data": {
                    "account_id": payload.get("account_id"),
                    "email": to,
                    "provider": payload.get("provider"),
                    "case": payload.get("case"),
                    "link": payload.get("link"),
                    "link_expires_at": payload.get("link_expires_at"),
                },
            }
        )

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.child(self._metrics.outreach, self.channel, outcome).inc()
