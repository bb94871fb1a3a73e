"""Rows the tests start from, written the way the ingest worker writes them."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import cases, outbox
from storage.models import Account, OutboxKind
from workflows.nylas import samples
from workflows.nylas.webhooks import sign


async def open_case_with_alert(
    sessions: async_sessionmaker[AsyncSession],
    now: datetime,
    *,
    channel: str,
    account_id: str = "acc-1",
    api_version: str = "v2",
    email: str = "ana@example.com",
    provider: str = "gmail",
    state: str = "invalid",
) -> int:
    """Store an account with an open re-auth case and its alert queued; return the case id."""
    async with sessions() as session, session.begin():
        session.add(
            Account(
                id=account_id,
                api_version=api_version,
                email=email,
                provider=provider,
                sync_state=state,
                first_seen_at=now,
                updated_at=now,
            )
        )
        await session.flush()
        case = await cases.open_case(
            session, account_id=account_id, kind="reauth", state=state, now=now
        )
        assert case is not None and case.id is not None
        await outbox.enqueue(
            session,
            channel=channel,
            kind=OutboxKind.POST,
            now=now,
            case_id=case.id,
            dedupe_key=f"case:{case.id}:post",
        )
        return case.id


def signed_expiry(
    n: int, secret: str, *, domain: str = "example.com"
) -> tuple[bytes, dict[str, str]]:
    """The n-th signed v3 ``grant.expired`` delivery, each of a new grant: its body and headers."""
    raw = json.dumps(
        samples.v3_notification(
            "grant.expired",
            grant_id=f"g-{n}",
            email=f"user{n}@{domain}",
            notification_id=f"n-{n}",
            at=datetime.now(UTC),
        )
    ).encode()
    return raw, {"X-Nylas-Signature": sign(secret, raw)}
