"""Nylas fails or stops answering: nothing is concluded from what could not be read.

- A reconciliation pass whose listing breaks part-way stops with one clear line; accounts it
  did not get to are neither marked deleted nor have their cases resolved. The next pass,
  with Nylas back, finishes.
- An operator's click on an action that calls Nylas is acknowledged at once; the operator is
  told privately that Nylas failed; the case stays open and is free for another try.
- A v2 webhook whose account cannot be read stays in the inbox, however long Nylas is away
  (within a day), and is applied once Nylas answers again.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import col, select

from bot.settings import load_settings
from bot.slack import ids
from storage import cases, inbox
from storage.engine import create_engine, session_factory
from storage.migrate import upgrade
from storage.models import Account, Case, CaseStatus, InboxDelivery, InboxStatus
from tests.appclient import start_app
from tests.bot.slack.support import (
    CHANNEL,
    SIGNING_SECRET,
    Sessions,
    click,
    click_body,
    nylas_settings,
)
from tests.bot.test_cli_nylas import nylas_env, run_async
from tests.conftest import NYLAS_API_KEY, NYLAS_CLIENT_ID, NYLAS_CLIENT_SECRET, FrozenClock, Nylas
from tests.fakes.http_faults import FaultyProxy
from tests.fakes.nylas import FakeNylas
from tests.fakes.slack import FakeSlack
from tests.waiting import eventually
from workflows.ingest import drain_inbox
from workflows.nylas import NylasClient, NylasUnavailable, samples
from workflows.nylas.webhooks import sign, split
from workflows.reconcile import reconcile

# The listing is read 200 grants a page and applied 500 at a time: with 1,200 grants and the
# pages from offset 600 on failing, the first 500 are applied before the pass breaks.
GRANTS = 1200
BREAKS_AT = 600


def later_pages(request: web.Request) -> bool:
    return request.path == "/v3/grants" and int(request.query.get("offset", "0")) >= BREAKS_AT


@pytest.fixture
async def proxy(nylas_fake: FakeNylas) -> AsyncIterator[FaultyProxy]:
    async with FaultyProxy(nylas_fake.url) as proxy:
        yield proxy


async def delete_grant(fake: FakeNylas, grant_id: str) -> None:
    """Delete a grant the way anyone with the API key would (from the Dashboard, say)."""
    async with httpx.AsyncClient() as http:
        answer = await http.delete(
            f"{fake.url}/v3/grants/{grant_id}",
            headers={"Authorization": f"Bearer {NYLAS_API_KEY}"},
        )
    assert answer.status_code == 200


def route(email: str | None) -> str:
    return CHANNEL


async def open_accounts(sessions: Sessions) -> list[str]:
    async with sessions() as session:
        rows = await cases.list_open_cases(session)
    return sorted(case.account_id for case, _ in rows)


async def deleted_accounts(sessions: Sessions) -> list[str]:
    async with sessions() as session:
        stmt = select(Account.id).where(Account.sync_state == "deleted")
        return sorted(await session.exec(stmt))


async def first_pass_then_changes(fake: FakeNylas, apply: Callable[[], Awaitable[None]]) -> None:
    """Run a clean first pass, then change Nylas on both sides of the break."""
    fake.add_many_grants(GRANTS, grant_statuses=["valid"] * 99 + ["invalid"])
    await apply()
    fake.set_grant_status("grant-99", "valid")  # before the break: applied either way
    await delete_grant(fake, "grant-899")  # after the break: an open case
    await delete_grant(fake, "grant-1000")  # after the break: a healthy account


BROKEN_CASES = [f"grant-{n}" for n in range(199, GRANTS, 100)]  # grant-99 recovered


async def assert_nothing_unseen_was_concluded(sessions: Sessions) -> None:
    assert await open_accounts(sessions) == sorted(BROKEN_CASES)
    assert await deleted_accounts(sessions) == []


async def test_poll_stopped_part_way_deletes_nothing_and_the_next_pass_finishes(
    tmp_path: Path, blank_url: str, nylas_fake: FakeNylas, proxy: FaultyProxy
) -> None:
    env = nylas_env(nylas_fake, blank_url) | {"NYLAS_API_URL": proxy.url}
    engine = create_engine(blank_url)
    sessions = session_factory(engine)
    try:
        await upgrade(engine)

        async def poll_ok() -> None:
            result = await run_async(tmp_path, "poll", **env)
            assert result.returncode == 0, result.stderr

        await first_pass_then_changes(nylas_fake, poll_ok)
        # Retry-After 0: the client's four retries happen at once instead of over 8 s.
        proxy.fail(later_pages, status=503, headers={"Retry-After": "0"})

        result = await run_async(tmp_path, "poll", **env)

        # Progress and log lines come first on stderr; the error is one line, and the last.
        assert result.returncode == 1 and result.stdout == ""
        assert "Traceback" not in result.stderr
        *before, last = result.stderr.strip().splitlines()
        assert last == (
            "reauthbot: reconciliation stopped: "
            "Nylas failed to answer GET /v3/grants after 5 attempts (HTTP 503)."
        )
        assert not [line for line in before if line.startswith("reauthbot:")]
        assert "... 500 accounts checked" in before  # the first 500 were applied
        assert proxy.failed == 5  # the first try and four retries of one page
        await assert_nothing_unseen_was_concluded(sessions)

        proxy.clear()
        result = await run_async(tmp_path, "poll", **env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == (
            "1198 accounts checked: 0 new, 0 changed, 2 gone; 0 cases opened, 1 resolved"
        )
        assert await deleted_accounts(sessions) == ["grant-1000", "grant-899"]
        assert "grant-899" not in await open_accounts(sessions)
    finally:
        await engine.dispose()


async def test_a_listing_that_times_out_part_way_deletes_nothing(
    sessions: Sessions, nylas_fake: FakeNylas, proxy: FaultyProxy
) -> None:
    async with httpx.AsyncClient(timeout=0.5) as http:
        nylas = NylasClient(
            http, api_version="v3", base_url=proxy.url, api_key=NYLAS_API_KEY, max_retries=1
        )

        async def reconcile_pass() -> None:
            await reconcile(sessions, nylas, clock=lambda: datetime.now(UTC), route=route)

        await first_pass_then_changes(nylas_fake, reconcile_pass)
        proxy.hold(later_pages, 2.0)

        with pytest.raises(NylasUnavailable, match=r"did not answer GET /v3/grants in time"):
            await reconcile_pass()
        await assert_nothing_unseen_was_concluded(sessions)

        proxy.clear()
        await reconcile_pass()
    assert await deleted_accounts(sessions) == ["grant-1000", "grant-899"]


# --- operator actions while Nylas fails ------------------------------------------------------

ADMIN = "U0ADMIN"
POLICY = f'[permissions]\nrevoke = ["{ADMIN}"]\n'
# What the client would wait for Nylas; the fake holds "slow" requests longer than that.
NYLAS_TIMEOUT = 1.0
SLOW = 3.0


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(bot_token="xoxb-nylas-down") as fake:
        yield fake


@pytest.fixture
async def app(
    engine: AsyncEngine, slack: FakeSlack, nylas_fake: FakeNylas, tmp_path: Path
) -> AsyncIterator[TestClient]:
    config = tmp_path / "policy.toml"
    config.write_text(POLICY)
    settings = load_settings(
        _env_file=None,
        slack_bot_token="xoxb-nylas-down",
        slack_signing_secret=SIGNING_SECRET,
        slack_alert_channel=CHANNEL,
        slack_api_url=slack.url,
        config_file=config,
        **nylas_settings(nylas_fake, "v2"),
    )
    # The service's own Nylas client, with a short timeout and one retry to keep it quick.
    async with httpx.AsyncClient(timeout=NYLAS_TIMEOUT) as http:
        nylas = NylasClient(
            http,
            api_version="v2",
            base_url=nylas_fake.url,
            client_id=NYLAS_CLIENT_ID,
            client_secret=NYLAS_CLIENT_SECRET,
            max_retries=1,
        )
        client = await start_app(
            settings, engine=engine, nylas=nylas, migrate=False, scheduled_jobs=False
        )
        yield client
        await client.close()


async def v2_webhook(app: TestClient, trigger: str, account_id: str, at: datetime) -> None:
    raw = json.dumps(samples.v2_delivery(trigger, account_id=account_id, at=at)).encode()
    answer = await app.post(
        "/nylas/webhook", data=raw, headers={"X-Nylas-Signature": sign(NYLAS_CLIENT_SECRET, raw)}
    )
    assert answer.status == 200


async def known(sessions: Sessions, account_id: str) -> bool:
    async with sessions() as session:
        return await cases.get_account(session, account_id=account_id) is not None


async def posted_case(app: TestClient, sessions: Sessions, fake: FakeNylas, kind: str) -> Case:
    """Open a case of ``kind`` from webhooks and wait for its alert."""
    at = datetime.now(UTC) - timedelta(hours=1)
    if kind == "duplicate":
        fake.add_v2_account(id="a-old", email="dana@acme.com")
        fake.add_v2_account(id="a-new", email="dana@acme.com")
        await v2_webhook(app, "account.connected", "a-old", at)
        await eventually(lambda: known(sessions, "a-old"))
        await v2_webhook(app, "account.connected", "a-new", at + timedelta(minutes=1))
    else:
        fake.add_v2_account(id="a-old", email="bo@example.org", sync_state="stopped")
        await v2_webhook(app, "account.stopped", "a-old", at)

    async def alerted() -> bool:
        async with sessions() as session:
            case = await cases.get_open_case(session, account_id="a-old")
        return case is not None and case.kind == kind and case.slack_ts is not None

    await eventually(alerted, within=10)
    async with sessions() as session:
        case = await cases.get_open_case(session, account_id="a-old")
    assert case is not None
    return case


@pytest.mark.parametrize(
    ("action_id", "kind", "fault", "told"),
    [
        pytest.param(
            ids.RETRY,
            "stopped",
            "slow",
            "Retry of case #1 failed: Nylas did not answer POST /a/app-client-id/accounts/"
            "a-old/downgrade in time, so it may or may not have acted.",
            id="retry sync, Nylas slow",
        ),
        pytest.param(
            ids.REVOKE,
            "stopped",
            "5xx",
            # Revoke reads the account first; when that fails nothing is revoked.
            "Nothing was revoked for case #1: Nylas could not be asked whether the account "
            "is still broken. Nylas failed to answer GET /a/app-client-id/accounts/a-old "
            "after 2 attempts (HTTP 503",
            id="revoke, Nylas failing",
        ),
        pytest.param(
            ids.DELETE_OLD,
            "duplicate",
            "slow",
            "Deleting account a-old failed: Nylas did not answer DELETE "
            "/a/app-client-id/accounts/a-old in time after 2 attempts.",
            id="delete old account, Nylas slow",
        ),
    ],
)
async def test_an_action_while_nylas_fails_is_acked_told_and_leaves_the_case_open(
    app: TestClient,
    slack: FakeSlack,
    sessions: Sessions,
    nylas_fake: FakeNylas,
    action_id: str,
    kind: str,
    fault: str,
    told: str,
) -> None:
    case = await posted_case(app, sessions, nylas_fake, kind)
    if fault == "slow":
        nylas_fake.delay(r"/a/.*", SLOW)
    else:
        nylas_fake.fail("*", r"/a/.*", status=503, times=None)

    started = time.monotonic()
    assert await click(app, click_body(slack, action_id, str(case.id), ADMIN)) == 200
    acked_in = time.monotonic() - started
    assert acked_in < 3.0  # Slack's deadline, whatever Nylas does
    if fault == "slow":
        # Nylas has not been given up on yet (that takes NYLAS_TIMEOUT at least): the
        # acknowledgement did not wait for the outcome. A failing Nylas answers at once, so its
        # outcome may be told before the acknowledgement is read here.
        assert slack.responses == []

    async def told_privately() -> bool:
        return len(slack.responses) == 1

    await eventually(told_privately, within=10)
    (reply,) = slack.responses
    assert reply["response_type"] == "ephemeral"
    assert reply["text"].startswith(told), reply["text"]
    async with sessions() as session:
        after = await cases.get_case(session, case_id=case.id or 0)
    assert after is not None
    assert after.status == CaseStatus.OPEN and after.kind == kind
    assert (after.busy_with, after.busy_until) == (None, None)  # free for another try


# --- v2 webhooks while Nylas is away ---------------------------------------------------------


async def test_a_v2_webhook_waits_in_the_inbox_until_nylas_answers(
    sessions: Sessions, nylas: Nylas
) -> None:
    nylas.fake.add_v2_account(id="a-1", email="bo@example.org", sync_state="invalid-credentials")
    nylas.fake.fail("GET", r"/a/.*/accounts/a-1", status=503, times=None)
    clock = FrozenClock(datetime.now(UTC))
    start = clock()
    raw = json.dumps(samples.v2_delivery("account.invalid", account_id="a-1", at=start)).encode()
    async with sessions() as session, session.begin():
        for entry in split("v2", raw):
            await inbox.add_delivery(
                session,
                dedupe_key=entry.dedupe_key,
                source=entry.source,
                body=entry.body,
                received_at=clock(),
            )

    async def drain_due() -> InboxDelivery:
        await drain_inbox(sessions, nylas=nylas.v2, clock=clock, route=route)
        async with sessions() as session:
            (delivery,) = (await session.exec(select(InboxDelivery))).all()
        if delivery.status == InboxStatus.PENDING and delivery.lease_until is not None:
            clock.now = max(clock(), delivery.lease_until)  # on to its next try
        return delivery

    # Nylas is away for two hours: every retry finds it down.
    delivery = await drain_due()
    while clock() - start < timedelta(hours=2):
        assert delivery.status == InboxStatus.PENDING, delivery.last_error
        delivery = await drain_due()
    assert delivery.attempts > inbox.MAX_ATTEMPTS

    nylas.fake._failures.clear()  # Nylas is back
    delivery = await drain_due()

    assert delivery.status == InboxStatus.DONE
    async with sessions() as session:
        case = await cases.get_open_case(session, account_id="a-1")
        opened = (await session.exec(select(Case).order_by(col(Case.id)))).all()
    assert case is not None and case.state == "invalid-credentials"
    assert len(opened) == 1
