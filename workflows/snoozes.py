"""How long a case can be snoozed: the one table that the snooze action, the Slack menu and
the ``/reauth snooze`` command all read."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True, slots=True)
class SnoozeChoice:
    code: str  # as typed after /reauth snooze and sent by the Slack menu: "4h"
    label: str  # as the Slack menu shows it: "4 hours"
    length: timedelta


SNOOZE_CHOICES = {
    choice.code: choice
    for choice in (
        SnoozeChoice("1h", "1 hour", timedelta(hours=1)),
        SnoozeChoice("4h", "4 hours", timedelta(hours=4)),
        SnoozeChoice("24h", "24 hours", timedelta(hours=24)),
    )
}


def snooze_codes_in_words() -> str:
    """The codes as a sentence reads them: "1h, 4h or 24h"."""
    *first, last = SNOOZE_CHOICES
    return f"{', '.join(first)} or {last}" if first else last
