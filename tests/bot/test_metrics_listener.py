"""/metrics and /readyz on a listener of their own (REAUTHBOT_METRICS_ADDR), and what a scrape
costs: no query reads whole tables, whatever their size."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import event, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.runtime import RUNTIME
from bot.settings import load_settings
from storage.models import Account, Case, InboxDelivery, OutboxMessage
from tests.appclient import start_app

NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
# Processed rows that a scrape must not read, and the few waiting ones it counts.
PROCESSED = 400
WAITING = 3
QUEUE_TABLES = ("inbox", "outbox", "cases")


@pytest.fixture
async def app(engine: AsyncEngine) -> AsyncIterator[TestClient]:
    settings = load_settings(_env_file=None, metrics_addr="127.0.0.1:0")
    client = await start_app(settings, engine=engine, migrate=False, scheduled_jobs=False)
    yield client
    await client.close()


def listener_url(app: TestClient) -> str:
    address = app.app[RUNTIME].metrics_address
    assert address is not None
    return f"http://{address[0]}:{address[1]}"


async def test_metrics_and_readiness_move_to_their_own_listener(app: TestClient) -> None:
    base = listener_url(app)
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        metrics = await http.get("/metrics")
        assert metrics.status_code == 200, metrics.text
        assert "reauthbot_database_up 1.0" in metrics.text
        assert (await http.get("/readyz")).json()["status"] == "ready"
        assert (await http.get("/healthz")).status_code == 200
    # The public port keeps liveness only.
    assert (await app.get("/metrics")).status == 404
    assert (await app.get("/readyz")).status == 404
    assert (await app.get("/healthz")).status == 200
    async with httpx.AsyncClient(timeout=5) as http:
        metrics_text = (await http.get(f"{base}/metrics")).text
    assert 'reauthbot_http_requests_total{route="/metrics",status="200"}' in metrics_text

    await app.close()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(timeout=5) as http:
            await http.get(f"{base}/healthz")


async def test_without_the_setting_the_public_port_serves_them(engine: AsyncEngine) -> None:
    settings = load_settings(_env_file=None)
    client = await start_app(settings, engine=engine, migrate=False, scheduled_jobs=False)
    try:
        assert (await client.get("/metrics")).status == 200
        assert (await client.get("/readyz")).status == 200
        assert client.app[RUNTIME].metrics_address is None
    finally:
        await client.close()


async def fill(engine: AsyncEngine) -> None:
    """Many processed rows and resolved cases, and a few waiting ones."""
    total = PROCESSED + WAITING
    async with engine.begin() as conn:
        await conn.execute(
            insert(InboxDelivery),
            [
                {
                    "dedupe_key": f"k-{n}",
                    "source": "poll",
                    "received_at": NOW,
                    "body": "{}",
                    "status": "done" if n < PROCESSED else "pending",
                    "attempts": 0,
                }
                for n in range(total)
            ],
        )
        await conn.execute(
            insert(OutboxMessage),
            [
                {
                    "channel": "C1",
                    "kind": "post",
                    "payload": {},
                    "status": "sent" if n < PROCESSED else "pending",
                    "attempts": 0,
                    "created_at": NOW,
                    "available_at": NOW,
                }
                for n in range(total)
            ],
        )
        await conn.execute(
            insert(Account),
            [
                {
                    "id": f"a-{n}",
                    "api_version": "v3",
                    "first_seen_at": NOW,
                    "updated_at": NOW,
                    "details": {},
                }
                for n in range(total)
            ],
        )
        await conn.execute(
            insert(Case),
            [
                {
                    "account_id": f"a-{n}",
                    "kind": "reauth",
                    "status": "resolved" if n < PROCESSED else "open",
                    "opened_at": NOW,
                    "updated_at": NOW,
                    "diagnosis": [],
                }
                for n in range(total)
            ],
        )
        if engine.dialect.name == "postgresql":
            await conn.execute(text("ANALYZE inbox, outbox, cases"))


@contextmanager
def statements(engine: AsyncEngine) -> Iterator[list[tuple[str, Any]]]:
    """Record every statement the engine sends, with its parameters."""
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        seen.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def rows_read(engine: AsyncEngine, statement: str, parameters: Any) -> dict[str, int]:
    """The most rows any step of the statement's plan reads from each queue table.

    On PostgreSQL, the actual rows of each scan (sequential scans forbidden, so the planner
    shows what the indexes allow); on SQLite, whose plans carry no row counts, a full scan of a
    table counts as reading all of it.
    """
    found: dict[str, int] = {}
    async with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            await conn.exec_driver_sql("SET enable_seqscan = off")
            explain = "EXPLAIN (ANALYZE, FORMAT JSON) " + statement
            plan = (await conn.exec_driver_sql(explain, parameters)).scalar_one()
            plan = json.loads(plan) if isinstance(plan, str) else plan

            def walk(node: dict[str, Any]) -> None:
                table = node.get("Relation Name")
                if table in QUEUE_TABLES:
                    rows = int(node["Actual Rows"]) + int(node.get("Rows Removed by Filter", 0))
                    found[table] = max(found.get(table, 0), rows)
                for child in node.get("Plans", []):
                    walk(child)

            walk(plan[0]["Plan"])
            await conn.rollback()
        else:
            plan = (await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)).all()
            for row in plan:
                detail = str(row[-1])
                for table in QUEUE_TABLES:
                    if detail.startswith(f"SCAN {table}"):
                        found[table] = PROCESSED + WAITING
                    elif detail.startswith(f"SEARCH {table}"):
                        found.setdefault(table, 0)
    return found


async def test_a_scrape_reads_the_waiting_rows_not_whole_tables(
    app: TestClient, engine: AsyncEngine
) -> None:
    await fill(engine)
    with statements(engine) as seen:
        async with httpx.AsyncClient(base_url=listener_url(app), timeout=5) as http:
            metrics = (await http.get("/metrics")).text
            assert (await http.get("/readyz")).status_code == 200
    assert 'reauthbot_inbox_rows{status="pending"} 3.0' in metrics
    assert 'reauthbot_outbox_rows{status="pending"} 3.0' in metrics
    assert 'reauthbot_open_cases{kind="reauth"} 3.0' in metrics
    for table in QUEUE_TABLES:
        assert f'reauthbot_table_rows_estimate{{table="{table}"}} 403.0' in metrics
    # The waiting rows were stored at NOW, before the scrape: both ages are counted from it.
    assert "reauthbot_oldest_pending_delivery_age_seconds 0.0" not in metrics
    assert "reauthbot_oldest_pending_delivery_age_seconds " in metrics
    assert 'reauthbot_oldest_pending_message_age_seconds{channel="slack"} 0.0' not in metrics
    assert 'reauthbot_oldest_pending_message_age_seconds{channel="pagerduty"} 0.0' in metrics

    touched = set()
    for statement, parameters in seen:
        if not any(table in statement for table in QUEUE_TABLES):
            continue
        for table, rows in (await rows_read(engine, statement, parameters)).items():
            touched.add(table)
            assert rows <= WAITING, (table, rows, statement)
    assert touched == set(QUEUE_TABLES)
