"""Cases opened together and diagnosed in one go get the findings they would one by one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import cases
from storage.models import Account, Case, CaseEvent, CaseKind
from workflows.diagnosis import refresh, refresh_opened

Sessions = async_sessionmaker[AsyncSession]
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
M, D = timedelta(minutes=1), timedelta(days=1)
# Accounts that open a case now, in this order: (id, email, provider).
OPENING = [
    ("n1", "ann@acme-corp.com", "imap"),
    ("old", "bo@acme-corp.com", "microsoft"),  # two cases in the last 30 days
    ("n2", "cy@acme-corp.com", "google"),
    ("revoked", "di@acme-corp.com", "imap"),  # we revoked its tokens an hour ago
    ("n3", "ed@gmail.com", "gmail"),
    ("n4", None, "imap"),
    ("n5", "fa@acme-corp.com", "imap"),
]


async def make_history(sessions: Sessions) -> None:
    """acme-corp.com: two accounts that went bad minutes ago, and older cases."""
    emails = {a: e for a, e, _ in OPENING} | {"p1": "p1@acme-corp.com", "p2": "p2@acme-corp.com"}
    providers = {a: p for a, _, p in OPENING}
    async with sessions() as session, session.begin():
        await session.exec(
            sa.insert(Account),
            params=[
                {
                    "id": account_id,
                    "api_version": "v3",
                    "email": email,
                    "email_domain": email.rsplit("@", 1)[1] if email else None,
                    "provider": providers.get(account_id, "imap"),
                    "sync_state": "invalid",
                    "state_at": T0,
                    "state_since": T0,
                    "first_seen_at": T0 - 60 * D,
                    "updated_at": T0,
                    "details": {},
                }
                for account_id, email in emails.items()
            ],
        )
        history: list[tuple[str, str, datetime, str]] = [
            ("p1", CaseKind.REAUTH, T0 - 10 * M, "open"),
            ("p2", CaseKind.STOPPED, T0 - 20 * M, "open"),
            ("old", CaseKind.REAUTH, T0 - 20 * D, "resolved"),
            ("old", CaseKind.REAUTH, T0 - 5 * D, "resolved"),
        ]
        for account_id, kind, at, status in history:
            session.add(
                Case(
                    account_id=account_id,
                    kind=kind,
                    status=status,
                    opened_at=at,
                    updated_at=at,
                    broken_since=at,
                )
            )
        session.add(
            CaseEvent(
                account_id="revoked",
                actor="slack:U0ALICE",
                action="revoked",
                at=T0 - 60 * M,
                details={"method": "delete-grant"},
            )
        )


async def open_all(session: AsyncSession, *, one_by_one: bool) -> dict[str, Any]:
    """Open a case for each of OPENING; return each account's findings."""
    opened: list[tuple[Case, Account]] = []
    for account_id, _, _ in OPENING:
        account = await session.get(Account, account_id)
        assert account is not None
        case = await cases.open_case(
            session, account_id=account_id, kind=CaseKind.REAUTH, state="invalid", now=T0
        )
        assert case is not None
        if one_by_one:
            await refresh(session, case=case, account=account, now=T0)
        opened.append((case, account))
    if not one_by_one:
        await refresh_opened(session, opened, now=T0)
    await session.flush()
    stmt = select(Case).where(col(Case.opened_at) == T0)
    return {case.account_id: case.diagnosis for case in (await session.exec(stmt)).all()}


async def test_cases_diagnosed_together_get_the_findings_of_one_by_one(
    sessions: Sessions,
) -> None:
    await make_history(sessions)
    async with sessions() as session:  # one by one, then undone
        one_by_one = await open_all(session, one_by_one=True)
        await session.rollback()
    async with sessions() as session, session.begin():
        together = await open_all(session, one_by_one=False)

    assert together == one_by_one
    assert set(together) == {account_id for account_id, _, _ in OPENING}
    rules = {a: [f["rule"] for f in findings] for a, findings in together.items()}
    # Each case counts the domain's cases opened before it, not those after it.
    assert "2 other accounts at acme-corp.com" in str(together["n1"])
    assert "3 other accounts at acme-corp.com" in str(together["old"])
    assert "6 other accounts at acme-corp.com" in str(together["n5"])
    assert rules["old"][-1] == "recurring"
    assert rules["revoked"][0] == "revoked_by_us"
    assert "same_domain" not in rules["n3"] and "same_domain" not in rules["n4"]
