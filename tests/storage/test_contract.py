"""Storage contract: every query behaves the same on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import pytest
from sqlalchemy import event
from sqlalchemy.engine.interfaces import CacheStats
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import cases, inbox, leases, maintenance, outbox
from storage.engine import create_engine, is_sqlite
from storage.migrate import current_revision, head_revision, is_up_to_date, upgrade
from storage.models import Account, CaseStatus, InboxStatus, OutboxStatus

T = TypeVar("T")
Sessions = async_sessionmaker[AsyncSession]
NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


async def race(sessions: Sessions, work: Callable[[AsyncSession], Awaitable[T]]) -> list[T]:
    """Run ``work`` in two transactions at once, each held open a moment so they overlap."""

    async def one() -> T:
        async with sessions() as session, session.begin():
            result = await work(session)
            await asyncio.sleep(0.2)
            return result

    return list(await asyncio.gather(one(), one()))


async def add_account(sessions: Sessions, account_id: str = "acc-1", **fields: Any) -> None:
    async with sessions() as session, session.begin():
        session.add(
            Account(id=account_id, api_version="v2", first_seen_at=NOW, updated_at=NOW, **fields)
        )


# --- migrations -------------------------------------------------------------------------------


async def test_blank_database_is_not_migrated_until_upgrade(blank_url: str) -> None:
    engine = create_engine(blank_url)
    try:
        assert await current_revision(engine) is None
        assert not await is_up_to_date(engine)
        await upgrade(engine)
        assert await current_revision(engine) == head_revision()
        await upgrade(engine)  # a second run is a no-op
        assert await is_up_to_date(engine)
    finally:
        await engine.dispose()


async def test_two_processes_migrating_at_once_both_succeed(blank_url: str) -> None:
    engines = [create_engine(blank_url), create_engine(blank_url)]
    try:
        await asyncio.gather(*(upgrade(e) for e in engines))
        assert await is_up_to_date(engines[0])
    finally:
        for e in engines:
            await e.dispose()


# --- timestamps -------------------------------------------------------------------------------


async def test_timestamps_come_back_aware_utc(sessions: Sessions) -> None:
    local = datetime(2026, 11, 2, 11, 30, tzinfo=timezone(timedelta(hours=2)))
    await add_account(sessions, state_at=local)
    async with sessions() as session:
        account = await cases.get_account(session, account_id="acc-1")
    assert account is not None and account.state_at is not None
    assert account.state_at.tzinfo is not None
    assert account.state_at == local
    assert account.first_seen_at == NOW


async def test_naive_timestamps_are_refused(sessions: Sessions) -> None:
    with pytest.raises(Exception, match="naive datetime"):
        await add_account(sessions, state_at=datetime(2026, 1, 1))


# --- cases and the audit log ------------------------------------------------------------------


async def test_one_open_case_per_account(sessions: Sessions) -> None:
    await add_account(sessions)
    async with sessions() as session, session.begin():
        first = await cases.open_case(
            session, account_id="acc-1", kind="reauth", state="invalid", now=NOW
        )
        second = await cases.open_case(
            session, account_id="acc-1", kind="stopped", state="stopped", now=NOW
        )
    assert first is not None and first.id is not None
    assert second is None
    async with sessions() as session, session.begin():
        open_case = await cases.get_open_case(session, account_id="acc-1")
        assert open_case is not None and open_case.id == first.id
        open_case.status = CaseStatus.RESOLVED
        open_case.resolved_at = NOW
        session.add(open_case)
    async with sessions() as session, session.begin():
        reopened = await cases.open_case(
            session, account_id="acc-1", kind="reauth", state="invalid", now=NOW
        )
    assert reopened is not None and reopened.id != first.id


async def test_cases_and_messages_are_inserted_by_cached_statements(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    """Storms insert thousands of cases and messages: each is one INSERT, compiled once."""
    inserts: list[tuple[str, bool]] = []

    def seen(conn: Any, cursor: Any, sql: str, params: Any, context: Any, many: bool) -> None:
        if sql.lstrip().upper().startswith("INSERT"):
            inserts.append((sql.split()[2], context.cache_hit is CacheStats.CACHE_HIT))

    await add_account(sessions, "acc-1")
    await add_account(sessions, "acc-2")
    event.listen(engine.sync_engine, "before_cursor_execute", seen)
    try:
        for account_id in ("acc-1", "acc-2"):
            async with sessions() as session, session.begin():
                case = await cases.open_case(
                    session, account_id=account_id, kind="reauth", state="invalid", now=NOW
                )
                assert case is not None
                await outbox.enqueue(
                    session,
                    channel="C1",
                    kind="post",
                    case_id=case.id,
                    now=NOW,
                    dedupe_key=f"post:{case.id}",
                )
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", seen)

    # The first of each was compiled; the second found it in the engine's cache.
    assert [table for table, _ in inserts] == ["cases", "outbox", "cases", "outbox"]
    assert [cached for _, cached in inserts[2:]] == [True, True]


async def test_concurrent_openers_of_one_case_exactly_one_wins(sessions: Sessions) -> None:
    await add_account(sessions)

    async def work(session: AsyncSession) -> int | None:
        case = await cases.open_case(
            session, account_id="acc-1", kind="reauth", state="invalid", now=NOW
        )
        return None if case is None else case.id

    results = await race(sessions, work)
    assert len([r for r in results if r is not None]) == 1
    assert None in results


async def test_list_open_cases_oldest_first_with_accounts(sessions: Sessions) -> None:
    for i in range(3):
        await add_account(sessions, f"acc-{i}", email=f"user{i}@example.com")
    async with sessions() as session, session.begin():
        for i in (2, 0, 1):
            await cases.open_case(
                session,
                account_id=f"acc-{i}",
                kind="reauth",
                state="invalid",
                now=NOW + timedelta(minutes=i),
            )
    async with sessions() as session:
        rows = await cases.list_open_cases(session)
    assert [account.email for _, account in rows] == [
        "user0@example.com",
        "user1@example.com",
        "user2@example.com",
    ]


async def test_audit_log_keeps_order_and_details(sessions: Sessions) -> None:
    await add_account(sessions)
    async with sessions() as session, session.begin():
        case = await cases.open_case(
            session, account_id="acc-1", kind="reauth", state="invalid", now=NOW
        )
        assert case is not None and case.id is not None
        await cases.record_event(
            session, actor="nylas", action="opened", at=NOW, case_id=case.id, account_id="acc-1"
        )
        await cases.record_event(
            session,
            actor="slack:U123",
            action="acknowledged",
            at=NOW + timedelta(minutes=3),
            case_id=case.id,
            details={"note": "on it — ñ"},
        )
    async with sessions() as session:
        events = await cases.case_events(session, case_id=case.id)
    assert [(e.actor, e.action) for e in events] == [
        ("nylas", "opened"),
        ("slack:U123", "acknowledged"),
    ]
    assert events[1].details == {"note": "on it — ñ"}


# --- inbox ------------------------------------------------------------------------------------


async def test_inbox_deduplicates_deliveries(sessions: Sessions) -> None:
    async with sessions() as session, session.begin():
        first = await inbox.add_delivery(
            session, dedupe_key="v3:n-1", source="nylas-v3", body="{}", received_at=NOW
        )
        again = await inbox.add_delivery(
            session, dedupe_key="v3:n-1", source="nylas-v3", body="{}", received_at=NOW
        )
    assert first is not None
    assert again is None


async def store_batches(
    engine: AsyncEngine,
    *batches: list[Any],
    at: datetime = NOW,
    spell: float = 5.0,
    linger: Callable[[list[Any], float], bool] | None = None,
) -> tuple[list[set[str] | Exception], int]:
    """Store batches as the webhook's writer does; return what each came to, and how many
    batches were left untaken. ``linger`` gets the queue of batches to add to."""
    queue = list(batches)
    results: list[set[str] | Exception] = []
    await inbox.store_while_waiting(
        engine,
        lambda: queue.pop(0) if queue else None,
        results.append,
        received_at=lambda: at,
        spell=spell,
        linger=None if linger is None else lambda timeout: linger(queue, timeout),
    )
    return results, len(queue)


async def test_batches_of_deliveries_are_stored_and_say_which_were_new(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    async with sessions() as session, session.begin():
        await inbox.add_delivery(
            session, dedupe_key="v3:old", source="nylas-v3", body="{}", received_at=NOW
        )
    later = NOW + timedelta(seconds=1, microseconds=250)
    first = [
        ("v3:old", "nylas-v3", "{}"),  # stored before
        ("v3:a", "nylas-v3", '{"n": "ñ"}'),
        ("v2:acc-1:account.invalid:1", "nylas-v2", "{}"),
        ("v3:a", "nylas-v3", "{}"),  # repeated in the batch: stored once, as first given
    ]
    second = [("v3:a", "nylas-v3", "{}"), ("v3:b", "nylas-v3", "{}")]
    results, left = await store_batches(engine, first, second, at=later)
    assert (results, left) == ([{"v3:a", "v2:acc-1:account.invalid:1"}, {"v3:b"}], 0)

    # Committed, and read back by the ORM as it would have written them.
    async with sessions() as session:
        stored = {d.dedupe_key: d for d in await inbox.pending_deliveries(session, now=later)}
    assert sorted(stored) == ["v2:acc-1:account.invalid:1", "v3:a", "v3:b", "v3:old"]
    assert (stored["v3:a"].source, stored["v3:a"].body) == ("nylas-v3", '{"n": "ñ"}')
    assert stored["v3:a"].received_at == later
    assert stored["v3:a"].attempts == 0
    assert stored["v3:old"].received_at == NOW


async def test_a_batch_of_several_statements_says_which_were_new(
    engine: AsyncEngine, sessions: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbox, "INSERT_ROWS", 2)  # SQLite inserts a batch in statements of 2
    await store_batches(engine, [("v3:old", "nylas-v3", "{}")])
    keys = ["v3:1", "v3:old", "v3:2", "v3:1", "v3:3", "v3:4", "v3:5"]
    results, _ = await store_batches(engine, [(key, "nylas-v3", "{}") for key in keys])
    assert results == [{"v3:1", "v3:2", "v3:3", "v3:4", "v3:5"}]
    async with sessions() as session:
        stored = await inbox.pending_deliveries(session, now=NOW)
    assert sorted(d.dedupe_key for d in stored) == [
        "v3:1",
        "v3:2",
        "v3:3",
        "v3:4",
        "v3:5",
        "v3:old",
    ]


async def test_a_batch_that_fails_stores_none_of_it_and_ends_the_call(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    failing = [("v3:a", "nylas-v3", "{}"), ("v3:b", "nylas-v3", None)]  # body is NOT NULL
    results, left = await store_batches(engine, failing, [("v3:c", "nylas-v3", "{}")])
    assert len(results) == 1 and isinstance(results[0], IntegrityError)
    assert left == 1  # the next batch was not taken
    async with sessions() as session:
        assert await inbox.pending_deliveries(session, now=NOW) == []
    # The connection is left usable, with no transaction open.
    assert await store_batches(engine, failing[:1]) == ([{"v3:a"}], 0)


async def test_storing_batches_lets_other_writers_in_after_a_spell(engine: AsyncEngine) -> None:
    taken = 0

    def endless() -> list[tuple[str, str, str]]:
        nonlocal taken
        taken += 1
        return [(f"v3:{taken}", "nylas-v3", "{}")]

    results: list[set[str] | Exception] = []
    await inbox.store_while_waiting(
        engine, endless, results.append, received_at=lambda: NOW, spell=0.1
    )
    assert taken > 1 and results == [{f"v3:{n}"} for n in range(1, taken + 1)]


async def test_a_lingering_writer_takes_what_arrives_before_its_spell_ends(
    engine: AsyncEngine,
) -> None:
    waits: list[float] = []

    def linger(queue: list[Any], timeout: float) -> bool:
        waits.append(timeout)
        if len(waits) > 1:
            return False  # nothing more came
        queue.append([("v3:second", "nylas-v3", "{}")])  # arrives while the writer waits
        return True

    results, left = await store_batches(engine, [("v3:first", "nylas-v3", "{}")], linger=linger)
    if is_sqlite(engine):
        # One call took both: asked twice, each time for at most what was left of the spell.
        assert (results, left) == ([{"v3:first"}, {"v3:second"}], 0)
        assert len(waits) == 2 and all(0 < wait <= 5.0 for wait in waits)
    else:
        # PostgreSQL's writers do not wait for one another's connection: no lingering.
        assert (results, left, waits) == ([{"v3:first"}], 0, [])


async def test_concurrent_inserts_of_one_delivery_exactly_one_wins(sessions: Sessions) -> None:
    async def work(session: AsyncSession) -> int | None:
        return await inbox.add_delivery(
            session, dedupe_key="v2:acc-1:account.invalid:1", source="nylas-v2", body="{}",
            received_at=NOW,
        )  # fmt: skip

    results = await race(sessions, work)
    assert len([r for r in results if r is not None]) == 1
    async with sessions() as session:
        assert len(await inbox.pending_deliveries(session, now=NOW)) == 1


async def test_delivery_is_claimed_once_and_a_rollback_keeps_it_pending(
    sessions: Sessions,
) -> None:
    async with sessions() as session, session.begin():
        delivery_id = await inbox.add_delivery(
            session, dedupe_key="k", source="nylas-v3", body="{}", received_at=NOW
        )
    assert delivery_id is not None

    # A worker that crashes after claiming: its transaction rolls back.
    async with sessions() as session, session.begin():
        assert await inbox.claim_delivery(session, delivery_id=delivery_id, now=NOW)
        await session.rollback()
    async with sessions() as session:
        assert [d.id for d in await inbox.pending_deliveries(session, now=NOW)] == [delivery_id]

    async def work(session: AsyncSession) -> bool:
        return await inbox.claim_delivery(session, delivery_id=delivery_id, now=NOW)

    assert sorted(await race(sessions, work)) == [False, True]
    async with sessions() as session:
        assert await inbox.pending_deliveries(session, now=NOW) == []


async def test_failed_deliveries_are_retried_then_given_up(sessions: Sessions) -> None:
    async with sessions() as session, session.begin():
        delivery_id = await inbox.add_delivery(
            session, dedupe_key="k", source="nylas-v2", body="{}", received_at=NOW
        )
    assert delivery_id is not None
    retry_at = NOW + timedelta(minutes=1)
    for attempt in range(1, inbox.MAX_ATTEMPTS + 1):
        async with sessions() as session, session.begin():
            status = await inbox.defer_delivery(
                session, delivery_id=delivery_id, error=f"boom {attempt}", retry_at=retry_at
            )
        async with sessions() as session:
            assert await inbox.pending_deliveries(session, now=NOW) == []
            due = await inbox.pending_deliveries(session, now=retry_at)
        if attempt < inbox.MAX_ATTEMPTS:
            assert status == InboxStatus.PENDING
            assert [d.id for d in due] == [delivery_id]
        else:
            assert status == InboxStatus.FAILED
            assert due == []


# --- outbox -----------------------------------------------------------------------------------


async def test_outbox_dedupe_key_allows_one_message(sessions: Sessions) -> None:
    async with sessions() as session, session.begin():
        first = await outbox.enqueue(
            session, channel="C1", kind="post", now=NOW, dedupe_key="case:1:post"
        )
        again = await outbox.enqueue(
            session, channel="C1", kind="post", now=NOW, dedupe_key="case:1:post"
        )
        plain = [await outbox.enqueue(session, channel="C1", kind="thread", now=NOW) for _ in "ab"]
    assert first is not None and again is None
    assert None not in plain


async def test_claimed_message_is_leased_to_one_owner(sessions: Sessions) -> None:
    async with sessions() as session, session.begin():
        message_id = await outbox.enqueue(session, channel="C1", kind="post", now=NOW)
    lease = timedelta(seconds=30)
    async with sessions() as session, session.begin():
        claimed = await outbox.claim(session, owner="a", now=NOW, lease=lease)
    assert [m.id for m in claimed] == [message_id]
    assert claimed[0].attempts == 1
    async with sessions() as session, session.begin():
        assert (
            await outbox.claim(session, owner="b", now=NOW + timedelta(seconds=10), lease=lease)
            == []
        )
    # The lease runs out (the owner died): another process takes the message over.
    later = NOW + timedelta(seconds=31)
    async with sessions() as session, session.begin():
        taken = await outbox.claim(session, owner="b", now=later, lease=lease)
    assert [m.id for m in taken] == [message_id]
    assert message_id is not None
    async with sessions() as session, session.begin():
        assert not await outbox.mark_sent(session, message_id=message_id, owner="a", now=later)
        assert await outbox.mark_sent(session, message_id=message_id, owner="b", now=later)
    async with sessions() as session, session.begin():
        assert await outbox.claim(session, owner="c", now=later + lease * 2, lease=lease) == []


async def test_concurrent_claims_of_one_message_exactly_one_wins(sessions: Sessions) -> None:
    async with sessions() as session, session.begin():
        message_id = await outbox.enqueue(session, channel="C1", kind="post", now=NOW)
    owners = iter(["a", "b"])

    async def work(session: AsyncSession) -> list[int | None]:
        claimed = await outbox.claim(
            session, owner=next(owners), now=NOW, lease=timedelta(seconds=30)
        )
        return [m.id for m in claimed]

    results = await race(sessions, work)
    assert sorted(results) == [[], [message_id]]


async def test_retry_later_and_permanent_failure(sessions: Sessions) -> None:
    async with sessions() as session, session.begin():
        first = await outbox.enqueue(session, channel="C1", kind="post", now=NOW)
        second = await outbox.enqueue(session, channel="C1", kind="update", now=NOW)
    assert first is not None and second is not None
    lease = timedelta(seconds=30)
    async with sessions() as session, session.begin():
        await outbox.claim(session, owner="a", now=NOW, lease=lease)
        retry_at = NOW + timedelta(seconds=5)
        assert await outbox.retry_later(
            session, message_id=first, owner="a", available_at=retry_at, error="ratelimited"
        )
        assert await outbox.mark_failed(
            session, message_id=second, owner="a", error="channel_not_found"
        )
    async with sessions() as session, session.begin():
        assert (
            await outbox.claim(session, owner="b", now=NOW + timedelta(seconds=1), lease=lease)
            == []
        )
        again = await outbox.claim(session, owner="b", now=retry_at, lease=lease)
    assert [(m.id, m.attempts, m.last_error) for m in again] == [(first, 2, "ratelimited")]
    async with sessions() as session:
        depths = await maintenance.queue_depths(session)
    assert depths["outbox"] == {OutboxStatus.PENDING: 1, OutboxStatus.FAILED: 1}


# --- maintenance ------------------------------------------------------------------------------


async def test_purge_keeps_pending_and_failed_rows(sessions: Sessions) -> None:
    old = NOW - timedelta(days=40)
    async with sessions() as session, session.begin():
        done = await inbox.add_delivery(
            session, dedupe_key="done", source="poll", body="{}", received_at=old
        )
        await inbox.add_delivery(
            session, dedupe_key="pending", source="poll", body="{}", received_at=old
        )
        assert done is not None
        await inbox.claim_delivery(session, delivery_id=done, now=old)
        sent = await outbox.enqueue(session, channel="C1", kind="post", now=old)
        await outbox.enqueue(session, channel="C1", kind="post", now=old)
        claimed = await outbox.claim(session, owner="a", now=old, lease=timedelta(seconds=1))
        assert sent is not None and len(claimed) == 2
        await outbox.mark_sent(session, message_id=sent, owner="a", now=old)
    async with sessions() as session, session.begin():
        removed = await maintenance.purge(session, before=NOW - timedelta(days=30))
    assert removed == (1, 1)
    async with sessions() as session:
        depths = await maintenance.queue_depths(session)
    assert depths == {"inbox": {"pending": 1}, "outbox": {"pending": 1}}


async def test_open_cases_by_kind(sessions: Sessions) -> None:
    for i, kind in enumerate(["reauth", "reauth", "support"]):
        await add_account(sessions, f"acc-{i}")
        async with sessions() as session, session.begin():
            await cases.open_case(session, account_id=f"acc-{i}", kind=kind, state="x", now=NOW)
    async with sessions() as session:
        assert await maintenance.open_cases_by_kind(session) == {"reauth": 2, "support": 1}


async def test_lines_of_one_thread_go_out_in_order_even_after_a_retry(sessions: Sessions) -> None:
    lease = timedelta(seconds=60)
    async with sessions() as session, session.begin():
        # Thread lines of two subjects (cases are not needed for the outbox itself).
        first, second, _third = [
            await outbox.enqueue(session, channel="C1", kind="thread", now=NOW) for _ in "abc"
        ]
        other = await outbox.enqueue(session, channel="C2", kind="thread", now=NOW)
        update = await outbox.enqueue(session, channel="C1", kind="update", now=NOW)
        pages = [
            await outbox.enqueue(session, channel="pagerduty", kind="page", now=NOW) for _ in "ab"
        ]

    async def claim(owner: str, at: datetime) -> list[int | None]:
        async with sessions() as session, session.begin():
            return [m.id for m in await outbox.claim(session, owner=owner, now=at, lease=lease)]

    # One line per thread (and per PagerDuty alert) at a time; other kinds are not held back.
    assert await claim("a", NOW) == [first, other, update, pages[0]]
    # The first line fails and is retried later: the second must not overtake it.
    async with sessions() as session, session.begin():
        for sent in (other, update, pages[0]):
            assert sent is not None
            await outbox.mark_sent(session, message_id=sent, owner="a", now=NOW)
        assert first is not None
        await outbox.retry_later(
            session, message_id=first, owner="a", available_at=NOW + timedelta(minutes=5), error="x"
        )
    assert await claim("b", NOW + timedelta(minutes=1)) == [pages[1]]
    async with sessions() as session, session.begin():
        assert pages[1] is not None
        await outbox.mark_sent(session, message_id=pages[1], owner="b", now=NOW)
    assert await claim("c", NOW + timedelta(minutes=5)) == [first]
    async with sessions() as session, session.begin():
        await outbox.mark_sent(session, message_id=first, owner="c", now=NOW)
    assert await claim("d", NOW + timedelta(minutes=5)) == [second]


async def test_a_lease_has_one_holder_until_it_runs_out(sessions: Sessions) -> None:
    period = timedelta(minutes=10)

    async def take(owner: str, at: datetime) -> bool:
        async with sessions() as session, session.begin():
            return await leases.acquire(session, name="job", owner=owner, now=at, period=period)

    # Two processes asking at once: exactly one gets it.
    taken = await race(
        sessions,
        lambda session: leases.acquire(
            session, name="race", owner=str(id(session)), now=NOW, period=period
        ),
    )
    assert sorted(taken) == [False, True]

    assert await take("a", NOW)
    assert not await take("b", NOW + timedelta(minutes=9))
    assert await take("a", NOW + timedelta(minutes=9))  # the holder renews
    assert not await take("b", NOW + timedelta(minutes=18))
    assert await take("b", NOW + timedelta(minutes=19))  # ran out: the next one takes it
    async with sessions() as session:
        lease = await leases.holder(session, name="job")
    assert lease is not None and (lease.owner, lease.until) == ("b", NOW + timedelta(minutes=29))
