"""PostgreSQL goes away under a running service and comes back.

While it is away, a webhook delivery is refused with 503 and Retry-After (Nylas retries it)
and nothing half-stored is left behind; ``/readyz`` says not ready while ``/healthz`` still
answers. When it is back, the same process recovers by itself: no restart, no lost delivery.
The outage is a TCP proxy between the service and the server, cut and restored by the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select

from bot.settings import load_settings
from storage import cases
from storage.engine import create_engine, session_factory
from storage.models import InboxDelivery
from tests import databases
from tests.appclient import start_app
from tests.builders import signed_expiry
from tests.conftest import WEBHOOK_SECRET
from tests.fakes.tcp_proxy import TcpProxy
from tests.waiting import eventually

pytestmark = pytest.mark.skipif(not databases.PG_URL, reason="TEST_DATABASE_URL is not set")


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    """A fresh PostgreSQL database; the service migrates it at start."""
    url = databases.new_database_url("postgresql", tmp_path)
    yield url
    databases.drop_database(url)


@pytest.fixture
async def direct(pg_url: str) -> AsyncIterator[AsyncEngine]:
    """The test's own way to the database, around the proxy."""
    engine = create_engine(pg_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def proxy(pg_url: str) -> AsyncIterator[TcpProxy]:
    server = make_url(pg_url)
    async with TcpProxy(server.host or "127.0.0.1", server.port or 5432) as proxy:
        yield proxy


@pytest.fixture
async def app(pg_url: str, proxy: TcpProxy) -> AsyncIterator[TestClient]:
    """The service, built as ``serve`` builds it, on a database URL that goes through the proxy."""
    through = make_url(pg_url).set(host=proxy.host, port=proxy.port)
    settings = load_settings(
        _env_file=None,
        database_url=through.render_as_string(hide_password=False),
        nylas_webhook_secret=WEBHOOK_SECRET,
    )
    client = await start_app(settings, scheduled_jobs=False)
    yield client
    await client.close()


def delivery(n: int) -> tuple[bytes, dict[str, str]]:
    return signed_expiry(n, WEBHOOK_SECRET, domain=f"example{n}.com")


async def send(app: TestClient, n: int) -> tuple[int, dict[str, str], dict[str, object]]:
    raw, headers = delivery(n)
    response = await app.post("/nylas/webhook", data=raw, headers=headers)
    return response.status, dict(response.headers), await response.json()


async def status_of(app: TestClient, path: str) -> int:
    return (await app.get(path)).status


async def stored_keys(engine: AsyncEngine) -> list[str]:
    async with session_factory(engine)() as session:
        rows = await session.exec(select(InboxDelivery).order_by(col(InboxDelivery.id)))
        return [row.dedupe_key for row in rows]


async def wait_case(engine: AsyncEngine, account_id: str) -> None:
    async def opened() -> bool:
        async with session_factory(engine)() as session:
            return await cases.get_open_case(session, account_id=account_id) is not None

    await eventually(opened, within=10)


async def ready(app: TestClient) -> None:
    async def answers() -> bool:
        return await status_of(app, "/readyz") == 200

    await eventually(answers, within=15)


async def assert_refused_while_down(app: TestClient, engine: AsyncEngine, n: int) -> None:
    status, headers, body = await send(app, n)
    assert status == 503, body
    assert headers.get("Retry-After") == "30"
    assert await status_of(app, "/readyz") == 503
    assert await status_of(app, "/healthz") == 200
    metrics = await (await app.get("/metrics")).text()
    assert "reauthbot_database_up 0.0" in metrics
    assert f"v3:n-{n}" not in await stored_keys(engine)


async def assert_recovers(app: TestClient, engine: AsyncEngine, refused: int) -> None:
    await ready(app)
    # Nylas retries the refused delivery; a new one arrives too. Both are stored and applied.
    for n in (refused, refused + 1):
        status, _, body = await send(app, n)
        assert (status, body["stored"]) == (200, 1)
        await wait_case(engine, f"g-{n}")
    assert await stored_keys(engine) == ["v3:n-1", f"v3:n-{refused}", f"v3:n-{refused + 1}"]


async def test_a_refused_connection_is_a_503_and_the_service_recovers_by_itself(
    app: TestClient, proxy: TcpProxy, direct: AsyncEngine
) -> None:
    await ready(app)
    assert (await send(app, 1))[0] == 200
    await wait_case(direct, "g-1")  # the pool now holds connections that are about to die

    proxy.cut()
    await assert_refused_while_down(app, direct, 2)

    proxy.restore()
    await assert_recovers(app, direct, 2)


async def test_a_database_that_stops_answering_is_a_503_in_time(
    app: TestClient, proxy: TcpProxy, direct: AsyncEngine
) -> None:
    await ready(app)
    assert (await send(app, 1))[0] == 200
    await wait_case(direct, "g-1")

    proxy.cut(blackhole=True)  # connections hang instead of failing
    await assert_refused_while_down(app, direct, 2)

    proxy.restore()
    await assert_recovers(app, direct, 2)


async def test_a_blip_while_idle_costs_no_delivery(
    app: TestClient, proxy: TcpProxy, direct: AsyncEngine
) -> None:
    await ready(app)
    assert (await send(app, 1))[0] == 200
    await wait_case(direct, "g-1")

    # A failover or restart between two deliveries: every pooled connection is dead, the
    # server is back. The next delivery must not pay for it with a 503.
    proxy.cut()
    proxy.restore()
    status, _, body = await send(app, 2)
    assert (status, body["stored"]) == (200, 1)
    await wait_case(direct, "g-2")
