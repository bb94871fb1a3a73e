"""A background worker loop: run a step until there is nothing to do, then wait to be woken."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from workflows.episodes import DATABASE, Episodes


class Worker:
    """Runs ``step`` (which returns how much it did) whenever woken or every ``idle`` seconds."""

    def __init__(
        self,
        name: str,
        step: Callable[[], Awaitable[int]],
        *,
        idle: float = 1.0,
        episodes: Episodes | None = None,
    ) -> None:
        self.name = name
        self._step = step
        self._idle = idle
        self._episodes = episodes or Episodes()
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Loop until ``stop`` is set; the step in progress is finished before returning."""
        while not stop.is_set():
            began = self._episodes.now()
            try:
                done = await self._step()
            except Exception as exc:
                # The database is down, or a bug: keep the loop alive and try again later,
                # logging the outage once rather than every pass.
                self._episodes.failed(exc, loop=self.name, retry_in=self._idle, began=began)
                done = 0
            else:
                # Every step reads the database: a pass that ran is proof it answers.
                self._episodes.succeeded(DATABASE, self.name, began=began)
            if done:
                continue
            self._wake.clear()
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
            await asyncio.wait(waiters, timeout=self._idle, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
