"""POST /nylas/webhook through the real app, for any body, signature and headers: never a
5xx, and a rejected request (4xx) adds nothing to the inbox."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import event, given
from hypothesis import strategies as st
from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.settings import load_settings
from storage.engine import session_factory
from storage.models import InboxDelivery
from tests.appclient import start_app
from tests.conftest import NYLAS_API_KEY, NYLAS_CLIENT_SECRET, WEBHOOK_SECRET
from tests.properties import rawhttp
from tests.properties.strategies import SLOW, bodies, encode, real_samples
from workflows.nylas.webhooks import sign

CONTENT_TYPES = [
    b"application/json",
    b"application/json; charset=utf-8",
    b"application/cloudevents+json",
    b"text/plain",
    b"application/x-www-form-urlencoded",
    b"multipart/form-data; boundary=xyz",
    b"application/octet-stream",
]
# Header values as bytes, anything but the line breaks that would end the header.
header_bytes = st.binary(max_size=40).filter(lambda v: b"\r" not in v and b"\n" not in v)


@dataclass(frozen=True)
class Delivery:
    body: bytes
    headers: list[tuple[bytes, bytes]]
    well_formed: bool  # an unchanged sample, signed right: it must be accepted


@st.composite
def deliveries(draw: st.DrawFn) -> Delivery:
    sample = draw(st.booleans())
    if sample:
        payload = draw(real_samples())
        raw = encode(payload, draw)
        version = "v2" if "deltas" in payload else "v3"
    else:
        raw = draw(bodies())
        version = draw(st.sampled_from(["v2", "v3"]))
    gzipped = draw(st.booleans())
    sent = gzip.compress(raw) if gzipped else raw
    own_secret = NYLAS_CLIENT_SECRET if version == "v2" else WEBHOOK_SECRET
    how = draw(st.sampled_from(["sent bytes", "inflated", "other secret", "none", "any"]))
    headers = [(b"Content-Type", draw(st.sampled_from(CONTENT_TYPES) | header_bytes))]
    if how == "sent bytes":
        headers.append((b"X-Nylas-Signature", sign(own_secret, sent).encode()))
    elif how == "inflated":
        headers.append((b"X-Nylas-Signature", sign(own_secret, raw).encode()))
    elif how == "other secret":
        headers.append((b"X-Nylas-Signature", sign(NYLAS_API_KEY, sent).encode()))
    elif how == "any":
        headers.append((b"X-Nylas-Signature", draw(header_bytes)))
    if gzipped:
        encoding = draw(st.sampled_from([b"gzip", b"GZIP", b" gzip"]))
    else:
        encoding = draw(st.sampled_from([b"", b"gzip", b"deflate", b"identity"]) | header_bytes)
    if encoding:
        headers.append((b"Content-Encoding", encoding))
    signed_right = how == "sent bytes" or (how == "inflated" and gzipped)
    return Delivery(sent, headers, sample and signed_right)


@pytest.fixture
async def app(engine: AsyncEngine) -> AsyncIterator[TestClient]:
    settings = load_settings(
        _env_file=None,
        nylas_client_secret=NYLAS_CLIENT_SECRET,
        nylas_webhook_secret=WEBHOOK_SECRET,
    )
    client = await start_app(settings, engine=engine, scheduled_jobs=False, migrate=False)
    yield client
    await client.close()


async def inbox_size(sessions: async_sessionmaker[AsyncSession]) -> int:
    async with sessions() as session:
        return (await session.exec(select(func.count()).select_from(InboxDelivery))).one()


@SLOW
@given(delivery=deliveries())
async def test_no_delivery_gets_a_5xx_and_rejected_ones_store_nothing(
    app: TestClient, engine: AsyncEngine, delivery: Delivery
) -> None:
    sessions = session_factory(engine)
    before = await inbox_size(sessions)
    answer = await rawhttp.post(app, "/nylas/webhook", delivery.body, delivery.headers)
    after = await inbox_size(sessions)
    event(f"HTTP {answer.status}")
    assert answer.status < 500, answer.body
    if answer.status >= 400:
        assert after == before
        return
    assert answer.status == 200
    result = answer.json()
    assert result["status"] in ("accepted", "ignored")
    assert after - before == result.get("stored", 0)
    if delivery.well_formed:
        assert result["status"] == "accepted"


@SLOW
@given(signature=header_bytes)
async def test_signature_headers_of_any_bytes_are_refused(
    app: TestClient, signature: bytes
) -> None:
    # Not UTF-8, not ASCII, not hex: refused by the check (401) or by the HTTP parser (400).
    raw = b'{"id": "n", "type": "grant.expired", "time": 1, "data": {"object": {}}}'
    answer = await rawhttp.post(app, "/nylas/webhook", raw, [(b"X-Nylas-Signature", signature)])
    assert answer.status in (400, 401), answer.body
