"""User group membership, read with usergroups.users.list and cached for a few minutes."""

from __future__ import annotations

import time

from slack_sdk.web.async_client import AsyncWebClient

TTL_SECONDS = 300.0


class GroupDirectory:
    def __init__(self, client: AsyncWebClient, *, ttl: float = TTL_SECONDS) -> None:
        self._client = client
        self._ttl = ttl
        self._cache: dict[str, tuple[float, frozenset[str]]] = {}

    async def members(self, group_id: str) -> frozenset[str]:
        cached = self._cache.get(group_id)
        if cached is not None and time.monotonic() - cached[0] < self._ttl:
            return cached[1]
        response = await self._client.usergroups_users_list(usergroup=group_id)
        listed: list[str] = response.get("users") or []
        users = frozenset(listed)
        self._cache[group_id] = (time.monotonic(), users)
        return users
