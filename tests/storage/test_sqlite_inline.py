"""SQLite statements run on the event loop's thread; waiting for a lock does not."""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.dialects.sqlite.aiosqlite import dialect as aiosqlite_dialect
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from storage import sqlite_inline
from storage.engine import READONLY_OPTION, WalCheckpointer, create_engine, reader_engine
from tests.waiting import eventually


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "inline.db"


async def make_engine(path: Path, busy_timeout_ms: int | None = None) -> AsyncEngine:
    url = f"sqlite+aiosqlite:///{path}"
    kwargs = {}
    if busy_timeout_ms is not None:
        args, connect = aiosqlite_dialect().create_connect_args(create_engine(url).url)
        kwargs["async_creator"] = sqlite_inline.connector(
            args, connect, busy_timeout_ms=busy_timeout_ms
        )
    engine = create_engine(url, **kwargs)
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY, v INTEGER)"))
    return engine


@pytest.fixture
async def engine(path: Path) -> AsyncIterator[AsyncEngine]:
    engine = await make_engine(path)
    yield engine
    await engine.dispose()


@pytest.fixture
def other_writer(path: Path) -> Iterator[sqlite3.Connection]:
    """Another process's connection, as far as SQLite can tell."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    yield conn
    conn.close()


async def ticks_while(work: asyncio.Task[object]) -> int:
    """How many times a 10 ms timer fired on the loop while ``work`` ran."""
    ticks = 0
    while not work.done():
        await asyncio.sleep(0.01)
        ticks += 1
    await work
    return ticks


async def insert(engine: AsyncEngine, key: str, value: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("INSERT INTO t VALUES (:k, :v)"), {"k": key, "v": value})


async def values(engine: AsyncEngine) -> list[tuple[str, int]]:
    """Read as the service's readers do (a deferred transaction, which takes no lock)."""
    async with engine.execution_options(**{READONLY_OPTION: True}).connect() as conn:
        return [tuple(row) for row in await conn.execute(text("SELECT k, v FROM t ORDER BY k"))]


async def test_statements_and_their_results(engine: AsyncEngine) -> None:
    await insert(engine, "a", 1)
    await insert(engine, "b", 2)
    assert await values(engine) == [("a", 1), ("b", 2)]
    with pytest.raises(IntegrityError):
        await insert(engine, "a", 3)
    assert await values(engine) == [("a", 1), ("b", 2)]  # the failed one left nothing


async def turns_during_200_inserts(engine: AsyncEngine) -> int:
    """How many turns another task got while a transaction inserted 200 rows."""
    running = True
    turns = 0

    async def other_task() -> None:  # a webhook delivery or a click, say
        nonlocal turns
        while running:
            await asyncio.sleep(0)
            turns += 1

    other = asyncio.create_task(other_task())
    await asyncio.sleep(0)
    async with engine.begin() as conn:
        before = turns
        for n in range(200):
            await conn.execute(text("INSERT INTO t VALUES (:k, :v)"), {"k": f"k{n}", "v": n})
        during = turns - before
    running = False
    await other
    return during


