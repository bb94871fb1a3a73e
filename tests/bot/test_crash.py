"""A crash between the 2xx and processing loses nothing and does nothing twice."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlmodel import select

from storage import cases
from storage.engine import create_engine, session_factory
from storage.models import CaseEvent, InboxDelivery, OutboxMessage
from tests.cli import service
from tests.conftest import NYLAS_CLIENT_ID, NYLAS_CLIENT_SECRET
from tests.fakes.nylas import FakeNylas
from tests.waiting import eventually
from workflows.nylas import samples
from workflows.nylas.webhooks import sign


async def test_delivery_stored_before_a_crash_is_processed_once_after_restart(
    tmp_path: Path, blank_url: str, nylas_fake: FakeNylas
) -> None:
    nylas_fake.add_v2_account(id="a-1", email="ana@example.com", sync_state="invalid-credentials")
    nylas_fake.fail("GET", r"/a/.*/accounts", status=503, times=None)  # keep polling out of it
    nylas_fake.delay(r"/a/.*/accounts/a-1", 60)  # the worker is stuck asking about a-1
    env = {
        "DATABASE_URL": blank_url,
        "NYLAS_API_VERSION": "v2",
        "NYLAS_API_URL": nylas_fake.url,
        "NYLAS_CLIENT_ID": NYLAS_CLIENT_ID,
        "NYLAS_CLIENT_SECRET": NYLAS_CLIENT_SECRET,
    }
    log = tmp_path / "serve.log"
    raw = json.dumps(
        samples.v2_delivery("account.invalid", account_id="a-1", at=datetime.now(UTC))
    ).encode()
    headers = {"X-Nylas-Signature": sign(NYLAS_CLIENT_SECRET, raw)}

    async with service(tmp_path, log, env) as base, httpx.AsyncClient() as http:
        answer = await http.post(f"{base}/nylas/webhook", content=raw, headers=headers)
        assert answer.status_code == 200 and answer.json()["stored"] == 1

        async def asked() -> bool:
            return bool(nylas_fake.calls_to("GET", r"/a/.*/accounts/a-1"))

        await eventually(asked, within=10)
        # SIGKILL on leaving the block: the delivery was acknowledged but never applied.

    engine = create_engine(blank_url)
    sessions = session_factory(engine)
    try:
        async with sessions() as session:
            (pending,) = (await session.exec(select(InboxDelivery))).all()
            assert (pending.status, pending.attempts) == ("pending", 0)
            assert await cases.get_open_case(session, account_id="a-1") is None

        nylas_fake._delays.clear()
        async with service(tmp_path, log, env) as base, httpx.AsyncClient() as http:
            # Nylas retries the same delivery too: it must not count twice.
            again = await http.post(f"{base}/nylas/webhook", content=raw, headers=headers)
            assert again.json() == {"status": "accepted", "stored": 0, "duplicates": 1}
            async with asyncio.timeout(15):
                while True:
                    async with sessions() as session:
                        delivery = (await session.exec(select(InboxDelivery))).one()
                        posted = (await session.exec(select(OutboxMessage))).all()
                    if delivery.status == "done" and posted and posted[0].status == "sent":
                        break
                    await asyncio.sleep(0.1)

        async with sessions() as session:
            case = await cases.get_open_case(session, account_id="a-1")
            opened = (
                await session.exec(select(CaseEvent).where(CaseEvent.action == "opened"))
            ).all()
            posts = (await session.exec(select(OutboxMessage))).all()
        assert case is not None and (case.kind, case.state) == ("reauth", "invalid-credentials")
        assert delivery.attempts == 1
        assert len(opened) == 1
        assert [(m.kind, m.status) for m in posts] == [("post", "sent")]
        assert log.read_text().count("alert: Needs re-authentication: ana@example.com") == 1
    finally:
        await engine.dispose()
