"""Sample Nylas webhook deliveries in the real formats, for ``reauthbot trigger`` and tests."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from storage.models import ApiVersion
from workflows.nylas.webhooks import REAUTH_CODE
from workflows.states import V2_TRIGGER_STATES, V3_TRIGGERS

TRIGGERS = (*V2_TRIGGER_STATES, *V3_TRIGGERS)
_V3_CODES = {"grant.created": 25012, "grant.deleted": 25013, "grant.expired": 25009}


def api_version_of(trigger: str) -> ApiVersion:
    if trigger in V2_TRIGGER_STATES:
        return ApiVersion.V2
    if trigger in V3_TRIGGERS:
        return ApiVersion.V3
    raise ValueError(f"unknown trigger {trigger!r}; choose one of: {', '.join(TRIGGERS)}")


def v2_delivery(trigger: str, *, account_id: str, at: datetime) -> dict[str, Any]:
    """A v2 delivery with one account delta; v2 account deltas carry no email."""
    return {
        "deltas": [
            {
                "date": int(at.timestamp()),
                "object": "account",
                "type": trigger,
                "object_data": {
                    "namespace_id": account_id,
                    "account_id": account_id,
                    "object": "account",
                    "attributes": None,
                    "id": account_id,
                    "metadata": None,
                },
            }
        ]
    }


def v3_notification(
    trigger: str,
    *,
    grant_id: str,
    email: str | None,
    at: datetime,
    provider: str | None = "google",
    notification_id: str | None = None,
    reauthenticated: bool = False,
    credential_id: str | None = None,
) -> dict[str, Any]:
    """A v3 grant notification in Nylas' CloudEvents-like envelope.

    An ``email`` or ``provider`` of None is left out, so the receiver keeps what it knows.
    """
    obj: dict[str, Any] = {
        "grant_id": grant_id,
        "integration_id": "00000000-0000-0000-0000-000000000001",
    }
    if provider is not None:
        obj["provider"] = provider
    if email is not None:
        obj["email"] = email
    if credential_id is not None:
        obj["credential_id"] = credential_id
    if trigger == "grant.updated":
        obj["code"] = REAUTH_CODE if reauthenticated else 25014
        obj["reauthentication_flag"] = reauthenticated
    else:
        obj["code"] = _V3_CODES[trigger]
    if trigger == "grant.expired":
        obj["grant_updated_at"] = int(at.timestamp()) - 3600
    if trigger == "grant.created":
        obj |= {"login_id": "login-1", "scope": ["email"]}
        if email is not None:
            obj["name"] = email.split("@")[0]
    return {
        "specversion": "1.0",
        "type": trigger,
        "source": "/nylas/system",
        "id": notification_id or str(uuid.uuid4()),
        "time": int(at.timestamp()),
        "webhook_delivery_attempt": 1,
        "data": {"application_id": "00000000-0000-0000-0000-00000000a991", "object": obj},
    }
