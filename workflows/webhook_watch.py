"""Watch the Nylas webhook destinations that deliver account events to reauthbot.

Nylas marks a destination ``failing`` when nearly every delivery to it fails for 15 minutes
and ``failed`` after 72 hours, when it stops sending and never resends what it missed. Until
someone fixes the endpoint and reactivates it, reauthbot learns of account changes only from
its reconciliation poll. So the destinations are listed at start and every poll interval; one
that carries account triggers (v3 ``grant.*``, v2 ``account.*``) and is not ``active`` gets one
notice in the alert channel, updated in place when it is active again.

Each episode is a ``WebhookAlert`` row (at most one open per destination, by a unique index)
written with its outbox rows in one transaction, so neither a restart nor a second replica
forgets or repeats an alert. Any status other than ``active`` counts as not delivering,
including one Nylas adds later. The notice is plain data; ``bot`` renders it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import outbox, webhook_alerts
from storage.models import ApiVersion, OutboxKind, WebhookAlert
from workflows.nylas import NylasClient, NylasError, WebhookDestination

log = logging.getLogger("reauthbot.webhook_watch")

ACTIVE = "active"
ABOUT = "webhook_destination"  # the payload "about" of these notices
# The triggers that carry account state, by API version.
ACCOUNT_TRIGGER_PREFIX: dict[str, str] = {ApiVersion.V3: "grant.", ApiVersion.V2: "account."}
RESOLVED_ACTIVE = "active"  # the destination delivers again
RESOLVED_GONE = "gone"  # deleted, or no longer has account triggers


@dataclass(frozen=True, slots=True)
class WatchReport:
    """What one check found and did; ``error`` says why the list could not be read."""

    destinations: tuple[WebhookDestination, ...] = ()
    opened: int = 0
    changed: int = 0
    resolved: int = 0
    error: str | None = None


def watches(destination: WebhookDestination) -> bool:
    """Whether the destination delivers account (v2) or grant (v3) triggers."""
    prefix = ACCOUNT_TRIGGER_PREFIX.get(destination.api_version)
    return prefix is not None and any(t.startswith(prefix) for t in destination.triggers)


def notice_key(alert_id: int) -> str:
    """The key under which an alert's notice is posted and later found again."""
    return f"webhook_alert:{alert_id}"


async def check_webhook_destinations(
    sessions: async_sessionmaker[AsyncSession],
    nylas: NylasClient,
    *,
    now: datetime,
    channel: str,
) -> WatchReport:
    """List the destinations, then open, update or resolve their alerts in one transaction.

    When Nylas cannot be asked, nothing changes (an alert is neither opened nor resolved on no
    evidence) and ``error`` says why; the caller reports it, once per outage.
    """
    try:
        listed = await nylas.list_webhook_destinations()
    except NylasError as exc:
        log.debug("cannot list the Nylas webhook destinations: %s", exc)
        return WatchReport(error=str(exc))
    watched = {d.id: d for d in listed if watches(d)}
    opened = changed = resolved = 0
    async with sessions() as session, session.begin():
        alerts = await webhook_alerts.open_alerts(session, api_version=nylas.api_version)
        alerted = {alert.destination_id: alert for alert in alerts}
        for destination in watched.values():
            if destination.status != ACTIVE and destination.id not in alerted:
                opened += await _open(session, destination, now=now, channel=channel)
        for alert in alerts:
            found = watched.get(alert.destination_id)
            if found is None or found.status == ACTIVE:
                why = RESOLVED_GONE if found is None else RESOLVED_ACTIVE
                resolved += await _resolve(session, alert, why, now=now, channel=channel)
            elif found.status != alert.status:
                changed += await _change(session, alert, found, now=now, channel=channel)
    if opened or changed or resolved:
        log.info(
            "webhook destinations checked",
            extra={"opened": opened, "changed": changed, "resolved": resolved},
        )
    return WatchReport(tuple(listed), opened, changed, resolved)


async def _open(
    session: AsyncSession, destination: WebhookDestination, *, now: datetime, channel: str
) -> int:
    since = destination.status_updated_at or now
    alert_id = await webhook_alerts.open_alert(
        session,
        api_version=destination.api_version,
        destination_id=destination.id,
        url=destination.url,
        status=destination.status,
        since=since,
        now=now,
    )
    if alert_id is None:
        return 0  # another replica's check opened it first
    alert = await webhook_alerts.get_alert(session, alert_id=alert_id)
    assert alert is not None
    await outbox.enqueue(
        session,
        channel=channel,
        kind=OutboxKind.NOTICE,
        now=now,
        payload=notice_payload(alert, since_reported=destination.status_updated_at is not None),
        dedupe_key=f"{notice_key(alert_id)}:post",
    )
    log.warning(
        "a Nylas webhook destination does not deliver account events",
        extra={"destination": destination.id, "status": destination.status, "alert": alert_id},
    )
    return 1


async def _change(
    session: AsyncSession,
    alert: WebhookAlert,
    destination: WebhookDestination,
    *,
    now: datetime,
    channel: str,
) -> int:
    """Follow a move between two bad statuses (failing to failed) on the same message."""
    assert alert.id is not None
    since = destination.status_updated_at or now
    moved = await webhook_alerts.change_status(
        session,
        alert_id=alert.id,
        old=alert.status,
        status=destination.status,
        url=destination.url,
        since=since,
        now=now,
    )
    if not moved:
        return 0
    await session.refresh(alert)
    await outbox.enqueue(
        session,
        channel=channel,
        kind=OutboxKind.NOTICE_UPDATE,
        now=now,
        payload=notice_payload(alert, since_reported=destination.status_updated_at is not None),
    )
    return 1


async def _resolve(
    session: AsyncSession, alert: WebhookAlert, why: str, *, now: datetime, channel: str
) -> int:
    assert alert.id is not None
    if not await webhook_alerts.resolve(session, alert_id=alert.id, resolution=why, now=now):
        return 0
    await session.refresh(alert)
    key = notice_key(alert.id)
    # The notice keeps how "since" was known; only its resolution is new.
    await outbox.enqueue(
        session,
        channel=channel,
        kind=OutboxKind.NOTICE_UPDATE,
        now=now,
        payload=notice_payload(alert, since_reported=None),
        dedupe_key=f"{key}:resolved",
    )
    if why == RESOLVED_ACTIVE:
        line = f"Resolved: webhook destination {alert.destination_id} is active again."
    else:
        line = (
            f"Resolved: webhook destination {alert.destination_id} no longer exists or no "
            "longer delivers account events."
        )
    await outbox.enqueue(
        session,
        channel=channel,
        kind=OutboxKind.NOTICE_THREAD,
        now=now,
        payload={"key": key, "text": line},
        dedupe_key=f"{key}:resolved:thread",
    )
    return 1


def notice_payload(alert: WebhookAlert, *, since_reported: bool | None) -> dict[str, Any]:
    """The facts of an alert's notice, as plain data.

    ``since_reported``: whether "since" is Nylas' status_updated_at (True) or when reauthbot
    first saw the status (False); None leaves it out, and the renderer says neither.
    """
    assert alert.id is not None
    return {
        "about": ABOUT,
        "key": notice_key(alert.id),
        "api_version": alert.api_version,
        "destination_id": alert.destination_id,
        "url": alert.url,
        "status": alert.status,
        "since": alert.since.isoformat(),
        "since_reported": since_reported,
        "resolved_at": None if alert.resolved_at is None else alert.resolved_at.isoformat(),
        "resolution": alert.resolution,
    }
