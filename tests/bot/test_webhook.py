"""POST /nylas/webhook over real HTTP: every rejection changes nothing, every acceptance is
stored before the answer, and stored deliveries become cases."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.settings import load_settings
from storage import cases
from storage.engine import create_engine
from storage.models import Case, CaseEvent, InboxDelivery
from tests.appclient import start_app
from tests.conftest import NYLAS_API_KEY, NYLAS_CLIENT_ID, NYLAS_CLIENT_SECRET, WEBHOOK_SECRET
from tests.fakes.nylas import FakeNylas
from tests.waiting import eventually
from workflows.nylas import NylasClient, samples
from workflows.nylas.webhooks import MAX_DELTAS, sign

Sessions = async_sessionmaker[AsyncSession]
NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
MakeApp = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def make_app(nylas_fake: FakeNylas, engine: AsyncEngine) -> AsyncIterator[MakeApp]:
    """Start apps on the test database (or on ``database_url``); all closed before it is."""
    clients: list[TestClient] = []
    engines: list[AsyncEngine] = []

    async def make(
        *,
        version: str = "v3",
        database_url: str | None = None,
        nylas: NylasClient | None = None,
        scheduled_jobs: bool = False,
        **overrides: Any,
    ) -> TestClient:
        settings = load_settings(
            _env_file=None,
            nylas_api_version=version,
            nylas_api_url=nylas_fake.url,
            nylas_api_key=NYLAS_API_KEY,
            nylas_client_id=NYLAS_CLIENT_ID,
            nylas_client_secret=NYLAS_CLIENT_SECRET,
            nylas_webhook_secret=WEBHOOK_SECRET,
            **overrides,
        )
        use = engine
        if database_url is not None:
            use = create_engine(database_url)
            engines.append(use)
        client = await start_app(
            settings, engine=use, nylas=nylas, scheduled_jobs=scheduled_jobs, migrate=False
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
    for extra in engines:
        await extra.dispose()


@pytest.fixture
async def app(make_app: MakeApp) -> TestClient:
    return await make_app()


def encode(payload: Any) -> bytes:
    return json.dumps(payload).encode()


async def post(
    client: TestClient,
    raw: bytes,
    *,
    secret: str | None = WEBHOOK_SECRET,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    sent = {"Content-Type": "application/json", **(headers or {})}
    if secret is not None:
        sent["X-Nylas-Signature"] = sign(secret, raw)
    # aiohttp wants large bodies as a stream, not bytes held in memory.
    data = io.BytesIO(raw) if len(raw) > 64 * 1024 else raw
    response = await client.post("/nylas/webhook", data=data, headers=sent)
    return response.status, await response.json()


async def inbox_rows(sessions: Sessions) -> list[InboxDelivery]:
    async with sessions() as session:
        return list(
            (await session.exec(select(InboxDelivery).order_by(col(InboxDelivery.id)))).all()
        )


async def open_cases(sessions: Sessions) -> list[Case]:
    async with sessions() as session:
        return [case for case, _ in await cases.list_open_cases(session)]


def expired(grant_id: str = "g-1", email: str = "ana@example.com", **kw: Any) -> dict[str, Any]:
    return samples.v3_notification("grant.expired", grant_id=grant_id, email=email, at=NOW, **kw)


# --- the challenge ----------------------------------------------------------------------------


async def test_challenge_is_echoed_as_plain_text(app: TestClient) -> None:
    response = await app.get("/nylas/webhook", params={"challenge": "a1b2-c3 d4+é"})
    assert response.status == 200
    assert response.content_type == "text/plain"
    assert await response.text() == "a1b2-c3 d4+é"
    assert (await app.get("/nylas/webhook")).status == 400


# --- accepted deliveries ----------------------------------------------------------------------


async def test_v3_expiry_opens_a_case(app: TestClient, sessions: Sessions) -> None:
    status, body = await post(app, encode(expired()))
    assert (status, body) == (200, {"status": "accepted", "stored": 1, "duplicates": 0})

    async def opened() -> bool:
        return len(await open_cases(sessions)) == 1

    await eventually(opened)
    async with sessions() as session:
        account = await cases.get_account(session, account_id="g-1")
    assert account is not None and (account.email, account.provider) == (
        "ana@example.com",
        "google",
    )


async def test_repeated_deliveries_are_stored_once(make_app: MakeApp, sessions: Sessions) -> None:
    app = await make_app(nylas_accept_v2_webhooks=True)
    v3 = encode(expired(notification_id="n-1"))
    v2 = encode(samples.v2_delivery("account.invalid", account_id="a-1", at=NOW))
    assert (await post(app, v3))[1]["stored"] == 1
    assert (await post(app, v3))[1] == {"status": "accepted", "stored": 0, "duplicates": 1}
    assert (await post(app, v2, secret=NYLAS_CLIENT_SECRET))[1]["stored"] == 1
    assert (await post(app, v2, secret=NYLAS_CLIENT_SECRET))[1]["duplicates"] == 1
    assert [row.dedupe_key for row in await inbox_rows(sessions)] == [
        "v3:n-1",
        f"v2:a-1:account.invalid:{int(NOW.timestamp())}",
    ]


async def test_v2_delivery_with_several_deltas_stores_each(
    make_app: MakeApp, sessions: Sessions
) -> None:
    app = await make_app(version="v2")
    deltas = [
        samples.v2_delivery(trigger, account_id=f"a-{i}", at=NOW)["deltas"][0]
        for i, trigger in enumerate(["account.invalid", "account.stopped"])
    ]
    calendar = {"date": 1, "object": "event", "type": "event.created", "object_data": {"id": "e"}}
    status, body = await post(
        app, encode({"deltas": [*deltas, calendar]}), secret=NYLAS_CLIENT_SECRET
    )
    assert (status, body["stored"]) == (200, 2)


async def test_gzip_delivery_is_verified_over_the_compressed_bytes(
    app: TestClient, sessions: Sessions
) -> None:
    raw = gzip.compress(encode(expired()))
    status, body = await post(app, raw, headers={"Content-Encoding": "gzip"})
    assert (status, body["stored"]) == (200, 1)


@pytest.mark.parametrize(
    "payload",
    [
        {
            "specversion": "1.0",
            "type": "message.created",
            "id": "n",
            "time": 1,
            "data": {"object": {"id": "m1"}},
        },
        {
            "deltas": [
                {
                    "date": 1,
                    "object": "message",
                    "type": "message.opened",
                    "object_data": {"id": "m"},
                }
            ]
        },
    ],
)
async def test_triggers_not_acted_on_get_200_and_are_not_stored(
    make_app: MakeApp, sessions: Sessions, payload: dict[str, Any]
) -> None:
    v2 = "deltas" in payload
    app = await make_app(version="v2" if v2 else "v3")
    secret = NYLAS_CLIENT_SECRET if v2 else WEBHOOK_SECRET
    assert await post(app, encode(payload), secret=secret) == (
        200,
        {"status": "ignored", "message": "trigger not acted on"},
    )
    assert await inbox_rows(sessions) == []


# --- signatures ---------------------------------------------------------------------------------


async def test_signature_is_over_the_raw_bytes_with_non_ascii_content(
    app: TestClient, sessions: Sessions
) -> None:
    payload = expired(email="jürgen.müller@bücher.example")
    # Exactly as sent: escaped-free UTF-8, odd spacing. A signature over a re-serialization differs.
    raw = json.dumps(payload, ensure_ascii=False, indent=3).encode()
    reserialized = json.dumps(json.loads(raw)).encode()
    assert sign(WEBHOOK_SECRET, raw) != sign(WEBHOOK_SECRET, reserialized)
    status, _ = await post(
        app, raw, headers={"X-Nylas-Signature": sign(WEBHOOK_SECRET, reserialized)}, secret=None
    )
    assert status == 401
    assert (await post(app, raw))[0] == 200
    entry = (await inbox_rows(sessions))[0]
    assert entry.body == raw.decode()  # stored as it came


@pytest.mark.parametrize(
    ("headers", "secret", "message"),
    [
        ({}, None, "missing X-Nylas-Signature header"),
        ({}, "not-the-secret", "does not match"),
        ({"X-Nylas-Signature": "zz" * 32}, None, "does not match"),
        ({}, NYLAS_API_KEY, "does not match"),  # the API key is not a signing key
    ],
)
async def test_bad_or_missing_signatures_are_401(
    app: TestClient, sessions: Sessions, headers: dict[str, str], secret: str | None, message: str
) -> None:
    status, body = await post(app, encode(expired()), secret=secret, headers=headers)
    assert status == 401 and message in body["message"]
    assert await inbox_rows(sessions) == []


async def test_a_v2_body_signed_with_the_v3_secret_is_read_as_v3_and_rejected(
    app: TestClient, sessions: Sessions
) -> None:
    raw = encode(samples.v2_delivery("account.invalid", account_id="a-1", at=NOW))
    status, body = await post(app, raw, secret=WEBHOOK_SECRET)
    assert status == 400 and "id must be" in body["message"]
    assert await inbox_rows(sessions) == []


# --- v2 deliveries to a v3 service -------------------------------------------------------------


async def audit_actions(sessions: Sessions, account_id: str) -> list[tuple[str, str]]:
    async with sessions() as session:
        rows = (
            await session.exec(
                select(CaseEvent)
                .where(CaseEvent.account_id == account_id)
                .order_by(col(CaseEvent.id))
            )
        ).all()
    return [(row.action, str(row.details.get("reason", ""))) for row in rows]


async def expired_grant_with_a_case(
    app: TestClient, sessions: Sessions, *, cases_open: int = 1
) -> None:
    assert (await post(app, encode(expired())))[0] == 200

    async def opened() -> bool:
        return len(await open_cases(sessions)) == cases_open

    await eventually(opened)


async def test_a_v3_service_refuses_v2_deliveries_by_default(
    app: TestClient, sessions: Sessions, nylas_fake: FakeNylas
) -> None:
    await expired_grant_with_a_case(app, sessions)
    # The client secret signs it, but in v3 mode it must not bring the grant back to running.
    running = encode(samples.v2_delivery("account.running", account_id="g-1", at=NOW))
    status, body = await post(app, running, secret=NYLAS_CLIENT_SECRET)
    assert status == 403 and "NYLAS_ACCEPT_V2_WEBHOOKS" in body["message"]
    assert [row.source for row in await inbox_rows(sessions)] == ["nylas-v3"]
    async with sessions() as session:
        account = await cases.get_account(session, account_id="g-1")
    assert account is not None and account.sync_state == "invalid"
    assert len(await open_cases(sessions)) == 1
    assert nylas_fake.calls == []


async def test_v2_deliveries_taken_while_migrating_never_change_a_v3_grant(
    make_app: MakeApp, sessions: Sessions, nylas_fake: FakeNylas
) -> None:
    app = await make_app(nylas_accept_v2_webhooks=True)
    await expired_grant_with_a_case(app, sessions)
    later = NOW.replace(minute=45)
    deltas = [
        samples.v2_delivery("account.running", account_id="g-1", at=later)["deltas"][0],
        samples.v2_delivery("account.invalid", account_id="a-9", at=later)["deltas"][0],
    ]
    assert (await post(app, encode({"deltas": deltas}), secret=NYLAS_CLIENT_SECRET))[1][
        "stored"
    ] == 2

    async def processed() -> bool:
        return [r.status for r in await inbox_rows(sessions)] == ["done"] * 3

    await eventually(processed)
    async with sessions() as session:
        grant = await cases.get_account(session, account_id="g-1")
        unknown = await cases.get_account(session, account_id="a-9")
    assert grant is not None and (grant.api_version, grant.sync_state) == ("v3", "invalid")
    assert unknown is None  # a v2 account is not even created without re-reading it
    assert [c.account_id for c in await open_cases(sessions)] == ["g-1"]
    for account_id in ("g-1", "a-9"):
        action, reason = (await audit_actions(sessions, account_id))[-1]
        assert action == "event_not_applied" and "re-reading the account" in reason
    assert nylas_fake.calls_to("GET", r"/a/") == []


async def test_a_v2_service_keeps_v2_accounts_and_v3_grants_apart(
    make_app: MakeApp, sessions: Sessions, nylas_fake: FakeNylas
) -> None:
    nylas_fake.add_v2_account(id="a-1", email="bo@example.org", sync_state="stopped")
    app = await make_app(version="v2")
    stopped = encode(samples.v2_delivery("account.stopped", account_id="a-1", at=NOW))
    await post(app, stopped, secret=NYLAS_CLIENT_SECRET)

    async def opened() -> bool:
        return len(await open_cases(sessions)) == 1

    await eventually(opened)
    deleted = samples.v3_notification(
        "grant.deleted", grant_id="a-1", email="bo@example.org", at=NOW.replace(minute=45)
    )
    assert (await post(app, encode(deleted)))[0] == 200

    async def processed() -> bool:
        return [r.status for r in await inbox_rows(sessions)] == ["done"] * 2

    await eventually(processed)
    assert [c.account_id for c in await open_cases(sessions)] == ["a-1"]
    assert ("event_not_applied", "account a-1 is a v2 account; a v3 event never changes it") in (
        await audit_actions(sessions, "a-1")
    )

    # The other way round: the v2 API does not know grant g-1 (404 reads as "deleted").
    await expired_grant_with_a_case(app, sessions, cases_open=2)
    running = samples.v2_delivery("account.running", account_id="g-1", at=NOW.replace(minute=50))
    await post(app, encode(running), secret=NYLAS_CLIENT_SECRET)

    async def all_processed() -> bool:
        return [r.status for r in await inbox_rows(sessions)] == ["done"] * 4

    await eventually(all_processed)
    assert sorted(c.account_id for c in await open_cases(sessions)) == ["a-1", "g-1"]
    assert ("event_not_applied", "account g-1 is a v3 account; a v2 event never changes it") in (
        await audit_actions(sessions, "g-1")
    )


async def test_a_v2_delivery_over_the_delta_limit_is_refused_whole(
    make_app: MakeApp, sessions: Sessions
) -> None:
    app = await make_app(version="v2")

    def delivery(count: int) -> bytes:
        return encode(
            {
                "deltas": [
                    samples.v2_delivery("account.invalid", account_id=f"a-{i}", at=NOW)["deltas"][0]
                    for i in range(count)
                ]
            }
        )

    status, body = await post(app, delivery(MAX_DELTAS + 1), secret=NYLAS_CLIENT_SECRET)
    assert status == 413 and f"at most {MAX_DELTAS} deltas" in body["message"]
    assert await inbox_rows(sessions) == []
    status, body = await post(app, delivery(MAX_DELTAS), secret=NYLAS_CLIENT_SECRET)
    assert (status, body["stored"]) == (200, MAX_DELTAS)


# --- malformed and oversized --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'{"id": "n", "type": "grant.expired", "time": 1}', "data.object"),
        (
            b'{"id": "n", "type": "grant.expired", "time": "soon", "data": {"object": {}}}',
            "time must be",
        ),
        (b'{"id": "n", "type": "grant.expired", "time": 1, "data": {"object": {}}}', "grant_id"),
        (b'{"id": "", "type": "grant.expired", "time": 1, "data": {"object": {}}}', "id must be"),
    ],
)
async def test_malformed_v3_deliveries_are_400(
    app: TestClient, sessions: Sessions, raw: bytes, message: str
) -> None:
    status, body = await post(app, raw)
    assert status == 400 and message in body["message"]
    assert await inbox_rows(sessions) == []


async def test_text_that_is_not_unicode_is_400_and_a_surrogate_pair_is_a_character(
    app: TestClient, sessions: Sessions
) -> None:
    raw = encode(expired())
    lone = raw.replace(b'"provider"', b'"note": "\\ud800", "provider"')
    encoded = raw.replace(b'"provider"', b'"note": "\xed\xa0\x80", "provider"')
    for body, message in [(lone, "not valid Unicode"), (encoded, "not UTF-8 text")]:
        status, answer = await post(app, body)
        assert status == 400 and message in answer["message"], (body, answer)
    assert await inbox_rows(sessions) == []

    pair = raw.replace(b'"provider"', b'"note": "\\ud83d\\ude00 \\uD83D\\uDE00", "provider"')
    assert (await post(app, pair))[0] == 200
    assert [row.body for row in await inbox_rows(sessions)] == [pair.decode()]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"deltas": []}, "non-empty 'deltas'"),
        ({"deltas": ["x"]}, "deltas[0] must be an object"),
        ({"deltas": [{"type": "account.invalid", "date": 1}]}, "object_data must be"),
        ({"deltas": [{"type": "account.invalid", "date": 1, "object_data": {}}]}, "account_id"),
        (
            {"deltas": [{"type": "account.invalid", "date": None, "object_data": {"id": "a"}}]},
            "date must be",
        ),
    ],
)
async def test_malformed_v2_deliveries_are_400(
    make_app: MakeApp, sessions: Sessions, payload: Any, message: str
) -> None:
    app = await make_app(version="v2")
    status, body = await post(app, encode(payload), secret=NYLAS_CLIENT_SECRET)
    assert status == 400 and message in body["message"]
    assert await inbox_rows(sessions) == []


async def test_bodies_over_1_mib_are_413(app: TestClient, sessions: Sessions) -> None:
    big = expired()
    big["padding"] = "x" * (1024 * 1024)
    status, _ = await post(app, encode(big))
    assert status == 413
    bomb = gzip.compress(b" " * (8 * 1024 * 1024))  # 8 KiB that inflate to 8 MiB
    status, body = await post(app, bomb, headers={"Content-Encoding": "gzip"})
    assert status == 413 and "decompressed" in body["message"]
    assert await inbox_rows(sessions) == []


async def test_bad_gzip_is_400(app: TestClient) -> None:
    status, body = await post(app, b"not gzip at all", headers={"Content-Encoding": "gzip"})
    assert status == 400 and "gzip" in body["message"]


async def test_database_down_is_503_so_nylas_retries(make_app: MakeApp) -> None:
    client = await make_app(database_url="postgresql+asyncpg://nobody@127.0.0.1:9/none")
    raw = encode(expired())
    response = await client.post(
        "/nylas/webhook", data=raw, headers={"X-Nylas-Signature": sign(WEBHOOK_SECRET, raw)}
    )
    assert response.status == 503
    assert response.headers.get("Retry-After") == "30"
    assert "retry" in (await response.json())["message"]


# --- v2 enrichment ------------------------------------------------------------------------------


async def test_v2_trigger_is_enriched_from_the_api(
    make_app: MakeApp, sessions: Sessions, nylas_fake: FakeNylas
) -> None:
    nylas_fake.add_v2_account(
        id="a-1",
        email="bo@example.org",
        provider="eas",
        sync_state="invalid-credentials",
        billing_state="paid",
    )
    client = await make_app(version="v2")
    raw = encode(samples.v2_delivery("account.invalid", account_id="a-1", at=NOW))
    assert (await post(client, raw, secret=NYLAS_CLIENT_SECRET))[0] == 200

    async def opened() -> bool:
        return len(await open_cases(sessions)) == 1

    await eventually(opened)
    async with sessions() as session:
        account = await cases.get_account(session, account_id="a-1")
    case = (await open_cases(sessions))[0]
    assert account is not None
    assert (account.email, account.provider, account.billing_state, account.sync_state) == (
        "bo@example.org",
        "eas",
        "paid",
        "invalid-credentials",
    )
    assert (case.kind, case.state) == ("reauth", "invalid-credentials")
    assert [c.path for c in nylas_fake.calls] == [f"/a/{NYLAS_CLIENT_ID}/accounts/a-1"]


async def test_v2_trigger_that_is_already_stale_opens_nothing(
    make_app: MakeApp, sessions: Sessions, nylas_fake: FakeNylas
) -> None:
    # account.invalid was sent, but the account is running again by the time we ask.
    nylas_fake.add_v2_account(id="a-1", email="bo@example.org", sync_state="running")
    client = await make_app(version="v2")
    await post(
        client,
        encode(samples.v2_delivery("account.invalid", account_id="a-1", at=NOW)),
        secret=NYLAS_CLIENT_SECRET,
    )

    async def processed() -> bool:
        return [r.status for r in await inbox_rows(sessions)] == ["done"]

    await eventually(processed)
    assert await open_cases(sessions) == []


async def test_v2_enrichment_is_retried_while_nylas_fails(
    make_app: MakeApp, sessions: Sessions, nylas_fake: FakeNylas
) -> None:
    nylas_fake.add_v2_account(id="a-1", email="bo@example.org", sync_state="stopped")
    nylas_fake.fail("GET", r"/a/.*/accounts/a-1", status=500, times=None)
    async with httpx.AsyncClient(timeout=5) as http:
        nylas = NylasClient(
            http,
            api_version="v2",
            base_url=nylas_fake.url,
            client_id=NYLAS_CLIENT_ID,
            client_secret=NYLAS_CLIENT_SECRET,
            max_retries=0,
        )
        client = await make_app(version="v2", nylas=nylas)
        raw = encode(samples.v2_delivery("account.stopped", account_id="a-1", at=NOW))
        await post(client, raw, secret=NYLAS_CLIENT_SECRET)

        async def deferred() -> bool:
            rows = await inbox_rows(sessions)
            return bool(rows) and rows[0].attempts == 1

        await eventually(deferred)
        rows = await inbox_rows(sessions)
        assert rows[0].status == "pending"
        assert "HTTP 500" in (rows[0].last_error or "")
        assert await open_cases(sessions) == []
        await client.close()


async def test_v2_account_gone_from_the_api_resolves_the_case(
    make_app: MakeApp, sessions: Sessions, nylas_fake: FakeNylas
) -> None:
    nylas_fake.add_v2_account(id="a-1", email="bo@example.org", sync_state="stopped")
    client = await make_app(version="v2")
    await post(
        client,
        encode(samples.v2_delivery("account.stopped", account_id="a-1", at=NOW)),
        secret=NYLAS_CLIENT_SECRET,
    )

    async def opened() -> bool:
        return len(await open_cases(sessions)) == 1

    await eventually(opened)
    del nylas_fake.v2_accounts["a-1"]
    later = samples.v2_delivery("account.running", account_id="a-1", at=NOW.replace(minute=45))
    await post(client, encode(later), secret=NYLAS_CLIENT_SECRET)

    async def closed() -> bool:
        return await open_cases(sessions) == []

    await eventually(closed)
    async with sessions() as session:
        case = await cases.get_case(session, case_id=1)
    assert case is not None and case.resolution == "The account was deleted in Nylas."


# --- the scheduled reconciliation ---------------------------------------------------------------


async def test_service_reconciles_at_start_without_any_webhook(
    make_app: MakeApp, sessions: Sessions, nylas_fake: FakeNylas
) -> None:
    nylas_fake.add_grant(id="g-7", email="cy@example.com", grant_status="invalid")
    nylas_fake.add_grant(id="g-8", email="di@example.com")
    client = await make_app(scheduled_jobs=True)

    async def opened() -> bool:
        return [c.account_id for c in await open_cases(sessions)] == ["g-7"]

    await eventually(opened)
    metrics = await (await client.get("/metrics")).text()
    assert 'reauthbot_reconciled_accounts_total{outcome="new"} 2.0' in metrics
    assert 'reauthbot_job_runs_total{job="reconcile",outcome="ok"} 1.0' in metrics