async def test_the_loop_gets_a_turn_once_statements_have_run_for_a_while(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    ticks = iter(range(10**6))
    # Each reading of the clock finds twice TURN_EVERY gone: a turn after every statement.
    monkeypatch.setattr(sqlite_inline, "clock", lambda: next(ticks) * 2 * sqlite_inline.TURN_EVERY)
    assert await turns_during_200_inserts(engine) >= 200


async def test_a_quick_transaction_runs_its_statements_back_to_back(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No time passes: the transaction, and the write lock, end before anyone else runs.
    monkeypatch.setattr(sqlite_inline, "clock", lambda: 0.0)
    assert await turns_during_200_inserts(engine) == 0


LONG_QUERY = (
    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 3000000) "
    "SELECT count(*) FROM n"
)


async def test_a_long_read_runs_off_the_event_loop(engine: AsyncEngine) -> None:
    async def tally() -> object:
        readonly = engine.execution_options(**{READONLY_OPTION: True})
        async with readonly.connect() as conn:
            return (await conn.execute(text(LONG_QUERY))).scalar()

    started = time.monotonic()
    reading = asyncio.create_task(tally())
    ticks = await ticks_while(reading)

    assert reading.result() == 3_000_000
    took = time.monotonic() - started
    assert took >= 0.1, "the query is too quick on this machine to show anything"
    assert ticks >= took / 0.01 / 3  # the loop ran on, not only after the query


async def test_a_commit_waits_for_the_disk_off_the_event_loop(engine: AsyncEngine) -> None:
    threads: dict[str, set[int]] = {}
    async with engine.begin() as conn:
        raw = (await conn.get_raw_connection()).driver_connection
        assert isinstance(raw, sqlite_inline.Connection)
        raw._conn.set_trace_callback(
            lambda sql: threads.setdefault(sql.split()[0], set()).add(threading.get_ident())
        )
        await conn.execute(text("INSERT INTO t VALUES ('a', 1)"))
    raw._conn.set_trace_callback(None)

    loop_thread = threading.get_ident()
    assert threads["INSERT"] == {loop_thread}
    assert loop_thread not in threads["COMMIT"]
    assert await values(engine) == [("a", 1)]


async def test_a_long_read_of_the_reader_engine_does_not_hold_up_writes(
    engine: AsyncEngine,
) -> None:
    readers = reader_engine(engine)
    assert readers is not None
    try:
        began = asyncio.Event()

        async def tally() -> object:
            async with readers.execution_options(**{READONLY_OPTION: True}).connect() as conn:
                began.set()
                return (await conn.execute(text(LONG_QUERY))).scalar()

        reading = asyncio.create_task(tally())
        await began.wait()
        await asyncio.sleep(0.02)  # the query is under way
        await insert(engine, "a", 1)  # the one connection of the writers is free

        assert not reading.done(), "the query is too quick on this machine to show anything"
        assert await reading == 3_000_000
        assert await values(engine) == [("a", 1)]
    finally:
        await readers.dispose()


async def test_a_read_given_up_on_leaves_the_connection_usable(engine: AsyncEngine) -> None:
    await insert(engine, "a", 1)
    readonly = engine.execution_options(**{READONLY_OPTION: True})

    async def tally() -> object:
        async with readonly.connect() as conn:
            return (await conn.execute(text(LONG_QUERY))).scalar()

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.02):
            await tally()
    # The one pooled connection was handed back only once the query had ended.
    await insert(engine, "b", 2)
    assert await values(engine) == [("a", 1), ("b", 2)]


async def test_a_write_waits_for_another_process_s_lock_without_blocking_the_loop(
    engine: AsyncEngine, other_writer: sqlite3.Connection
) -> None:
    await insert(engine, "a", 1)
    other_writer.execute("BEGIN IMMEDIATE")
    other_writer.execute("INSERT INTO t VALUES ('x', 9)")

    async def release_later() -> None:
        await asyncio.sleep(0.3)
        other_writer.execute("COMMIT")

    releasing = asyncio.create_task(release_later())
    started = time.monotonic()
    writing = asyncio.create_task(insert(engine, "b", 2))
    ticks = await ticks_while(writing)
    await releasing

    assert time.monotonic() - started >= 0.3  # it did wait for the lock
    assert ticks >= 10  # and the loop kept running meanwhile
    assert await values(engine) == [("a", 1), ("b", 2), ("x", 9)]


