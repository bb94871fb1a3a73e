"""The end user's side, end to end: tracked links, emails and signed webhooks, nudges.

The service runs against the fake Slack, the fake Nylas (whose send endpoint is the support
mailbox's) and a fake receiver of the outreach webhook, all over HTTP on loopback; webhooks
and clicks are signed as Nylas and Slack sign them. The clock is injected: nudges come due
when the test moves it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp.test_utils import TestClient
from sqlmodel import select

from bot.slack import ids
from storage import cases
from storage.models import OutboxMessage, ReauthLink
from tests.bot.slack.support import (
    NOW,
    Sessions,
    click,
    click_body,
    expire,
    wait_posts,
)
from tests.conftest import NYLAS_API_KEY, NYLAS_CLIENT_ID, WEBHOOK_SECRET, FrozenClock
from tests.fakes.nylas import FakeNylas
from tests.fakes.receiver import FakeReceiver
from tests.fakes.slack import FakeSlack
from tests.waiting import eventually
from workflows.nylas import samples
from workflows.nylas.webhooks import sign

PUBLIC = "https://reauthbot.example.com"
REDIRECT = "https://app.example.com/nylas/callback"
SECRET = "outreach-secret-e2e"
EMAIL = "ana+work@example.com"


@pytest.fixture
async def receiver() -> AsyncIterator[FakeReceiver]:
    async with FakeReceiver(secret=SECRET) as fake:
        yield fake


def nylas_policy(nudges: str = "[]", extra: str = "") -> str:
    return (
        f'[outreach]\nchannel = "nylas"\ngrant_id = "g-support"\nnudges = {nudges}\n'
        f'subject = "Please reconnect your mailbox"\n{extra}'
    )


def webhook_policy(receiver: FakeReceiver, nudges: str = "[]") -> str:
    return (
        f'[outreach]\nchannel = "webhook"\nwebhook_url = "{receiver.url}/hooks/reauth"\n'
        f"nudges = {nudges}\n"
    )


async def started(
    start: Any, nylas_fake: FakeNylas, clock: FrozenClock, policy: str = "", **more: Any
) -> TestClient:
    nylas_fake.add_grant(id="g-support", email="support@acme.example", grant_status="valid")
    return await start(  # type: ignore[no-any-return]
        policy,
        clock=clock,
        nylas_api_url=nylas_fake.url,
        nylas_api_key=NYLAS_API_KEY,
        nylas_client_id=NYLAS_CLIENT_ID,
        nylas_redirect_uri=REDIRECT,
        public_url=PUBLIC,
        **more,
    )


async def private_reply(slack: FakeSlack, n: int | str = 1) -> str:
    async def answered() -> bool:
        return bool(slack.responses_to(n))

    await eventually(answered, within=10)
    (reply,) = slack.responses_to(n)
    assert reply["response_type"] == "ephemeral"
    return str(reply["text"])


def token_of(text: str) -> str:
    start = text.index(f"{PUBLIC}/r/") + len(f"{PUBLIC}/r/")
    return text[start:].split()[0].rstrip(">)")


async def thread_texts(slack: FakeSlack, at_least: int) -> list[str]:
    ts = min(ts for channel, ts in slack.messages if channel == "C0ALERTS")  # the card

    async def enough() -> bool:
        return len(slack.thread("C0ALERTS", ts)) >= at_least

    await eventually(enough, within=10)
    return [line["text"] for line in slack.thread("C0ALERTS", ts)]


async def link_row(sessions: Sessions) -> ReauthLink:
    async with sessions() as session:
        (link,) = (await session.exec(select(ReauthLink))).all()
    return link


async def test_a_tracked_link_redirects_to_hosted_auth_and_its_opens_are_recorded(
    start: Any, slack: FakeSlack, nylas_fake: FakeNylas, sessions: Sessions, clock: FrozenClock
) -> None:
    clock.now = NOW
    app = await started(start, nylas_fake, clock)
    await expire(app, email=EMAIL)
    await wait_posts(slack, 1)
    await click(app, click_body(slack, ids.LINK, "1", "U0ALICE"))
    reply = await private_reply(slack)
    assert f"{PUBLIC}/r/" in reply and "api.us.nylas.com" not in reply
    token = token_of(reply)
    stored = await link_row(sessions)
    assert token not in stored.token_hash  # only the hash is kept
    assert stored.created_by == "slack:U0ALICE"
    assert stored.expires_at == NOW + timedelta(days=7)

    clock.advance(minutes=13)
    answer = await app.get(f"/r/{token}", allow_redirects=False)
    assert answer.status == 302
    location = urlsplit(answer.headers["Location"])
    assert (location.scheme, location.netloc, location.path) == (
        "http",
        urlsplit(nylas_fake.url).netloc,
        "/v3/connect/auth",
    )
    query = {k: v[0] for k, v in parse_qs(location.query).items()}
    assert query["client_id"] == NYLAS_CLIENT_ID and query["redirect_uri"] == REDIRECT
    assert query["response_type"] == "code" and query["login_hint"] == EMAIL
    assert query["provider"] == "google"
    assert answer.headers["Cache-Control"] == "no-store"
    assert "Set-Cookie" not in answer.headers
    lines = await thread_texts(slack, 2)
    assert lines[-1] == "The end user opened the re-authentication link."

    clock.advance(minutes=2)
    assert (await app.get(f"/r/{token}", allow_redirects=False)).status == 302
    opened = await link_row(sessions)
    assert opened.opens == 2
    assert opened.first_opened_at == NOW + timedelta(minutes=13)
    assert opened.last_opened_at == NOW + timedelta(minutes=15)
    # The second open updates the card without another thread line.
    assert len(await thread_texts(slack, 2)) == 2
    metrics = await (await app.get("/metrics")).text()
    assert "reauthbot_links_opened_total 2.0" in metrics


async def test_unknown_expired_and_resolved_links_leak_nothing(
    start: Any,
    slack: FakeSlack,
    nylas_fake: FakeNylas,
    sessions: Sessions,
    clock: FrozenClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    clock.now = NOW
    app = await started(start, nylas_fake, clock)
    await expire(app, email=EMAIL)
    await wait_posts(slack, 1)
    await click(app, click_body(slack, ids.LINK, "1", "U0ALICE"))
    token = token_of(await private_reply(slack))
    answers = {}
    for name, path in {
        "unknown": "/r/" + "A" * 32,
        "garbled": "/r/%3Cscript%3E",
        "too long": "/r/" + "a" * 300,
    }.items():
        answers[name] = await app.get(path, allow_redirects=False)
    clock.advance(days=7, seconds=1)
    answers["expired"] = await app.get(f"/r/{token}", allow_redirects=False)
    statuses = {name: answer.status for name, answer in answers.items()}
    assert statuses == {"unknown": 404, "garbled": 404, "too long": 404, "expired": 410}
    assert "ask the team that sent it" in await answers["expired"].text()
    async with sessions() as session:
        assert (await cases.get_case(session, case_id=1)).status == "waiting_on_user"  # type: ignore[union-attr]
    assert (await link_row(sessions)).opens == 0  # refused opens change nothing

    # The end user re-authenticated: the link says so, and nothing else.
    clock.now = NOW + timedelta(hours=1)
    raw = json.dumps(
        samples.v3_notification(
            "grant.updated", grant_id="g-1", email=EMAIL, at=clock.now, reauthenticated=True
        )
    ).encode()
    await app.post(
        "/nylas/webhook", data=raw, headers={"X-Nylas-Signature": sign(WEBHOOK_SECRET, raw)}
    )

    async def resolved() -> bool:
        async with sessions() as session:
            case = await cases.get_case(session, case_id=1)
        return case is not None and case.status == "resolved"

    await eventually(resolved, within=10)
    connected = await app.get(f"/r/{token}", allow_redirects=False)
    assert connected.status == 200
    answers["connected"] = connected
    assert "connected again" in await connected.text()
    for answer in answers.values():
        shown = await answer.text() + json.dumps(dict(answer.headers))
        for secret in (EMAIL, "example.com", "g-1", "Traceback", token):
            assert secret not in shown
    for record in caplog.records:
        if record.levelno >= logging.INFO:
            logged = record.getMessage() + json.dumps(record.__dict__, default=str)
            assert token not in logged and EMAIL not in logged


async def test_email_the_user_sends_the_tracked_link_once_and_the_card_says_so(
    start: Any, slack: FakeSlack, nylas_fake: FakeNylas, sessions: Sessions, clock: FrozenClock
) -> None:
    clock.now = NOW
    app = await started(start, nylas_fake, clock, nylas_policy())
    await expire(app, email=EMAIL)
    await wait_posts(slack, 1)
    card = slack.calls_to("chat.postMessage")[0].params["blocks"]
    assert "Email the user" in json.dumps(card)
    await click(app, click_body(slack, ids.SEND_LINK, "1", "U0ALICE"))
    reply = await private_reply(slack)
    assert "Emailing a re-authentication link to ana+work@example.com" in reply

    async def emailed() -> bool:
        return len(nylas_fake.sent_messages) == 1

    await eventually(emailed, within=10)
    (sent,) = nylas_fake.sent_messages
    assert sent["grant_id"] == "g-support"
    assert [t["email"] if isinstance(t, dict) else t for t in sent["to"]] == [EMAIL]
    assert f"{PUBLIC}/r/" in sent["body"]
    lines = await thread_texts(slack, 2)
    assert lines[-1] == "Re-authentication link emailed to the end user."
    link = await link_row(sessions)
    assert (link.sent_via, link.sent_at) == ("nylas", NOW)
    assert len(nylas_fake.calls_to("POST", r"/v3/grants/g-support/messages/send")) == 1


async def test_a_click_without_the_link_permission_sends_nothing(
    start: Any, slack: FakeSlack, nylas_fake: FakeNylas, sessions: Sessions, clock: FrozenClock
) -> None:
    clock.now = NOW
    policy = nylas_policy() + '\n[permissions]\nlink = ["U0BOSS"]\n'
    app = await started(start, nylas_fake, clock, policy)
    await expire(app, email=EMAIL)
    await wait_posts(slack, 1)
    await click(app, click_body(slack, ids.SEND_LINK, "1", "U0MALLORY"))
    assert await private_reply(slack) == "You are not allowed to link cases."
    async with sessions() as session:
        assert (await session.exec(select(ReauthLink))).all() == []
        outreach = select(OutboxMessage).where(OutboxMessage.channel == "outreach")
        assert (await session.exec(outreach)).all() == []
    assert nylas_fake.sent_messages == []


async def test_the_webhook_is_signed_and_carries_the_tracked_link(
    start: Any,
    slack: FakeSlack,
    nylas_fake: FakeNylas,
    receiver: FakeReceiver,
    sessions: Sessions,
    clock: FrozenClock,
) -> None:
    clock.now = NOW
    app = await started(start, nylas_fake, clock, webhook_policy(receiver), outreach_secret=SECRET)
    await expire(app, email=EMAIL)
    await wait_posts(slack, 1)
    assert "Notify the user" in json.dumps(slack.calls_to("chat.postMessage")[0].params["blocks"])
    await click(app, click_body(slack, ids.SEND_LINK, "1", "U0ALICE"))

    async def posted() -> bool:
        return len(receiver.deliveries) == 1

    await eventually(posted, within=10)
    (delivery,) = receiver.deliveries
    assert delivery.signature_valid and delivery.status == 200
    event = delivery.json
    assert event is not None and event["type"] == "reauth.requested"
    assert event["data"]["email"] == EMAIL and event["data"]["case"] == 1
    assert event["data"]["link"].startswith(f"{PUBLIC}/r/")
    assert event["data"]["account_id"] == "g-1"


async def test_nudges_come_at_their_times_and_recovery_cancels_the_rest(
    start: Any,
    slack: FakeSlack,
    nylas_fake: FakeNylas,
    receiver: FakeReceiver,
    sessions: Sessions,
    clock: FrozenClock,
) -> None:
    clock.now = NOW
    policy = webhook_policy(receiver, nudges='["1d", "2d"]')
    app = await started(start, nylas_fake, clock, policy, outreach_secret=SECRET)
    await expire(app, email=EMAIL)
    await wait_posts(slack, 1)
    await click(app, click_body(slack, ids.SEND_LINK, "1", "U0ALICE"))

    async def events(count: int) -> None:
        async def arrived() -> bool:
            return len(receiver.events()) >= count

        await eventually(arrived, within=10)

    await events(1)
    clock.advance(hours=23)
    await slack_quiet()
    assert [e["type"] for e in receiver.events()] == ["reauth.requested"]
    clock.advance(hours=1, seconds=1)
    await events(2)
    assert [e["type"] for e in receiver.events()] == ["reauth.requested", "reauth.nudge"]

    # The end user re-authenticates: the second nudge is withdrawn, and the team's product
    # is told the mailbox is connected again.
    raw = json.dumps(
        samples.v3_notification(
            "grant.updated", grant_id="g-1", email=EMAIL, at=clock.now, reauthenticated=True
        )
    ).encode()
    await app.post(
        "/nylas/webhook", data=raw, headers={"X-Nylas-Signature": sign(WEBHOOK_SECRET, raw)}
    )
    await events(3)
    assert receiver.events()[-1]["type"] == "reauth.completed"
    clock.advance(days=3)
    await slack_quiet()
    assert [e["type"] for e in receiver.events()] == [
        "reauth.requested",
        "reauth.nudge",
        "reauth.completed",
    ]
    async with sessions() as session:
        outreach = (
            await session.exec(select(OutboxMessage).where(OutboxMessage.channel == "outreach"))
        ).all()
    assert sorted(m.status for m in outreach) == ["sent", "sent", "sent", "superseded"]


async def slack_quiet() -> None:
    """Give the drains (which look every second) time to send anything now due."""
    await asyncio.sleep(1.5)
