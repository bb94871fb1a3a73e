"""Waiting for something to become true, with a deadline instead of a fixed sleep."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable


async def eventually(predicate: Callable[[], Awaitable[bool]], *, within: float = 5.0) -> None:
    """Poll ``predicate`` until it holds; fail with TimeoutError after ``within`` seconds."""
    async with asyncio.timeout(within):
        while True:
            if await predicate():
                return
            await asyncio.sleep(0.02)
