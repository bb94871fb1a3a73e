"""Duplicate accounts: a second account id for one mailbox is flagged and can be deleted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import cases
from storage.models import Case, CaseEvent, CaseKind, CaseStatus, OutboxMessage
from tests.conftest import Nylas
from workflows import actions, duplicates
from workflows.events import AccountEvent
from workflows.lifecycle import apply_event
from workflows.reconcile import reconcile

Sessions = async_sessionmaker[AsyncSession]
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def route(email: str | None) -> str:
    return "C0ALERTS"


async def seen(
    sessions: Sessions,
    account_id: str,
    state: str,
    at: datetime,
    *,
    version: str = "v2",
    email: str | None = "dana@acme.com",
    **kw: Any,
) -> None:
    event = AccountEvent(
        account_id=account_id,
        api_version=version,
        event_type="poll",
        state=state,
        occurred_at=at,
        source="poll",
        email=email,
        provider=kw.pop("provider", "imap"),
        **kw,
    )
    async with sessions() as session, session.begin():
        await apply_event(session, event, now=at, route=route)


async def open_cases(sessions: Sessions) -> list[Case]:
    async with sessions() as session:
        stmt = select(Case).where(col(Case.status) != CaseStatus.RESOLVED).order_by(col(Case.id))
        return list((await session.exec(stmt)).all())


async def test_a_new_grant_for_a_known_email_flags_the_old_one(sessions: Sessions) -> None:
    await seen(sessions, "g-old", "valid", T0, version="v3", provider="google")
    await seen(sessions, "g-new", "valid", T0 + timedelta(days=3), version="v3", provider="google")

    [case] = await open_cases(sessions)
    assert (case.account_id, case.kind, case.related_account_id) == (
        "g-old",
        CaseKind.DUPLICATE,
        "g-new",
    )
    async with sessions() as session:
        posts = (
            await session.exec(select(OutboxMessage).where(OutboxMessage.case_id == case.id))
        ).all()
        audit = await cases.case_events(session, case_id=case.id or 0)
    assert [m.kind for m in posts] == ["post"]
    assert audit[0].details["new"] == "g-new" and audit[0].details["old"] == "g-old"


async def test_a_grant_first_seen_deleted_is_nobody_s_newer_copy(sessions: Sessions) -> None:
    await seen(sessions, "g-live", "valid", T0, version="v3", provider="google")
    # The first we hear of g-gone is its deletion: the live grant is not its old copy.
    await seen(sessions, "g-gone", "deleted", T0 + timedelta(hours=1), version="v3")

    assert await open_cases(sessions) == []


async def test_the_broken_old_account_s_case_becomes_the_duplicate_case(
    sessions: Sessions,
) -> None:
    # The server settings changed: the old id went invalid, then a new id appeared.
    await seen(sessions, "a-old", "running", T0)
    await seen(sessions, "a-old", "invalid-credentials", T0 + timedelta(hours=1))
    [reauth] = await open_cases(sessions)
    assert reauth.kind == CaseKind.REAUTH

    await seen(sessions, "a-new", "running", T0 + timedelta(hours=2), email="Dana@Acme.com")

    [case] = await open_cases(sessions)
    assert case.id == reauth.id
    assert (case.kind, case.related_account_id) == (CaseKind.DUPLICATE, "a-new")
    async with sessions() as session:
        lines = [
            m.payload.get("text", "")
            for m in (
                await session.exec(select(OutboxMessage).where(OutboxMessage.kind == "thread"))
            )
        ]
    assert any("a-new" in line and "billed" in line for line in lines)


async def test_a_duplicate_stays_open_until_the_old_account_is_deleted(sessions: Sessions) -> None:
    await seen(sessions, "a-old", "running", T0)
    await seen(sessions, "a-new", "running", T0 + timedelta(hours=1))
    # The old account recovering, or breaking, does not end the double billing.
    await seen(sessions, "a-old", "invalid", T0 + timedelta(hours=2))
    await seen(sessions, "a-old", "running", T0 + timedelta(hours=3))
    [case] = await open_cases(sessions)
    assert (case.kind, case.state) == (CaseKind.DUPLICATE, "running")

    await seen(sessions, "a-old", "deleted", T0 + timedelta(hours=4))
    assert await open_cases(sessions) == []


async def test_no_duplicate_without_a_second_live_account(sessions: Sessions) -> None:
    await seen(sessions, "a-1", "running", T0)
    await seen(sessions, "a-2", "running", T0, email="erin@acme.com")  # another mailbox
    await seen(sessions, "a-3", "deleted", T0, email="fay@acme.com")
    await seen(sessions, "a-4", "running", T0 + timedelta(hours=1), email="fay@acme.com")
    await seen(sessions, "g-1", "valid", T0, version="v3", email="gil@acme.com")
    await seen(sessions, "a-5", "running", T0, email="gil@acme.com")  # v2 and v3: two apps
    await seen(sessions, "a-1", "running", T0 + timedelta(hours=2))  # the same id again
    assert await open_cases(sessions) == []


async def test_reconciliation_finds_a_duplicate_among_new_accounts(
    sessions: Sessions, nylas: Nylas
) -> None:
    await seen(sessions, "a-old", "running", T0, email="hal@acme.com")
    nylas.fake.add_v2_account(id="a-old", email="hal@acme.com")
    nylas.fake.add_v2_account(id="a-new", email="hal@acme.com")
    nylas.fake.add_v2_account(id="a-other", email="ivy@acme.com")

    await reconcile(sessions, nylas.v2, clock=lambda: T0 + timedelta(days=1), route=route)

    [case] = await open_cases(sessions)
    assert (case.account_id, case.kind, case.related_account_id) == (
        "a-old",
        CaseKind.DUPLICATE,
        "a-new",
    )


async def test_delete_old_account_deletes_it_in_nylas_and_closes_the_case(
    sessions: Sessions, nylas: Nylas
) -> None:
    nylas.fake.add_v2_account(id="a-old", email="dana@acme.com")
    nylas.fake.add_v2_account(id="a-new", email="dana@acme.com")
    await seen(sessions, "a-old", "running", T0)
    await seen(sessions, "a-new", "running", T0 + timedelta(hours=1))
    [case] = await open_cases(sessions)
    now = T0 + timedelta(hours=2)

    result = await actions.delete_duplicate(
        sessions, case_id=case.id or 0, actor="slack:U0SUE", now=now, nylas=nylas.v2
    )

    assert result.outcome == "done", result.message
    assert "a-old" in result.message and "a-new" in result.message
    deletes = nylas.fake.calls_to("DELETE", r"/a/[^/]+/accounts/.*")
    assert [c.path.rsplit("/", 1)[1] for c in deletes] == ["a-old"]
    async with sessions() as session:
        closed = await cases.get_case(session, case_id=case.id or 0)
        account = await cases.get_account(session, account_id="a-old")
        kept = await cases.get_account(session, account_id="a-new")
        audit = [e.action for e in await cases.case_events(session, case_id=case.id or 0)]
    assert closed is not None and closed.status == CaseStatus.RESOLVED
    assert account is not None and account.sync_state == "deleted"
    assert kept is not None and kept.sync_state == "running"
    assert "deleted_duplicate" in audit

    # A second click finds the case closed and calls Nylas no more.
    again = await actions.delete_duplicate(
        sessions, case_id=case.id or 0, actor="slack:U0SUE", now=now, nylas=nylas.v2
    )
    assert again.outcome == "stale"
    assert len(nylas.fake.calls_to("DELETE", r"/a/[^/]+/accounts/.*")) == 1


async def test_delete_old_grant_uses_the_v3_api(sessions: Sessions, nylas: Nylas) -> None:
    nylas.fake.add_grant(id="g-old", email="dana@acme.com")
    await seen(sessions, "g-old", "valid", T0, version="v3", provider="google")
    await seen(sessions, "g-new", "valid", T0 + timedelta(hours=1), version="v3", provider="google")
    [case] = await open_cases(sessions)

    result = await actions.delete_duplicate(
        sessions,
        case_id=case.id or 0,
        actor="slack:U0SUE",
        now=T0 + timedelta(hours=2),
        nylas=nylas.v3,
    )

    assert result.outcome == "done", result.message
    assert [c.path for c in nylas.fake.calls_to("DELETE", r"/v3/grants/.*")] == ["/v3/grants/g-old"]
    assert await open_cases(sessions) == []


async def test_delete_is_refused_on_a_case_that_is_not_a_duplicate(
    sessions: Sessions, nylas: Nylas
) -> None:
    await seen(sessions, "a-1", "invalid", T0)
    [case] = await open_cases(sessions)

    result = await actions.delete_duplicate(
        sessions, case_id=case.id or 0, actor="slack:U0SUE", now=T0, nylas=nylas.v2
    )

    assert result.outcome == "refused"
    assert nylas.fake.calls_to("DELETE", r".*") == []
    [still] = await open_cases(sessions)
    assert still.busy_with is None


async def test_a_failed_delete_is_told_and_leaves_the_case_open(
    sessions: Sessions, nylas: Nylas
) -> None:
    nylas.fake.add_v2_account(id="a-old", email="dana@acme.com")
    await seen(sessions, "a-old", "running", T0)
    await seen(sessions, "a-new", "running", T0 + timedelta(hours=1))
    [case] = await open_cases(sessions)
    nylas.fake.fail("DELETE", r"/a/[^/]+/accounts/a-old", status=500, times=None)

    result = await actions.delete_duplicate(
        sessions,
        case_id=case.id or 0,
        actor="slack:U0SUE",
        now=T0 + timedelta(hours=2),
        nylas=nylas.v2,
    )

    assert "failed" in result.message
    [still] = await open_cases(sessions)
    assert (still.kind, still.busy_with) == (CaseKind.DUPLICATE, None)
    async with sessions() as session:
        actions_seen = (
            await session.exec(select(CaseEvent.action).where(CaseEvent.case_id == case.id))
        ).all()
    assert "delete_failed" in actions_seen


async def test_known_emails_are_those_a_live_account_has(sessions: Sessions) -> None:
    await seen(sessions, "a-1", "running", T0, email="Hal@acme.com")
    await seen(sessions, "a-2", "running", T0, email="ivy@acme.com")
    await seen(sessions, "a-3", "running", T0, email="jo@acme.com")
    await seen(sessions, "a-3", "deleted", T0 + timedelta(minutes=1), email="jo@acme.com")
    await seen(sessions, "g-1", "valid", T0, version="v3", email="kim@acme.com")
    async with sessions() as session:
        known = await duplicates.known_emails(
            session,
            emails=[" Hal@acme.com", "ivy@acme.com", "jo@acme.com", "kim@acme.com", "new@x.org"],
            api_version="v2",
        )
    # Deleted accounts and those of the other API version have no email that counts.
    assert known == {"hal@acme.com", "ivy@acme.com"}
