"""Reconciliation against the fake Nylas API over HTTP, on each database engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import cases
from storage.models import Account, Case, CaseStatus
from tests.conftest import NYLAS_API_KEY, NYLAS_CLIENT_ID, NYLAS_CLIENT_SECRET, FrozenClock
from tests.fakes.nylas import FakeNylas
from workflows.events import AccountEvent
from workflows.lifecycle import apply_event
from workflows.nylas import NylasClient, NylasUnavailable
from workflows.reconcile import ReconcileReport, reconcile

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


def client_for(fake: FakeNylas, http: httpx.AsyncClient, version: str = "v3") -> NylasClient:
    async def no_sleep(_: float) -> None:
        return None

    return NylasClient(
        http,
        api_version=version,
        base_url=fake.url,
        api_key=NYLAS_API_KEY,
        client_id=NYLAS_CLIENT_ID,
        client_secret=NYLAS_CLIENT_SECRET,
        page_size=7,
        max_retries=1,
        sleep=no_sleep,
    )


def route(email: str | None) -> str:
    return "C0ALERTS"


async def run(
    sessions: Sessions, nylas: NylasClient, clock: FrozenClock, **kw: object
) -> ReconcileReport:
    return await reconcile(sessions, nylas, clock=clock, route=route, page_size=10, **kw)  # type: ignore[arg-type]


async def open_cases(sessions: Sessions) -> dict[str, Case]:
    async with sessions() as session:
        return {case.account_id: case for case, _ in await cases.list_open_cases(session)}


async def account_count(sessions: Sessions) -> int:
    async with sessions() as session:
        return (await session.exec(select(func.count()).select_from(Account))).one()


@pytest.mark.parametrize("version", ["v3", "v2"])
async def test_first_pass_over_several_pages(
    sessions: Sessions,
    nylas_fake: FakeNylas,
    http: httpx.AsyncClient,
    clock: FrozenClock,
    version: str,
) -> None:
    if version == "v3":
        nylas_fake.add_many_grants(45, grant_statuses=["valid"] * 8 + ["invalid"])
    else:
        nylas_fake.add_many_v2(
            45, sync_states=["running", "partial", "downloading", "stopped", "invalid-credentials"]
        )
    seen: list[int] = []
    report = await run(
        sessions,
        client_for(nylas_fake, http, version),
        clock,
        progress=lambda r: seen.append(r.seen),
    )
    assert report.complete and report.seen == 45 and report.new == 45
    assert seen == [10, 20, 30, 40, 45]
    assert len(nylas_fake.calls) >= 7  # page_size 7: several pages
    assert await account_count(sessions) == 45
    opened = await open_cases(sessions)
    if version == "v3":
        assert sorted(opened) == sorted(f"grant-{i}" for i in (8, 17, 26, 35, 44))
        assert {c.kind for c in opened.values()} == {"reauth"}
    else:
        assert len(opened) == 18  # every stopped and invalid-credentials account
        assert {c.kind for c in opened.values()} == {"stopped", "reauth"}
    assert report.opened == len(opened)


async def test_a_missed_webhook_is_caught_and_recovery_resolves(
    sessions: Sessions, nylas_fake: FakeNylas, http: httpx.AsyncClient, clock: FrozenClock
) -> None:
    nylas_fake.add_grant(id="g-1", email="ana@example.com")
    nylas_fake.add_grant(id="g-2", email="bo@example.com")
    nylas = client_for(nylas_fake, http)
    await run(sessions, nylas, clock)
    assert await open_cases(sessions) == {}

    nylas_fake.set_grant_status("g-1", "invalid")  # grant.expired was never delivered
    clock.advance(minutes=15)
    report = await run(sessions, nylas, clock)
    assert (report.changed, report.opened) == (1, 1)
    case = (await open_cases(sessions))["g-1"]
    assert (case.kind, case.state) == ("reauth", "invalid")

    clock.advance(minutes=15)
    unchanged = await run(sessions, nylas, clock)
    assert (unchanged.changed, unchanged.opened, unchanged.resolved) == (0, 0, 0)

    nylas_fake.set_grant_status("g-1", "valid")
    clock.advance(minutes=15)
    assert (await run(sessions, nylas, clock)).resolved == 1
    async with sessions() as session:
        resolved = await cases.get_case(session, case_id=case.id or 0)
    assert resolved is not None and resolved.status == CaseStatus.RESOLVED
    assert resolved.resolved_by == "poll"


async def test_a_newer_webhook_state_is_not_overwritten_by_an_older_poll(
    sessions: Sessions, nylas_fake: FakeNylas, http: httpx.AsyncClient, clock: FrozenClock
) -> None:
    nylas_fake.add_grant(id="g-1", email="ana@example.com", grant_status="invalid")
    # A webhook already told us the grant was re-authenticated, after the poll's time.
    async with sessions() as session, session.begin():
        event = AccountEvent(
            account_id="g-1",
            api_version="v3",
            event_type="grant.updated",
            state="valid",
            occurred_at=clock() + timedelta(minutes=1),
            source="webhook",
        )
        await apply_event(session, event, now=clock(), route=route)
    report = await run(sessions, client_for(nylas_fake, http), clock)
    assert report.opened == 0
    assert await open_cases(sessions) == {}


async def test_accounts_gone_from_the_listing_are_resolved_as_deleted(
    sessions: Sessions, nylas_fake: FakeNylas, http: httpx.AsyncClient, clock: FrozenClock
) -> None:
    nylas_fake.add_many_grants(20, grant_statuses=["invalid"])
    nylas = client_for(nylas_fake, http)
    await run(sessions, nylas, clock)
    assert len(await open_cases(sessions)) == 20
    del nylas_fake.grants["grant-3"]
    nylas_fake._grant_order.remove("grant-3")
    clock.advance(minutes=15)
    report = await run(sessions, nylas, clock)
    assert (report.missing, report.resolved) == (1, 1)
    assert "grant-3" not in await open_cases(sessions)
    async with sessions() as session:
        account = await cases.get_account(session, account_id="grant-3")
    assert account is not None and account.sync_state == "deleted"


async def test_a_listing_missing_most_accounts_deletes_nothing(
    sessions: Sessions, nylas_fake: FakeNylas, http: httpx.AsyncClient, clock: FrozenClock
) -> None:
    nylas_fake.add_many_grants(40, grant_statuses=["invalid"])
    nylas = client_for(nylas_fake, http)
    await run(sessions, nylas, clock)
    for i in range(5, 40):
        del nylas_fake.grants[f"grant-{i}"]
        nylas_fake._grant_order.remove(f"grant-{i}")
    report = await run(sessions, nylas, clock)
    assert report.skipped_missing and report.missing == 0
    assert len(await open_cases(sessions)) == 40
    assert "listing looked incomplete" in report.summary()


async def test_nylas_down_mid_listing_changes_nothing_further(
    sessions: Sessions, nylas_fake: FakeNylas, http: httpx.AsyncClient, clock: FrozenClock
) -> None:
    nylas_fake.add_many_grants(30, grant_statuses=["invalid"])
    nylas = client_for(nylas_fake, http)
    await run(sessions, nylas, clock)
    nylas_fake.fail("GET", r"/v3/grants", status=503, times=None)
    with pytest.raises(NylasUnavailable):
        await run(sessions, nylas, clock)
    async with sessions() as session:
        resolved = (await session.exec(select(Case).where(col(Case.status) == "resolved"))).all()
    assert resolved == []
    assert len(await open_cases(sessions)) == 30


async def test_reconciliation_resolves_a_stopped_case_once_the_account_was_downgraded(
    sessions: Sessions, nylas_fake: FakeNylas, http: httpx.AsyncClient, clock: FrozenClock
) -> None:
    nylas_fake.add_v2_account(id="a-1", email="ana@example.com", sync_state="stopped")
    nylas_fake.add_v2_account(
        id="a-2", email="bo@example.com", sync_state="stopped", billing_state="cancelled"
    )
    nylas = client_for(nylas_fake, http, "v2")
    report = await run(sessions, nylas, clock)
    assert report.opened == 1 and set(await open_cases(sessions)) == {"a-1"}

    nylas_fake.v2_accounts["a-1"]["billing_state"] = "deleted"  # downgraded in the Dashboard
    clock.advance(minutes=15)
    assert (await run(sessions, nylas, clock)).resolved == 1
    assert await open_cases(sessions) == {}
    async with sessions() as session:
        (case,) = (await session.exec(select(Case))).all()
    assert case.resolution is not None and "Stopped on purpose" in case.resolution
    assert "billing state deleted" in case.resolution


@pytest.mark.parametrize("version", ["v3", "v2"])
async def test_unusable_rows_are_skipped_and_a_vanished_account_is_still_noticed(
    sessions: Sessions,
    nylas_fake: FakeNylas,
    http: httpx.AsyncClient,
    clock: FrozenClock,
    version: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    listed = nylas_fake.grants if version == "v3" else nylas_fake.v2_accounts
    order = nylas_fake._grant_order if version == "v3" else nylas_fake._v2_order
    add = nylas_fake.add_grant if version == "v3" else nylas_fake.add_v2_account
    broken = "invalid" if version == "v3" else "invalid-credentials"
    for i in range(12):
        add(id=f"acct-{i}", email=f"user{i}@example.com")
    add(id="gone", email="gone@example.com", **{_state(version): broken})
    nylas = client_for(nylas_fake, http, version)
    await run(sessions, nylas, clock)
    assert list(await open_cases(sessions)) == ["gone"]

    # The account vanishes; another known one now lists an email no column holds; new rows
    # carry a NUL, a lone surrogate, an id too long to store.
    del listed["gone"]
    order.remove("gone")
    listed["acct-3"]["email"] = "x" * 409
    add(id="nul", email="nul\x00@example.com", **{_state(version): broken})
    add(id="surrogate", email="s@example.com", provider="\udc80")
    add(id="i" * 300, email="long@example.com")
    clock.advance(minutes=15)
    report = await run(sessions, nylas, clock)

    assert report.complete and report.skipped == 4
    assert (report.missing, report.resolved) == (1, 1)
    assert "4 unusable rows skipped" in report.summary()
    assert await open_cases(sessions) == {}
    async with sessions() as session:
        gone = await cases.get_account(session, account_id="gone")
        kept = await cases.get_account(session, account_id="acct-3")
        nul = await cases.get_account(session, account_id="nul")
    assert gone is not None and gone.sync_state == "deleted"
    # Listed, though unreadable: not taken for deleted, and left as it was.
    assert kept is not None and (kept.sync_state, kept.email) != ("deleted", "x" * 409)
    assert nul is None
    warnings = [r for r in caplog.records if "skipped an unusable account" in r.getMessage()]
    assert len(warnings) == 4
    assert {r.__dict__["account"] for r in warnings} >= {"acct-3", "i" * 40 + "…"}


def _state(version: str) -> str:
    return "grant_status" if version == "v3" else "sync_state"


async def test_the_cases_of_a_first_pass_are_diagnosed_as_they_open(
    sessions: Sessions, nylas_fake: FakeNylas, http: httpx.AsyncClient, clock: FrozenClock
) -> None:
    for i in range(25):
        broken = i % 6 == 0  # 0, 6, 12, 18, 24: over three pages of ten
        nylas_fake.add_grant(
            id=f"g-{i:02d}",
            email=f"user{i}@acme-corp.com",
            provider="microsoft",
            grant_status="invalid" if broken else "valid",
        )
    report = await run(sessions, client_for(nylas_fake, http), clock)
    assert report.opened == 5
    opened = await open_cases(sessions)
    peers = {
        account_id: [e for f in case.diagnosis for e in f["evidence"] if "went bad" in e]
        for account_id, case in opened.items()
    }
    # Each case counts the accounts of its domain that went bad before it, in listing order.
    assert peers["g-00"] == peers["g-06"] == []
    assert peers["g-12"] == [
        "2 other accounts at acme-corp.com went bad between 09:30 and 09:30 UTC"
    ]
    assert peers["g-24"] == [
        "4 other accounts at acme-corp.com went bad between 09:30 and 09:30 UTC"
    ]
    rules = {account_id: [f["rule"] for f in case.diagnosis] for account_id, case in opened.items()}
    assert rules["g-00"] == rules["g-06"] == ["oauth"]
    assert rules["g-18"] == ["same_domain", "oauth"]  # 4 cases at the domain: not recurring yet
    assert rules["g-24"] == ["same_domain", "oauth", "recurring"]


async def test_a_new_broken_account_with_a_known_email_flags_the_old_one(
    sessions: Sessions, nylas_fake: FakeNylas, http: httpx.AsyncClient, clock: FrozenClock
) -> None:
    nylas_fake.add_grant(id="g-old", email="ana@example.com")
    nylas = client_for(nylas_fake, http)
    await run(sessions, nylas, clock)
    nylas_fake.add_grant(id="g-new", email="ana@example.com", grant_status="invalid")
    clock.advance(minutes=15)
    report = await run(sessions, nylas, clock)
    assert (report.new, report.opened) == (1, 1)
    opened = await open_cases(sessions)
    assert (opened["g-new"].kind, opened["g-new"].state) == ("reauth", "invalid")
    assert (opened["g-old"].kind, opened["g-old"].related_account_id) == ("duplicate", "g-new")
