"""What the Slack edge remembers across replicas: requests already served, modals opened.

A signed request stays valid for 5 minutes, so a copy sent again within them passes the
signature check; its signature (which covers the timestamp and the body) is kept until the
check would refuse it anyway, and the first replica to insert it is the one that serves it.
A modal's submission names the view the app opened; views are kept for a while so that a
submission of a view the app never opened can be told apart.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, delete
from sqlmodel.ext.asyncio.session import AsyncSession

from storage._sql import dialect_name
from storage.models import SlackRequest, SlackView


async def first_sight(
    session: AsyncSession, *, signature: str, timestamp: int, oldest: int
) -> bool:
    """Record a request's signature; False if it was recorded before (a replay).

    Signatures of requests stamped before ``oldest`` (epoch seconds) are forgotten.
    """
    await session.exec(delete(SlackRequest).where(col(SlackRequest.timestamp) < oldest))
    dialect = postgresql if dialect_name(session) == "postgresql" else sqlite
    table = SlackRequest.__table__  # type: ignore[attr-defined]
    stmt = (
        dialect.insert(table)
        .values(signature=signature, timestamp=timestamp)
        .on_conflict_do_nothing(index_elements=[table.c.signature])
        .returning(table.c.signature)
    )
    return (await session.exec(stmt)).first() is not None


async def remember_view(
    session: AsyncSession, *, view_id: str, expires_at: datetime, now: datetime
) -> None:
    """Record a modal the app opened; forget those expired by ``now``."""
    await session.exec(delete(SlackView).where(col(SlackView.expires_at) <= now))
    existing = await session.get(SlackView, view_id)
    if existing is None:
        session.add(SlackView(view_id=view_id, expires_at=expires_at))
    else:
        existing.expires_at = expires_at
        session.add(existing)


async def view_opened(session: AsyncSession, *, view_id: str, now: datetime) -> bool:
    """Whether the app opened the modal ``view_id`` and it has not expired."""
    view = await session.get(SlackView, view_id)
    return view is not None and view.expires_at > now


async def forget_view(session: AsyncSession, *, view_id: str) -> None:
    """Drop a modal once its submission was accepted: the same view is not submitted twice."""
    await session.exec(delete(SlackView).where(col(SlackView.view_id) == view_id))
