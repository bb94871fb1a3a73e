from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.engine import create_engine, session_factory
from tests import databases
from tests.fakes.nylas import FakeNylas
from workflows.nylas import NylasClient

NYLAS_CLIENT_ID = "app-client-id"
NYLAS_CLIENT_SECRET = "app-client-secret-0f3c"
NYLAS_API_KEY = "nyk_v0_test_key_51e2"
WEBHOOK_SECRET = "webhook-secret-9d41"

BACKENDS = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=pytest.mark.skipif(not databases.PG_URL, reason="TEST_DATABASE_URL is not set"),
    ),
]


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("CI") and not databases.PG_URL:
        raise pytest.UsageError("CI must run the PostgreSQL tests: set TEST_DATABASE_URL")
    if databases.PG_URL:
        databases.check_postgres_reachable()


@pytest.fixture(scope="session", params=BACKENDS)
def db_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def migrated_url(db_backend: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One migrated database per backend for the whole session."""
    url = databases.new_database_url(db_backend, tmp_path_factory.mktemp("db"))
    databases.migrate(url)
    yield url
    databases.drop_database(url)


@pytest.fixture
def blank_url(db_backend: str, tmp_path: Path) -> Iterator[str]:
    """A database that exists but was never migrated."""
    url = databases.new_database_url(db_backend, tmp_path)
    yield url
    databases.drop_database(url)


@pytest.fixture
async def engine(migrated_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(migrated_url)
    await databases.clear(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return session_factory(engine)


class FrozenClock:
    """A clock that only moves when the test moves it."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 11, 2, 9, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
async def nylas_fake() -> AsyncIterator[FakeNylas]:
    async with FakeNylas(
        client_id=NYLAS_CLIENT_ID, client_secret=NYLAS_CLIENT_SECRET, api_key=NYLAS_API_KEY
    ) as fake:
        yield fake


@dataclass
class Nylas:
    """The fake Nylas and a v2 and a v3 client pointed at it (no retries)."""

    fake: FakeNylas
    v2: NylasClient
    v3: NylasClient


@pytest.fixture
async def nylas(nylas_fake: FakeNylas) -> AsyncIterator[Nylas]:
    async with httpx.AsyncClient(timeout=5) as http:
        common: dict[str, Any] = {"base_url": nylas_fake.url, "max_retries": 0}
        v2 = NylasClient(
            http,
            api_version="v2",
            client_id=NYLAS_CLIENT_ID,
            client_secret=NYLAS_CLIENT_SECRET,
            **common,
        )
        v3 = NylasClient(http, api_version="v3", api_key=NYLAS_API_KEY, **common)
        yield Nylas(nylas_fake, v2, v3)
