"""The PagerDuty sink: sends the outbox's page events through the Events API v2 client.

Every event of one alert subject shares its dedup key (``workflows.subject.pager_key``:
``reauthbot-case-<n>``, of a storm ``reauthbot-incident-<n>``), so PagerDuty keeps one alert
per case or incident and a repeated event (a retry after a lost answer) changes nothing.
"""

from __future__ import annotations

from bot.notifier import Posted, SinkError
from storage.incidents import IncidentView
from storage.models import Account, Case, OutboxMessage, ReauthLink
from workflows.paging import PagerDuty, PagingRejected, PagingUnavailable
from workflows.subject import pager_key

SOURCE = "reauthbot"


class PagerSink:
    name = "pagerduty"

    def __init__(self, pager: PagerDuty) -> None:
        self._pager = pager

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
        key = pager_key(case_id=message.case_id, incident_id=message.incident_id)
        action = message.payload.get("action")
        try:
            if action == "trigger":
                await self._pager.trigger(
                    key,
                    str(message.payload.get("summary") or f"reauthbot case #{message.case_id}"),
                    source=SOURCE,
                    custom_details=dict(message.payload.get("details") or {}),
                )
            elif action == "acknowledge":
                await self._pager.acknowledge(key)
            elif action == "resolve":
                await self._pager.resolve(key)
            else:
                raise SinkError(f"unknown_page_action_{action}", permanent=True)
        except PagingRejected as exc:
            raise SinkError(f"pagerduty_rejected_{exc.status}", permanent=True) from exc
        except PagingUnavailable as exc:
            raise SinkError("pagerduty_unavailable", retry_after=exc.retry_after) from exc
        return None
