"""Who may do what to a case, from the ``[permissions]`` section of the policy file."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from workflows.policy import Permissions

# Members of a Slack user group (S…), looked up by the caller (and cached there).
GroupMembers = Callable[[str], Awaitable[Iterable[str]]]


async def is_allowed(
    permissions: Permissions, action: str, user_id: str, members: GroupMembers
) -> bool:
    """An unlisted action is open to everyone except ``revoke``, which must list someone."""
    listed: list[str] | None = getattr(permissions, action)
    if listed is None:
        return action != "revoke"
    for entry in listed:
        # A group's id names its members, never itself: a forged user id "S…" must not pass.
        if entry.startswith("S"):
            if user_id in set(await members(entry)):
                return True
        elif entry == user_id:
            return True
    return False
