"""Queries over webhook alerts: one per episode of a destination not delivering."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage._sql import insert_ignoring_conflict
from storage.models import OPEN_WEBHOOK_ALERT_SQL, WebhookAlert


async def open_alerts(session: AsyncSession, *, api_version: str) -> Sequence[WebhookAlert]:
    """Return the unresolved alerts of one API version's destinations, oldest first."""
    stmt = (
        select(WebhookAlert)
        .where(
            col(WebhookAlert.api_version) == api_version,
            col(WebhookAlert.resolved_at).is_(None),
        )
        .order_by(col(WebhookAlert.id))
    )
    return (await session.exec(stmt)).all()


async def get_alert(session: AsyncSession, *, alert_id: int) -> WebhookAlert | None:
    """Return one alert by id."""
    return await session.get(WebhookAlert, alert_id)


async def open_alert(
    session: AsyncSession,
    *,
    api_version: str,
    destination_id: str,
    url: str,
    status: str,
    since: datetime,
    now: datetime,
) -> int | None:
    """Record a new episode; None if the destination has an open one already."""
    values = {
        "api_version": api_version,
        "destination_id": destination_id,
        "url": url,
        "status": status,
        "since": since,
        "opened_at": now,
        "updated_at": now,
    }
    return await insert_ignoring_conflict(
        session,
        WebhookAlert,
        values,
        unique="api_version, destination_id",
        where=OPEN_WEBHOOK_ALERT_SQL,
    )


async def change_status(
    session: AsyncSession,
    *,
    alert_id: int,
    old: str,
    status: str,
    url: str,
    since: datetime,
    now: datetime,
) -> bool:
    """Move an open alert from ``old`` to ``status``; False if someone else already did."""
    result = await session.exec(
        update(WebhookAlert)
        .where(
            col(WebhookAlert.id) == alert_id,
            col(WebhookAlert.status) == old,
            col(WebhookAlert.resolved_at).is_(None),
        )
        .values(status=status, url=url, since=since, updated_at=now)
    )
    return result.rowcount == 1


async def resolve(session: AsyncSession, *, alert_id: int, resolution: str, now: datetime) -> bool:
    """Close an open alert; False if it was closed already."""
    result = await session.exec(
        update(WebhookAlert)
        .where(col(WebhookAlert.id) == alert_id, col(WebhookAlert.resolved_at).is_(None))
        .values(resolved_at=now, resolution=resolution, updated_at=now)
    )
    return result.rowcount == 1
