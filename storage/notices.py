"""Where notices with a key were posted: their later updates and thread lines go there."""

from __future__ import annotations

from datetime import datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import PostedNotice


async def record_posted(
    session: AsyncSession, *, key: str, channel: str, ts: str, now: datetime
) -> None:
    """Remember where the notice ``key`` was posted (the latest post wins)."""
    found = await session.get(PostedNotice, key)
    if found is None:
        session.add(PostedNotice(key=key, channel=channel, ts=ts, posted_at=now))
    else:
        found.channel, found.ts, found.posted_at = channel, ts, now
        session.add(found)


async def find_posted(session: AsyncSession, *, key: str) -> PostedNotice | None:
    """Return where the notice ``key`` was posted, or None if it is not posted yet."""
    return await session.get(PostedNotice, key)
