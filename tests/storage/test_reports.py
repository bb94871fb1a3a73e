"""The read side of /reauth list, show and stats, on each database engine."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import cases, reports
from storage.models import Account, Case, CaseStatus
from storage.reports import ChronicAccount, ChronicDomain, Durations, Tally
from workflows.billing import NOT_BILLED

Sessions = async_sessionmaker[AsyncSession]
NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


async def add_account(
    session: AsyncSession,
    account_id: str,
    *,
    email: str | None = None,
    provider: str | None = None,
    billing_state: str | None = None,
) -> None:
    session.add(
        Account(
            id=account_id,
            api_version="v2",
            email=email,
            provider=provider,
            billing_state=billing_state,
            first_seen_at=NOW,
            updated_at=NOW,
        )
    )
    await session.flush()


async def add_case(
    session: AsyncSession,
    account_id: str,
    *,
    opened_at: datetime,
    kind: str = "reauth",
    status: str = CaseStatus.OPEN,
    acknowledged_at: datetime | None = None,
    resolved_at: datetime | None = None,
) -> int:
    """Open a case through the storage helper, then put it in the state the test needs."""
    case = await cases.open_case(
        session, account_id=account_id, kind=kind, state="invalid", now=opened_at, channel="C0A"
    )
    assert case is not None and case.id is not None
    case.status = status
    case.acknowledged_at = acknowledged_at
    if status == CaseStatus.RESOLVED:
        case.resolved_at = resolved_at or opened_at + timedelta(hours=1)
        case.resolved_by = "nylas"
    session.add(case)
    await session.flush()
    return case.id


def accounts_of(rows: Sequence[tuple[Case, Account]]) -> list[str]:
    assert all(case.account_id == account.id for case, account in rows)
    return [account.id for _, account in rows]


# --- an empty database --------------------------------------------------------------------


async def test_an_empty_database_answers_with_nothing(sessions: Sessions) -> None:
    async with sessions() as session:
        assert await reports.list_open_cases(session) == ([], False)
        assert await reports.find_case(session, ref="1") is None
        assert await reports.find_case(session, ref="ana@acme.com") is None
        assert await reports.case_history(session, case_id=1) == []
        assert await reports.count_open_cases(session, by="domain") == []
        assert await reports.count_open_billed(session, not_billed=NOT_BILLED) == 0
        assert await reports.time_to_resolve(session, since=NOW, until=NOW) == Durations(0, None)
        assert await reports.chronic_accounts(session, since=NOW, until=NOW, min_cases=1) == []


# --- list ---------------------------------------------------------------------------------


async def test_list_is_newest_first_and_leaves_out_resolved_cases(sessions: Sessions) -> None:
    async with sessions() as session, session.begin():
        for name in ("a1", "a2", "a3", "a4"):
            await add_account(session, name)
        await add_case(session, "a1", opened_at=NOW - timedelta(hours=3))
        await add_case(session, "a2", opened_at=NOW - timedelta(hours=1))
        await add_case(session, "a3", opened_at=NOW - timedelta(hours=1))  # same time: id decides
        await add_case(session, "a4", opened_at=NOW, status=CaseStatus.RESOLVED)
    async with sessions() as session:
        rows, more = await reports.list_open_cases(session)
    assert (accounts_of(rows), more) == (["a3", "a2", "a1"], False)


@pytest.fixture
async def five_open(sessions: Sessions) -> None:
    """Five open cases of varied status, kind, domain and provider, and one resolved case."""
    rows = [
        ("a1", "ana@acme.com", "gmail", "reauth", CaseStatus.OPEN),
        ("a2", "bo@ACME.com", "Gmail", "stopped", CaseStatus.ACKNOWLEDGED),
        ("a3", "cy@mail.acme.com", "imap", "support", CaseStatus.SNOOZED),
        ("a4", "di@globex.com", "microsoft", "reauth", CaseStatus.WAITING_ON_USER),
        ("a5", None, None, "reauth", CaseStatus.OPEN),
    ]
    async with sessions() as session, session.begin():
        for i, (name, email, provider, kind, status) in enumerate(rows):
            await add_account(session, name, email=email, provider=provider)
            opened = NOW - timedelta(hours=10 - i)  # a5 is the newest
            await add_case(session, name, opened_at=opened, kind=kind, status=status)
        await add_account(session, "a6", email="ed@acme.com", provider="gmail")
        await add_case(session, "a6", opened_at=NOW, status=CaseStatus.RESOLVED)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({}, ["a5", "a4", "a3", "a2", "a1"]),
        (
            {"statuses": [], "kinds": [], "domain": " ", "provider": ""},
            ["a5", "a4", "a3", "a2", "a1"],
        ),
        ({"statuses": ["open"]}, ["a5", "a1"]),
        ({"statuses": ["acknowledged", "snoozed"]}, ["a3", "a2"]),
        ({"statuses": ["resolved"]}, []),
        ({"kinds": ["reauth"]}, ["a5", "a4", "a1"]),
        ({"kinds": ["stopped", "support"]}, ["a3", "a2"]),
        ({"domain": "acme.com"}, ["a2", "a1"]),  # not mail.acme.com, not the resolved a6
        ({"domain": "@ACME.COM"}, ["a2", "a1"]),
        ({"domain": "mail.acme.com"}, ["a3"]),
        ({"domain": "nowhere.example"}, []),
        ({"provider": "GMAIL"}, ["a2", "a1"]),
        ({"provider": "imap"}, ["a3"]),
        ({"kinds": ["reauth"], "domain": "acme.com"}, ["a1"]),
        ({"statuses": ["open"], "provider": "gmail", "domain": "globex.com"}, []),
    ],
)
@pytest.mark.usefixtures("five_open")
async def test_list_filters(
    sessions: Sessions, filters: dict[str, object], expected: list[str]
) -> None:
    async with sessions() as session:
        rows, more = await reports.list_open_cases(session, **filters)  # type: ignore[arg-type]
    assert (accounts_of(rows), more) == (expected, False)


@pytest.mark.usefixtures("five_open")
async def test_list_pages(sessions: Sessions) -> None:
    async with sessions() as session:
        pages = [
            await reports.list_open_cases(session, limit=2, offset=offset)
            for offset in (0, 2, 4, 5)
        ]
        exactly_all = await reports.list_open_cases(session, limit=5)
        all_but_one = await reports.list_open_cases(session, limit=4)
        filtered = await reports.list_open_cases(session, kinds=["reauth"], limit=2, offset=0)
    assert [(accounts_of(rows), more) for rows, more in pages] == [
        (["a5", "a4"], True),
        (["a3", "a2"], True),
        (["a1"], False),
        ([], False),
    ]
    assert (accounts_of(exactly_all[0]), exactly_all[1]) == (["a5", "a4", "a3", "a2", "a1"], False)
    assert all_but_one[1] is True and len(all_but_one[0]) == 4
    assert (accounts_of(filtered[0]), filtered[1]) == (["a5", "a4"], True)


@pytest.mark.parametrize(("limit", "offset"), [(0, 0), (-1, 0), (10, -1)])
async def test_list_refuses_a_meaningless_page(sessions: Sessions, limit: int, offset: int) -> None:
    async with sessions() as session:
        with pytest.raises(ValueError, match="limit"):
            await reports.list_open_cases(session, limit=limit, offset=offset)


# --- show: finding a case -----------------------------------------------------------------


@pytest.fixture
async def refs(sessions: Sessions) -> dict[str, int]:
    """Cases to name in every way an operator can; returns their ids by name."""
    ids: dict[str, int] = {}
    async with sessions() as session, session.begin():
        # ana: an old resolved case and a newer open one.
        await add_account(session, "acc-ana", email="Ana@Acme.com")
        ids["ana-old"] = await add_case(
            session, "acc-ana", opened_at=NOW - timedelta(days=9), status=CaseStatus.RESOLVED
        )
        ids["ana-open"] = await add_case(session, "acc-ana", opened_at=NOW - timedelta(days=2))
        # bo: only resolved cases; the most recently opened one wins, whatever the ids say.
        await add_account(session, "acc-bo", email="bo@acme.com")
        ids["bo-newer"] = await add_case(
            session, "acc-bo", opened_at=NOW - timedelta(days=1), status=CaseStatus.RESOLVED
        )
        ids["bo-older"] = await add_case(
            session, "acc-bo", opened_at=NOW - timedelta(days=5), status=CaseStatus.RESOLVED
        )
        # cy: one email, two account ids (a duplicate); the open case wins over a newer one.
        await add_account(session, "acc-cy-1", email="cy@globex.com")
        await add_account(session, "acc-cy-2", email="CY@globex.com")
        ids["cy-open"] = await add_case(session, "acc-cy-1", opened_at=NOW - timedelta(days=4))
        ids["cy-newer"] = await add_case(
            session, "acc-cy-2", opened_at=NOW - timedelta(days=1), status=CaseStatus.RESOLVED
        )
        # An account id made only of digits.
        await add_account(session, "777000", email="di@initech.com")
        ids["digits"] = await add_case(session, "777000", opened_at=NOW)
    return ids


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("acc-ana", "ana-open"),
        ("ana@acme.com", "ana-open"),
        ("  ANA@ACME.COM ", "ana-open"),
        ("acc-bo", "bo-newer"),
        ("BO@Acme.Com", "bo-newer"),
        ("cy@globex.com", "cy-open"),
        ("acc-cy-2", "cy-newer"),  # an account id names that account only
        ("777000", "digits"),  # no case has that number, so it is an account id
        ("#777000", None),  # "#" always means a case number
        ("ACC-ANA", None),  # account ids are case-sensitive
        ("acme.com", None),
        ("nobody@acme.com", None),
        ("#", None),
        ("", None),
        ("   ", None),
        ("#999", None),
        ("99999999999", None),  # too large for a case id; no database error either
        ("#99999999999", None),
    ],
)
async def test_find_case_by_account_or_email(
    sessions: Sessions, refs: dict[str, int], ref: str, expected: str | None
) -> None:
    async with sessions() as session:
        case = await reports.find_case(session, ref=ref)
    assert (case.id if case else None) == (refs[expected] if expected else None)


async def test_find_case_by_number(sessions: Sessions, refs: dict[str, int]) -> None:
    old = refs["ana-old"]
    async with sessions() as session:
        for ref in (str(old), f"#{old}", f" #{old} ", f"#00{old}"):
            case = await reports.find_case(session, ref=ref)
            assert case is not None and case.id == old, ref


# --- show: the history --------------------------------------------------------------------


async def test_history_is_in_time_order_and_keeps_the_latest(sessions: Sessions) -> None:
    async with sessions() as session, session.begin():
        await add_account(session, "a1")
        await add_account(session, "a2")
        case_id = await add_case(session, "a1", opened_at=NOW)
        other = await add_case(session, "a2", opened_at=NOW)
        # Written out of time order; two share a timestamp and keep their writing order.
        for minutes, action in [(0, "opened"), (30, "snoozed"), (10, "acknowledged")]:
            await cases.record_event(
                session,
                actor="nylas",
                action=action,
                at=NOW + timedelta(minutes=minutes),
                case_id=case_id,
            )
        for action in ("retried", "resolved"):
            await cases.record_event(
                session,
                actor="slack:U1",
                action=action,
                at=NOW + timedelta(minutes=40),
                case_id=case_id,
            )
        await cases.record_event(session, actor="nylas", action="opened", at=NOW, case_id=other)
    async with sessions() as session:
        full = await reports.case_history(session, case_id=case_id)
        tail = await reports.case_history(session, case_id=case_id, limit=3)
        none = await reports.case_history(session, case_id=case_id + other + 1)
    assert [e.action for e in full] == ["opened", "acknowledged", "snoozed", "retried", "resolved"]
    assert [e.action for e in tail] == ["snoozed", "retried", "resolved"]
    assert none == []


# --- aggregates ---------------------------------------------------------------------------


async def test_open_counts_group_case_insensitively(sessions: Sessions) -> None:
    async with sessions() as session, session.begin():
        for name, email, provider, billing, kind in [
            ("a1", "ana@acme.com", "gmail", "paid", "reauth"),
            ("a2", "bo@ACME.com", "GMAIL", "paid", "stopped"),
            ("a3", "cy@globex.com", "imap", "cancelled", "reauth"),
            ("a4", "not-an-email", None, None, "support"),
            ("a5", None, "eas", "paid", "reauth"),
        ]:
            await add_account(session, name, email=email, provider=provider, billing_state=billing)
            await add_case(session, name, opened_at=NOW, kind=kind)
        await add_account(
            session, "a6", email="di@globex.com", provider="imap", billing_state="paid"
        )
        await add_case(session, "a6", opened_at=NOW, status=CaseStatus.RESOLVED)
    async with sessions() as session:
        assert await reports.count_open_cases(session, by="kind") == [
            Tally("reauth", 3),
            Tally("stopped", 1),
            Tally("support", 1),
        ]
        assert await reports.count_open_cases(session, by="provider") == [
            Tally("gmail", 2),
            Tally("eas", 1),
            Tally("imap", 1),
            Tally(None, 1),
        ]
        assert await reports.count_open_cases(session, by="domain") == [
            Tally("acme.com", 2),
            Tally(None, 2),  # no email, and an email without '@'
            Tally("globex.com", 1),
        ]
        assert await reports.count_open_billed(session, not_billed=NOT_BILLED) == 3


async def test_windows_include_both_ends(sessions: Sessions) -> None:
    since, until = NOW - timedelta(days=7), NOW
    tick = timedelta(microseconds=1)
    async with sessions() as session, session.begin():
        await add_account(session, "a1", email="ana@acme.com")
        await add_account(session, "a2", email="bo@acme.com")
        # (opened, acknowledged, resolved): acknowledged or resolved on the edges count.
        for account_id, opened, acked_at, resolved_at in [
            ("a1", since - timedelta(hours=2), since - tick, since),
            ("a1", since, since + timedelta(hours=1), until - timedelta(hours=1)),
            ("a1", until - timedelta(minutes=30), until, until + tick),
            ("a2", since - tick, since, since - tick + timedelta(hours=3)),
            ("a2", until + tick, until + tick, until + timedelta(hours=1)),
        ]:
            await add_case(
                session,
                account_id,
                opened_at=opened,
                status=CaseStatus.RESOLVED,
                acknowledged_at=acked_at,
                resolved_at=resolved_at,
            )
    async with sessions() as session:
        acked = await reports.time_to_acknowledge(session, since=since, until=until)
        resolved = await reports.time_to_resolve(session, since=since, until=until)
        accounts = await reports.chronic_accounts(session, since=since, until=until, min_cases=2)
        domains = await reports.chronic_domains(session, since=since, until=until, min_cases=2)
        at_three = await reports.chronic_accounts(session, since=since, until=until, min_cases=3)
    # Acknowledged: 1 h, 30 min and 0 (opened a tick before since); mean 30 min.
    assert acked == Durations(3, timedelta(minutes=30))
    # Resolved: 2 h, 7 days - 1 h and 3 h; mean (7 d + 4 h) / 3 = 57 h 20 min.
    assert resolved == Durations(3, timedelta(hours=57, minutes=20))
    assert accounts == [ChronicAccount("a1", "ana@acme.com", 2)]
    assert domains == [ChronicDomain("acme.com", 2, 1)]
    assert at_three == []


async def test_chronic_lists_are_ordered_by_count_then_name(sessions: Sessions) -> None:
    since, until = NOW - timedelta(days=30), NOW
    async with sessions() as session, session.begin():
        for account_id, email, count in [
            ("b-2", "x@beta.io", 3),
            ("a-9", "y@alpha.io", 4),
            ("b-1", "z@beta.io", 3),
            ("c-1", None, 5),  # counted as an account, in no domain
            ("d-1", "w@delta.io", 2),
        ]:
            await add_account(session, account_id, email=email)
            for i in range(count):
                await add_case(
                    session,
                    account_id,
                    opened_at=NOW - timedelta(days=i + 1),
                    status=CaseStatus.OPEN if i == count - 1 else CaseStatus.RESOLVED,
                )
    async with sessions() as session:
        accounts = await reports.chronic_accounts(session, since=since, until=until, min_cases=3)
        domains = await reports.chronic_domains(session, since=since, until=until, min_cases=3)
    assert accounts == [
        ChronicAccount("c-1", None, 5),
        ChronicAccount("a-9", "y@alpha.io", 4),
        ChronicAccount("b-1", "z@beta.io", 3),
        ChronicAccount("b-2", "x@beta.io", 3),
    ]
    assert domains == [ChronicDomain("beta.io", 6, 2), ChronicDomain("alpha.io", 4, 1)]


async def test_history_refuses_a_meaningless_limit(sessions: Sessions) -> None:
    async with sessions() as session:
        with pytest.raises(ValueError, match="limit"):
            await reports.case_history(session, case_id=1, limit=0)