async def write_on_thread(engine: AsyncEngine, rows: list[tuple[str, int]]) -> None:
    """Insert rows in a transaction run by ``Connection.on_thread``."""

    def work(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO t VALUES (?, ?)", rows)
        conn.commit()

    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert isinstance(driver, sqlite_inline.Connection)
        await driver.on_thread(work)


async def test_work_on_a_thread_waits_for_another_process_s_lock_off_the_loop(
    engine: AsyncEngine, other_writer: sqlite3.Connection
) -> None:
    other_writer.execute("BEGIN IMMEDIATE")

    async def release_later() -> None:
        await asyncio.sleep(0.3)
        other_writer.execute("COMMIT")

    releasing = asyncio.create_task(release_later())
    writing = asyncio.create_task(write_on_thread(engine, [("a", 1)]))
    ticks = await ticks_while(writing)
    await releasing
    assert ticks >= 10
    assert await values(engine) == [("a", 1)]
    await insert(engine, "b", 2)  # and the connection is back to not waiting on the loop
    assert await values(engine) == [("a", 1), ("b", 2)]


async def test_a_lock_held_past_the_busy_timeout_is_an_error(
    path: Path, other_writer: sqlite3.Connection
) -> None:
    engine = await make_engine(path, busy_timeout_ms=200)
    try:
        other_writer.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        with pytest.raises(OperationalError, match="database is locked"):
            await insert(engine, "a", 1)
        assert time.monotonic() - started >= 0.2
        other_writer.execute("ROLLBACK")
        # The connection is fine afterwards, and back to not waiting on the loop.
        await insert(engine, "a", 1)
        assert await values(engine) == [("a", 1)]
    finally:
        await engine.dispose()


async def test_readers_are_not_blocked_by_a_writer(
    engine: AsyncEngine, other_writer: sqlite3.Connection
) -> None:
    await insert(engine, "a", 1)
    other_writer.execute("BEGIN IMMEDIATE")
    other_writer.execute("INSERT INTO t VALUES ('x', 9)")
    try:
        assert await values(engine) == [("a", 1)]  # WAL: the committed state, at once
    finally:
        other_writer.execute("ROLLBACK")


async def test_a_read_only_uri(path: Path, engine: AsyncEngine) -> None:
    await insert(engine, "a", 1)
    reader = create_engine(f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true")
    try:
        assert await values(reader) == [("a", 1)]
        with pytest.raises(OperationalError, match="readonly"):
            await insert(reader, "b", 2)
    finally:
        await reader.dispose()


KEYS = itertools.count()


async def write_pages(engine: AsyncEngine, pages: int) -> None:
    """Commit about ``pages`` pages of 4 KiB, 100 at a time."""
    for _ in range(pages // 100):
        async with engine.begin() as conn:
            for _ in range(25):
                await conn.execute(
                    text("INSERT INTO t VALUES (:k, zeroblob(16000))"), {"k": str(next(KEYS))}
                )


def wal_pages(path: Path) -> tuple[int, int]:
    """(pages in the write-ahead log, pages of it copied into the database file)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        _, pages, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return pages, copied
    finally:
        conn.close()


async def test_by_default_commits_checkpoint_the_write_ahead_log(
    path: Path, engine: AsyncEngine
) -> None:
    await write_pages(engine, 2500)
    pages, _ = wal_pages(path)
    assert pages < 2000  # restarted by a commit's checkpoint on the way


async def test_a_background_checkpointer_does_it_instead_of_commits(path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{path}", checkpoint_wal=False)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (k TEXT PRIMARY KEY, v BLOB)"))
        await write_pages(engine, 2500)
        assert wal_length(path) >= 2500  # no commit copied anything back

        checkpointer = WalCheckpointer(engine, every=0.01)
        stop = asyncio.Event()
        running = asyncio.create_task(checkpointer.run(stop))

        # Two passes at least, however busy the machine (a fixed sleep was not always enough).
        async def two_passes() -> bool:
            return checkpointer.passes >= 2

        await eventually(two_passes, within=10)
        stop.set()
        await running

        assert checkpointer.passes >= 2
        pages, copied = wal_pages(path)
        assert copied == pages >= 2500
        await write_pages(engine, 100)  # the next writer starts the log over
        assert wal_pages(path)[0] < 200
    finally:
        await engine.dispose()


def wal_length(path: Path) -> int:
    """Pages in the write-ahead log file (header 32 bytes, each frame 24 + a 4 KiB page)."""
    wal = path.with_name(path.name + "-wal")
    return (wal.stat().st_size - 32) // (24 + 4096)


async def test_a_checkpointer_that_cannot_open_the_file_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'gone' / 'x.db'}")
    (tmp_path / "gone").rmdir()  # the directory the engine made is gone again
    checkpointer = WalCheckpointer(engine, every=0.01)
    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="reauthbot.storage"):
        running = asyncio.create_task(checkpointer.run(stop))
        await asyncio.sleep(0.1)
        stop.set()
        await running
    await engine.dispose()

    assert checkpointer.passes == 0
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "cannot open the SQLite database to checkpoint it"
    ]


def test_a_uri_names_no_directory_to_create(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A `file:` URI is not a path: its text must not become directories in the working one.
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "db" / "x.db"
    create_engine(f"sqlite+aiosqlite:///{path}")  # a path: its directory is made
    assert path.parent.is_dir()
    create_engine(f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true")  # nothing connects yet
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]
