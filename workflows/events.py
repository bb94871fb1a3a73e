"""The normalized account event every source (webhook v2/v3, polling) is turned into."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class AccountEvent:
    account_id: str
    api_version: str  # ApiVersion
    event_type: str  # the trigger ("account.invalid", "grant.expired") or "poll"
    state: str | None  # the account state it announces; None when it announces none
    occurred_at: datetime  # when it happened, per its source; orders events of one account
    source: str  # "webhook" or "poll"
    email: str | None = None
    provider: str | None = None
    billing_state: str | None = None
    credential_id: str | None = None  # v3: the connector credential of the grant, if named
    details: dict[str, Any] = field(default_factory=dict)
