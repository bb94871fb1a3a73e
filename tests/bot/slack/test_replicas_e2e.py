"""Two `reauthbot serve` processes on one database, sharing the webhook and Slack traffic."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlencode

import httpx
from sqlmodel import select

from bot.slack import ids
from storage.engine import create_engine, session_factory
from storage.models import Case, CaseEvent, CaseStatus, InboxDelivery, InboxStatus
from tests.bot.slack.support import SIGNING_SECRET, click_payload, signed
from tests.cli import service
from tests.conftest import NYLAS_CLIENT_ID, NYLAS_CLIENT_SECRET
from tests.fakes.nylas import FakeNylas
from tests.fakes.slack import FakeSlack
from tests.waiting import eventually
from workflows.nylas import samples
from workflows.nylas.webhooks import sign

TOKEN = "xoxb-e2e-token"
CHANNEL = "C0ALERTS"
ACCOUNTS = 6


def env(database_url: str, slack: FakeSlack, nylas: FakeNylas) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "SLACK_BOT_TOKEN": TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_ALERT_CHANNEL": CHANNEL,
        "SLACK_API_URL": slack.url,
        "NYLAS_API_VERSION": "v2",
        "NYLAS_API_URL": nylas.url,
        "NYLAS_CLIENT_ID": NYLAS_CLIENT_ID,
        "NYLAS_CLIENT_SECRET": NYLAS_CLIENT_SECRET,
    }


def stopped(n: int) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(
        samples.v2_delivery("account.stopped", account_id=f"a-{n}", at=datetime.now(UTC))
    ).encode()
    return raw, {"X-Nylas-Signature": sign(NYLAS_CLIENT_SECRET, raw)}


async def test_two_replicas_process_post_and_act_once(
    tmp_path: Path, blank_url: str, slack: FakeSlack, nylas_fake: FakeNylas
) -> None:
    for n in range(ACCOUNTS):
        # One account per domain: each gets its own alert (no storm).
        nylas_fake.add_v2_account(
            id=f"a-{n}", email=f"user@example{n}.com", sync_state="stopped", provider="imap"
        )
    settings = env(blank_url, slack, nylas_fake)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    async with (
        service(tmp_path / "a", tmp_path / "a.log", settings) as first,
        service(tmp_path / "b", tmp_path / "b.log", settings) as second,
        httpx.AsyncClient(timeout=10) as http,
    ):
        replicas = (first, second)
        deliveries = [stopped(n) for n in range(ACCOUNTS)]
        # Each delivery to one replica, and Nylas' retry of it to the other.
        answers = await asyncio.gather(
            *(
                http.post(f"{replicas[(n + k) % 2]}/nylas/webhook", content=raw, headers=headers)
                for n, (raw, headers) in enumerate(deliveries)
                for k in (0, 1)
            )
        )
        assert all(a.status_code == 200 for a in answers)
        assert sum(a.json()["duplicates"] for a in answers) == ACCOUNTS

        async def all_posted() -> bool:
            return len(slack.calls_to("chat.postMessage")) >= ACCOUNTS

        await eventually(all_posted, within=60)

        # Every operator presses Retry on every alert at once, through both replicas.
        async def press(n: int, replica: str, user: str) -> int:
            payload = click_payload(slack, ids.RETRY, str(n), user, n=f"{n}-{user}")
            body = urlencode({"payload": json.dumps(payload)})
            response = await http.post(
                f"{replica}/slack/events", content=body, headers=signed(body)
            )
            return response.status_code

        statuses = await asyncio.gather(
            *(
                press(n, replica, user)
                for n in range(1, ACCOUNTS + 1)
                for replica, user in zip(replicas, ("U0ANA", "U0BOB"), strict=True)
            )
        )
        assert statuses == [200] * (2 * ACCOUNTS)

        engine = create_engine(blank_url)
        try:
            sessions = session_factory(engine)

            async def all_resolved() -> bool:
                async with sessions() as session:
                    rows = (await session.exec(select(Case))).all()
                return len(rows) == ACCOUNTS and all(c.status == CaseStatus.RESOLVED for c in rows)

            await eventually(all_resolved, within=60)
            async with sessions() as session:
                inbox = (await session.exec(select(InboxDelivery))).all()
                events = (await session.exec(select(CaseEvent))).all()
        finally:
            await engine.dispose()

    # Each delivery stored once and processed once.
    assert len(inbox) == ACCOUNTS
    assert {d.status for d in inbox} == {InboxStatus.DONE}
    actions = Counter(e.action for e in events)
    assert actions["opened"] == ACCOUNTS
    assert actions["retried"] == ACCOUNTS  # one retry per case, whichever replica ran it
    # Each case posted once (the metadata names the case of each top-level message).
    posted = [
        m["metadata"]["event_payload"]["case_id"]
        for m in slack.messages.values()
        if m.get("metadata", {}).get("event_type") == "reauthbot_case"
    ]
    assert sorted(posted) == list(range(1, ACCOUNTS + 1))
    # Each Nylas action called once per account, though every alert was pressed twice.
    for n in range(ACCOUNTS):
        for step in ("downgrade", "upgrade"):
            calls = nylas_fake.calls_to("POST", rf"/a/[^/]+/accounts/a-{n}/{step}")
            assert len(calls) == 1, (n, step, len(calls))
    # The first reconciliation pass ran in one replica only.
    listings = [
        c
        for c in nylas_fake.calls_to("GET", r"/a/[^/]+/accounts")
        if c.query.get("offset", "0") == "0"
    ]
    assert len(listings) == 1
