"""Slack fails for a while; afterwards every alert, update and thread line arrives, once, in order.

The first tests run the whole service in real time against a fake Slack that answers 5xx or
429 for a few seconds while cases open and change (webhooks, a signed click, workflows). The
last ones drive the notifier alone with a frozen clock through outages of many minutes, which
real time cannot afford: they check that retries are spread out (bounded backoff) and never
used up while Slack is merely unavailable.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from slack_sdk.web.async_client import AsyncWebClient
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select

from bot.metrics import Metrics
from bot.notifier import MAX_ATTEMPTS, MAX_BACKOFF, RETRY_FOR, Notifier
from bot.settings import load_settings
from bot.slack import app as slack_app
from bot.slack import ids
from bot.slack.sink import CASE_EVENT, SlackSink, thread_text
from storage import cases
from storage.models import Case, OutboxKind, OutboxMessage, OutboxStatus
from tests.appclient import start_app
from tests.bot.slack.support import CHANNEL, SIGNING_SECRET, Sessions, click, click_body
from tests.builders import open_case_with_alert
from tests.conftest import NYLAS_CLIENT_SECRET, WEBHOOK_SECRET, FrozenClock
from tests.fakes.nylas import FakeNylas
from tests.fakes.slack import FakeSlack
from tests.waiting import eventually
from workflows import actions
from workflows.nylas import samples
from workflows.nylas.webhooks import sign

TOKEN = "xoxb-outage-token"
SLACK_WRITES = ("chat.postMessage", "chat.update")


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(bot_token=TOKEN) as fake:
        yield fake


def lift_outage(slack: FakeSlack) -> None:
    """End failures injected with ``times=None`` (the fake has no public way to lift them)."""
    slack._failures.clear()


# --- the whole service, in real time -------------------------------------------------------------


@pytest.fixture
async def app(
    engine: AsyncEngine, slack: FakeSlack, nylas_fake: FakeNylas, tmp_path: Path
) -> AsyncIterator[TestClient]:
    """The service with its production Slack client; posts are paced 20 times faster."""
    settings = load_settings(
        _env_file=None,
        slack_bot_token=TOKEN,
        slack_signing_secret=SIGNING_SECRET,
        slack_alert_channel=CHANNEL,
        slack_api_url=slack.url,
        nylas_webhook_secret=WEBHOOK_SECRET,
        nylas_api_version="v2",
        nylas_api_url=nylas_fake.url,
        nylas_client_id=nylas_fake.client_id,
        nylas_client_secret=nylas_fake.client_secret,
    )
    client = slack_app.build_client(settings)
    sink = SlackSink(client, post_interval=0.05)
    started = await start_app(
        settings, engine=engine, slack_client=client, sink=sink, migrate=False, scheduled_jobs=False
    )
    yield started
    await started.close()


async def deliver(app: TestClient, payload: dict[str, Any], secret: str) -> None:
    raw = json.dumps(payload).encode()
    response = await app.post(
        "/nylas/webhook", data=raw, headers={"X-Nylas-Signature": sign(secret, raw)}
    )
    assert response.status == 200, await response.text()


async def v3(app: TestClient, trigger: str, n: int, **kw: Any) -> None:
    payload = samples.v3_notification(
        trigger, grant_id=f"g-{n}", email=f"user{n}@example{n}.com", at=datetime.now(UTC), **kw
    )
    await deliver(app, payload, WEBHOOK_SECRET)


async def v2(app: TestClient, trigger: str, account_id: str, at: datetime) -> None:
    await deliver(
        app, samples.v2_delivery(trigger, account_id=account_id, at=at), NYLAS_CLIENT_SECRET
    )


async def case_of(sessions: Sessions, account_id: str) -> Case:
    async with sessions() as session:
        rows = await session.exec(select(Case).where(Case.account_id == account_id))
        (case,) = rows.all()
    return case


async def wait_case(sessions: Sessions, account_id: str, **expected: Any) -> Case:
    async def there() -> bool:
        async with sessions() as session:
            found = (await session.exec(select(Case).where(Case.account_id == account_id))).all()
        return len(found) == 1 and all(getattr(found[0], k) == v for k, v in expected.items())

    await eventually(there, within=10)
    return await case_of(sessions, account_id)


async def outbox_rows(sessions: Sessions) -> list[OutboxMessage]:
    async with sessions() as session:
        return list(await session.exec(select(OutboxMessage).order_by(col(OutboxMessage.id))))


async def settled(sessions: Sessions, within: float) -> list[OutboxMessage]:
    """Wait until no message is left to send; return the outbox."""

    async def done() -> bool:
        rows = await outbox_rows(sessions)
        return all(row.status != OutboxStatus.PENDING for row in rows)

    await eventually(done, within=within)
    await asyncio.sleep(0.5)  # room for a second copy of anything to show up
    return await outbox_rows(sessions)


def parents(slack: FakeSlack) -> dict[int, list[str]]:
    """Case id -> the ts of every top-level message posted for it."""
    found: dict[int, list[str]] = {}
    for (channel, ts), message in slack.messages.items():
        metadata = message.get("metadata") or {}
        if channel == CHANNEL and metadata.get("event_type") == CASE_EVENT:
            found.setdefault(metadata["event_payload"]["case_id"], []).append(ts)
    return found


async def assert_delivered_once_in_order(
    slack: FakeSlack, sessions: Sessions, expected_lines: dict[str, list[str]]
) -> None:
    """Each case has one parent message, its lines as written, and no message failed."""
    rows = await settled(sessions, within=30)
    assert [r.id for r in rows if r.status == OutboxStatus.FAILED] == []
    posted = parents(slack)
    for account_id, starts in expected_lines.items():
        case = await case_of(sessions, account_id)
        assert posted.get(case.id or 0) == [case.slack_ts], account_id
        written = [
            thread_text(r) for r in rows if r.case_id == case.id and r.kind == OutboxKind.THREAD
        ]
        arrived = [line["text"] for line in slack.thread(CHANNEL, case.slack_ts or "")]
        assert arrived == written, account_id
        assert len(arrived) == len(starts), (account_id, arrived)
        for line, start in zip(arrived, starts, strict=True):
            assert line.startswith(start), (account_id, arrived)
    assert len(posted) == len(expected_lines)


async def test_after_a_5xx_outage_every_alert_and_line_arrives_once_in_order(
    app: TestClient, slack: FakeSlack, sessions: Sessions, nylas_fake: FakeNylas
) -> None:
    nylas_fake.add_v2_account(id="a-1", email="bo@example.org", sync_state="stopped")
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    await v2(app, "account.stopped", "a-1", t0)
    await wait_case(sessions, "a-1", slack_channel=CHANNEL)

    async def posted() -> bool:
        return (await case_of(sessions, "a-1")).slack_ts is not None

    await eventually(posted, within=10)

    for method in SLACK_WRITES:
        slack.fail(method, status=503, times=None)
    before = len(slack.calls)
    # Case a-1 was posted before: its lines wait behind Slack. g-2 and g-3 open meanwhile:
    # their posts wait behind Slack, and g-2's lines behind its post.
    assert await click(app, click_body(slack, ids.ACK, "1", "U0ALICE")) == 200
    await wait_case(sessions, "a-1", status="acknowledged")
    nylas_fake.set_sync_state("a-1", "invalid-credentials")
    await v2(app, "account.invalid", "a-1", t0 + timedelta(minutes=1))
    await wait_case(sessions, "a-1", state="invalid-credentials")
    await v3(app, "grant.expired", 2)
    await v3(app, "grant.expired", 3)
    g2 = await wait_case(sessions, "g-2")
    await wait_case(sessions, "g-3")
    now = datetime.now(UTC)
    assert (
        await actions.acknowledge(sessions, case_id=g2.id or 0, actor="slack:U0BOB", now=now)
    ).changed
    snoozed = await actions.snooze(
        sessions, case_id=g2.id or 0, actor="slack:U0BOB", now=now, duration="1h"
    )
    assert snoozed.changed
    await v3(app, "grant.updated", 2, reauthenticated=True)
    nylas_fake.set_sync_state("a-1", "running")
    await v2(app, "account.running", "a-1", t0 + timedelta(minutes=2))
    await wait_case(sessions, "a-1", status="resolved")
    await wait_case(sessions, "g-2", status="resolved")
    await asyncio.sleep(3)  # the outage goes on: retries back off

    assert slack.messages.keys() == {(CHANNEL, (await case_of(sessions, "a-1")).slack_ts)}
    refused = [c for c in slack.calls[before:] if c.method in SLACK_WRITES]
    assert len(refused) >= 3  # tried, and tried again, during the outage
    lift_outage(slack)

    await assert_delivered_once_in_order(
        slack,
        sessions,
        {
            "a-1": [
                "Acknowledged by <@U0ALICE>.",
                "State changed from stopped to invalid-credentials.",
                "Resolved: The account recovered",
            ],
            "g-2": [
                "Acknowledged by <@U0BOB>.",
                "Snoozed for 1h by <@U0BOB>",
                "Resolved: The end user re-authenticated.",
            ],
            "g-3": [],
        },
    )
    # The last update of each message shows the case as it ended.
    for account_id in ("a-1", "g-2"):
        case = await case_of(sessions, account_id)
        assert "resolved" in slack.messages[CHANNEL, case.slack_ts or ""]["text"]


async def test_after_a_rate_limit_every_alert_and_line_arrives_once_in_order(
    app: TestClient, slack: FakeSlack, sessions: Sessions
) -> None:
    slack.fail("chat.postMessage", status=429, retry_after=1, times=None)
    for n in (1, 2, 3):
        await v3(app, "grant.expired", n)
    first = await wait_case(sessions, "g-1")
    await wait_case(sessions, "g-3")
    now = datetime.now(UTC)
    await actions.acknowledge(sessions, case_id=first.id or 0, actor="slack:U0ANA", now=now)
    await actions.resolve(
        sessions, case_id=first.id or 0, actor="slack:U0ANA", now=now, note="moved mailbox"
    )
    await asyncio.sleep(3)
    assert slack.messages == {}
    assert slack.ratelimited_count >= 3
    lift_outage(slack)

    await assert_delivered_once_in_order(
        slack,
        sessions,
        {
            "g-1": ["Acknowledged by <@U0ANA>.", "Resolved by <@U0ANA>: moved mailbox"],
            "g-2": [],
            "g-3": [],
        },
    )


# --- the notifier alone, through long outages on a frozen clock -------------------------------


def notifier(sessions: Sessions, slack: FakeSlack, clock: FrozenClock) -> Notifier:
    client = AsyncWebClient(token=TOKEN, base_url=slack.url, timeout=1)
    return Notifier(sessions, SlackSink(client, post_interval=0), clock=clock, metrics=Metrics())


async def next_due(sessions: Sessions) -> datetime | None:
    rows = [r for r in await outbox_rows(sessions) if r.status == OutboxStatus.PENDING]
    return min((r.available_at for r in rows), default=None)


async def run_until(
    drain: Notifier, sessions: Sessions, clock: FrozenClock, end: datetime
) -> list[datetime]:
    """Drain whenever something is due, jumping the clock there, until ``end``.

    Returns the times at which the parent post was tried.
    """
    tried: list[datetime] = []
    attempts = None
    while clock() < end:
        await drain.drain_once()
        post = next(r for r in await outbox_rows(sessions) if r.kind == OutboxKind.POST)
        if post.attempts != attempts:
            tried.append(clock())
            attempts = post.attempts
        due = await next_due(sessions)
        if due is None:
            break
        clock.now = max(due, clock() + timedelta(milliseconds=1))
    return tried


@pytest.mark.parametrize(
    ("failure", "minutes", "line"),
    [
        pytest.param({"status": 503}, 20, False, id="5xx for 20 minutes"),
        pytest.param({"status": 503}, 1, True, id="5xx for a minute, a line waiting"),
        pytest.param({"status": 429, "retry_after": 1}, 1, True, id="429 for a minute"),
    ],
)
async def test_a_long_outage_does_not_use_up_the_retries(
    sessions: Sessions, slack: FakeSlack, failure: dict[str, Any], minutes: int, line: bool
) -> None:
    clock = FrozenClock(datetime.now(UTC))
    start = clock()
    case_id = await open_case_with_alert(
        sessions, start, channel=CHANNEL, account_id="g-1", api_version="v3"
    )
    async with sessions() as session, session.begin():
        opened = await cases.get_case(session, case_id=case_id)
        assert opened is not None
        opened.slack_channel = CHANNEL  # as routing sets it when a webhook opens a case
        session.add(opened)
    if line:
        # A change while the alert is still on its way: its line waits for the parent.
        await actions.acknowledge(sessions, case_id=case_id, actor="slack:U0ANA", now=start)
    slack.fail("chat.postMessage", times=None, **failure)
    drain = notifier(sessions, slack, clock)

    tried = await run_until(drain, sessions, clock, start + timedelta(minutes=minutes))
    lift_outage(slack)
    ended = clock()
    await run_until(drain, sessions, clock, ended + timedelta(hours=1))

    rows = await outbox_rows(sessions)
    assert [(r.kind, r.status) for r in rows if r.status == OutboxStatus.FAILED] == []
    assert all(r.status != OutboxStatus.PENDING for r in rows)
    async with sessions() as session:
        case = await cases.get_case(session, case_id=case_id)
    assert case is not None and case.slack_ts is not None
    assert parents(slack) == {case_id: [case.slack_ts]}
    lines = [m["text"] for m in slack.thread(CHANNEL, case.slack_ts)]
    assert lines == (["Acknowledged by <@U0ANA>."] if line else [])
    # The outage outlasted the attempts that used to be allowed.
    assert max(r.attempts for r in rows) > MAX_ATTEMPTS
    post = next(r for r in rows if r.kind == OutboxKind.POST)
    # Bounded backoff: never more than MAX_BACKOFF between tries, so the alert goes out
    # within that of the outage's end.
    assert post.sent_at is not None and post.sent_at - ended <= MAX_BACKOFF
    gaps = [b - a for a, b in itertools.pairwise(tried)]
    assert max(gaps, default=timedelta(0)) <= MAX_BACKOFF


async def test_a_message_still_failing_after_a_day_is_given_up(
    sessions: Sessions, slack: FakeSlack
) -> None:
    clock = FrozenClock(datetime.now(UTC))
    start = clock()
    case_id = await open_case_with_alert(sessions, start, channel=CHANNEL, account_id="g-1")
    slack.fail("chat.postMessage", status=503, times=None)
    # Skip most of the first day: the tries of its last half hour are the ones that count.
    clock.now = start + RETRY_FOR - timedelta(minutes=30)

    tried = await run_until(
        notifier(sessions, slack, clock), sessions, clock, start + timedelta(days=2)
    )

    (post,) = await outbox_rows(sessions)
    assert post.status == OutboxStatus.FAILED and post.last_error == "http_503"
    assert post.attempts > MAX_ATTEMPTS  # still tried after twelve attempts, until the day ended
    assert tried[-2] - start < RETRY_FOR <= tried[-1] - start <= RETRY_FOR + MAX_BACKOFF
    async with sessions() as session:
        case = await cases.get_case(session, case_id=case_id)
    assert case is not None and case.last_error == "post failed: http_503"
