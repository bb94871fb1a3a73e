"""The outreach sink against the fake Nylas and the fake receiver, over real HTTP."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from bot.metrics import Metrics
from bot.notifier import SinkError
from bot.outreach import OutreachSink
from storage.models import OutboxMessage
from tests.conftest import NYLAS_API_KEY
from tests.fakes.nylas import FakeNylas
from tests.fakes.receiver import FakeReceiver
from tests.ports import closed_port_url
from tests.waiting import eventually
from workflows.outreach import COMPLETED, NUDGE, REQUESTED, NylasMailer, OutreachWebhook

GRANT = "support-grant"
SECRET = "outreach-secret-0b7e"
LINK = "https://reauth.example.com/r/tok-42"
SEND_PATH = r"/v3/grants/.*/messages/send"


def payload(event: str = REQUESTED, **changes: Any) -> dict[str, Any]:
    return {
        "event": event,
        "id": f"evt-42-{event}",
        "to": "ann@example.com",
        "account_id": "g-ann",
        "provider": "google",
        "case": 42,
        "link": LINK,
        "link_expires_at": "2026-12-09T14:05:00+00:00",
        "at": "2026-12-07T14:05:00+00:00",
    } | changes


def message(body: dict[str, Any]) -> OutboxMessage:
    now = datetime(2026, 12, 7, 14, 5, tzinfo=UTC)
    return OutboxMessage(
        id=1,
        case_id=42,
        channel="outreach",
        kind="outreach",
        payload=body,
        created_at=now,
        available_at=now,
    )


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield client


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def mailbox(nylas_fake: FakeNylas) -> FakeNylas:
    nylas_fake.add_grant(id=GRANT, email="support@example.com")
    return nylas_fake


@pytest.fixture
def email_sink(mailbox: FakeNylas, http: httpx.AsyncClient, metrics: Metrics) -> OutreachSink:
    mailer = NylasMailer(http, base_url=mailbox.url, api_key=NYLAS_API_KEY, grant_id=GRANT)
    return OutreachSink(channel="nylas", mailer=mailer, metrics=metrics)


@pytest.fixture
async def receiver() -> AsyncIterator[FakeReceiver]:
    async with FakeReceiver(secret=SECRET) as fake:
        yield fake


@pytest.fixture
def webhook_sink(receiver: FakeReceiver, http: httpx.AsyncClient, metrics: Metrics) -> OutreachSink:
    webhook = OutreachWebhook(http, url=receiver.url + "/reauth", secret=SECRET)
    return OutreachSink(channel="webhook", webhook=webhook, metrics=metrics)


def counted(metrics: Metrics, channel: str, outcome: str) -> float:
    value = metrics.registry.get_sample_value(
        "reauthbot_outreach_total", {"channel": channel, "outcome": outcome}
    )
    return value or 0.0


# -- the nylas channel ---------------------------------------------------------------------


async def test_a_request_sends_one_email(
    email_sink: OutreachSink, mailbox: FakeNylas, metrics: Metrics
) -> None:
    assert await email_sink.deliver(message(payload()), None, None) is None
    [sent] = mailbox.sent_messages
    assert sent["to"] == ["ann@example.com"]
    assert sent["subject"] == "Please reconnect your mailbox"
    assert f'<a href="{LINK}">' in sent["body"]
    assert "9 December 2026, 14:05 UTC" in sent["body"]
    assert "reminder" not in sent["body"].lower()
    assert counted(metrics, "nylas", "sent") == 1


async def test_a_nudge_sends_a_reminder(email_sink: OutreachSink, mailbox: FakeNylas) -> None:
    await email_sink.deliver(message(payload(NUDGE)), None, None)
    [sent] = mailbox.sent_messages
    assert sent["subject"] == "Reminder: Please reconnect your mailbox"
    assert sent["body"].startswith("<p>This is a reminder")


async def test_completed_sends_no_email(
    email_sink: OutreachSink, mailbox: FakeNylas, metrics: Metrics
) -> None:
    assert await email_sink.deliver(message(payload(COMPLETED)), None, None) is None
    assert mailbox.calls == []
    assert "reauthbot_outreach_total{" not in metrics.render().decode()


async def test_the_subject_and_template_are_the_operators(
    mailbox: FakeNylas, http: httpx.AsyncClient
) -> None:
    mailer = NylasMailer(http, base_url=mailbox.url, api_key=NYLAS_API_KEY, grant_id=GRANT)
    sink = OutreachSink(
        channel="nylas", mailer=mailer, subject="Action needed", template="Go: {link} ({expires})"
    )
    await sink.deliver(message(payload(NUDGE)), None, None)
    [sent] = mailbox.sent_messages
    assert sent["subject"] == "Reminder: Action needed"
    assert sent["body"] == f'<p>Go: <a href="{LINK}">{LINK}</a> (9 December 2026, 14:05 UTC)</p>'


@pytest.mark.parametrize("status", [400, 403, 422])
async def test_a_refused_email_fails_for_good(
    email_sink: OutreachSink, mailbox: FakeNylas, metrics: Metrics, status: int
) -> None:
    mailbox.fail("POST", SEND_PATH, status)
    with pytest.raises(SinkError) as caught:
        await email_sink.deliver(message(payload()), None, None)
    assert caught.value.code == f"outreach_rejected_{status}"
    assert caught.value.permanent
    assert counted(metrics, "nylas", "rejected") == 1


async def test_an_unknown_grant_fails_for_good(
    nylas_fake: FakeNylas, http: httpx.AsyncClient
) -> None:
    mailer = NylasMailer(http, base_url=nylas_fake.url, api_key=NYLAS_API_KEY, grant_id="gone")
    sink = OutreachSink(channel="nylas", mailer=mailer)
    with pytest.raises(SinkError) as caught:
        await sink.deliver(message(payload()), None, None)
    assert (caught.value.code, caught.value.permanent) == ("outreach_rejected_404", True)


async def test_a_rate_limited_email_is_retried_after_the_delay(
    email_sink: OutreachSink, mailbox: FakeNylas, metrics: Metrics
) -> None:
    mailbox.fail("POST", SEND_PATH, 429, headers={"Retry-After": "12"})
    with pytest.raises(SinkError) as caught:
        await email_sink.deliver(message(payload()), None, None)
    assert caught.value.code == "outreach_unavailable"
    assert not caught.value.permanent
    assert caught.value.retry_after == 12.0
    assert counted(metrics, "nylas", "unavailable") == 1
    await email_sink.deliver(message(payload()), None, None)
    assert len(mailbox.sent_messages) == 1
    assert counted(metrics, "nylas", "sent") == 1


async def test_an_unreachable_nylas_is_retried(http: httpx.AsyncClient, metrics: Metrics) -> None:
    mailer = NylasMailer(http, base_url=closed_port_url(), api_key=NYLAS_API_KEY, grant_id=GRANT)
    sink = OutreachSink(channel="nylas", mailer=mailer, metrics=metrics)
    with pytest.raises(SinkError) as caught:
        await sink.deliver(message(payload()), None, None)
    assert (caught.value.code, caught.value.permanent) == ("outreach_unavailable", False)
    assert caught.value.retry_after is None


async def test_an_email_that_may_have_left_is_never_sent_again(
    mailbox: FakeNylas, metrics: Metrics
) -> None:
    mailbox.delay(SEND_PATH, 5.0, times=1)
    async with httpx.AsyncClient(timeout=0.2) as impatient:
        mailer = NylasMailer(impatient, base_url=mailbox.url, api_key=NYLAS_API_KEY, grant_id=GRANT)
        sink = OutreachSink(channel="nylas", mailer=mailer, metrics=metrics)
        with pytest.raises(SinkError) as caught:
            await sink.deliver(message(payload()), None, None)
    assert (caught.value.code, caught.value.permanent) == ("outreach_uncertain", True)
    assert counted(metrics, "nylas", "uncertain") == 1


# -- the webhook channel -------------------------------------------------------------------


@pytest.mark.parametrize("event", [REQUESTED, NUDGE, COMPLETED])
async def test_every_event_is_posted_signed(
    webhook_sink: OutreachSink, receiver: FakeReceiver, metrics: Metrics, event: str
) -> None:
    assert await webhook_sink.deliver(message(payload(event)), None, None) is None
    [delivery] = receiver.deliveries
    assert delivery.path == "/reauth"
    assert delivery.signature_valid
    assert delivery.json == {
        "id": f"evt-42-{event}",
        "type": event,
        "created_at": "2026-12-07T14:05:00+00:00",
        "data": {
            "account_id": "g-ann",
            "email": "ann@example.com",
            "provider": "google",
            "case": 42,
            "link": LINK,
            "link_expires_at": "2026-12-09T14:05:00+00:00",
        },
    }
    assert counted(metrics, "webhook", "sent") == 1


async def test_a_completed_event_may_have_no_link(
    webhook_sink: OutreachSink, receiver: FakeReceiver
) -> None:
    body = payload(COMPLETED, link=None, link_expires_at=None, provider=None)
    await webhook_sink.deliver(message(body), None, None)
    data = receiver.deliveries[0].json["data"]
    assert (data["link"], data["link_expires_at"], data["provider"]) == (None, None, None)


@pytest.mark.parametrize(
    ("status", "retry_after", "code", "permanent", "outcome"),
    [
        (429, "4", "outreach_unavailable", False, "unavailable"),
        (503, None, "outreach_unavailable", False, "unavailable"),
        (410, None, "outreach_rejected_410", True, "rejected"),
    ],
)
async def test_webhook_errors_map_to_sink_errors(
    webhook_sink: OutreachSink,
    receiver: FakeReceiver,
    metrics: Metrics,
    status: int,
    retry_after: str | None,
    code: str,
    permanent: bool,
    outcome: str,
) -> None:
    receiver.fail(status, retry_after=retry_after)
    with pytest.raises(SinkError) as caught:
        await webhook_sink.deliver(message(payload()), None, None)
    assert (caught.value.code, caught.value.permanent) == (code, permanent)
    assert caught.value.retry_after == (float(retry_after) if retry_after else None)
    assert counted(metrics, "webhook", outcome) == 1


async def test_a_wrong_secret_fails_for_good(
    receiver: FakeReceiver, http: httpx.AsyncClient
) -> None:
    webhook = OutreachWebhook(http, url=receiver.url, secret="stale-secret")
    sink = OutreachSink(channel="webhook", webhook=webhook)
    with pytest.raises(SinkError) as caught:
        await sink.deliver(message(payload()), None, None)
    assert (caught.value.code, caught.value.permanent) == ("outreach_rejected_401", True)


async def test_an_unanswered_event_is_sent_again_with_the_same_id(
    receiver: FakeReceiver, metrics: Metrics
) -> None:
    receiver.delay(0.5, times=1)
    async with httpx.AsyncClient(timeout=0.2) as impatient:
        webhook = OutreachWebhook(impatient, url=receiver.url, secret=SECRET)
        sink = OutreachSink(channel="webhook", webhook=webhook, metrics=metrics)
        with pytest.raises(SinkError) as caught:
            await sink.deliver(message(payload()), None, None)
        assert (caught.value.code, caught.value.permanent) == ("outreach_unavailable", False)
        await sink.deliver(message(payload()), None, None)
    assert counted(metrics, "webhook", "uncertain") == 1
    assert counted(metrics, "webhook", "sent") == 1

    async def both_recorded() -> bool:  # the held request is recorded when its delay ends
        return len(receiver.deliveries) == 2

    await eventually(both_recorded)
    ids = [d.json["id"] for d in receiver.deliveries]
    assert ids == ["evt-42-reauth.requested"] * 2
    assert len(receiver.events()) == 1


# -- bad messages and setup ----------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        payload(event="reauth.unknown"),
        {k: v for k, v in payload().items() if k != "event"},
        {k: v for k, v in payload().items() if k != "to"},
        payload(to=""),
        payload(to=["ann@example.com"]),
        payload(link=None),
        payload(link_expires_at=None),
        payload(link_expires_at="next tuesday"),
    ],
)
async def test_a_bad_email_message_fails_for_good(
    email_sink: OutreachSink, mailbox: FakeNylas, metrics: Metrics, body: dict[str, Any]
) -> None:
    with pytest.raises(SinkError) as caught:
        await email_sink.deliver(message(body), None, None)
    assert (caught.value.code, caught.value.permanent) == ("outreach_bad_message", True)
    assert mailbox.calls == []
    assert "reauthbot_outreach_total{" not in metrics.render().decode()


@pytest.mark.parametrize(
    "body",
    [
        payload(event="reauth.unknown"),
        {k: v for k, v in payload().items() if k != "to"},
        {k: v for k, v in payload().items() if k != "id"},
    ],
)
async def test_a_bad_webhook_message_fails_for_good(
    webhook_sink: OutreachSink, receiver: FakeReceiver, body: dict[str, Any]
) -> None:
    with pytest.raises(SinkError) as caught:
        await webhook_sink.deliver(message(body), None, None)
    assert (caught.value.code, caught.value.permanent) == ("outreach_bad_message", True)
    assert receiver.deliveries == []


def test_the_channel_must_be_known_and_have_its_client(http: httpx.AsyncClient) -> None:
    mailer = NylasMailer(http, base_url="http://x", api_key="k", grant_id="g")
    webhook = OutreachWebhook(http, url="http://x", secret="s")
    with pytest.raises(ValueError, match="channel"):
        OutreachSink(channel="sms", mailer=mailer)
    with pytest.raises(ValueError, match="NylasMailer"):
        OutreachSink(channel="nylas", webhook=webhook)
    with pytest.raises(ValueError, match="OutreachWebhook"):
        OutreachSink(channel="webhook", mailer=mailer)
    assert OutreachSink(channel="webhook", webhook=webhook).name == "outreach"


def test_a_bad_template_stops_the_sink_from_being_built(http: httpx.AsyncClient) -> None:
    mailer = NylasMailer(http, base_url="http://x", api_key="k", grant_id="g")
    with pytest.raises(ValueError, match=r"\{link\}"):
        OutreachSink(channel="nylas", mailer=mailer, template="No link, until {expires}.")
    with pytest.raises(ValueError, match=r"\{who\}"):
        OutreachSink(channel="nylas", mailer=mailer, template="{who}: {link}")


# -- metrics -------------------------------------------------------------------------------


async def test_the_metrics_expose_each_attempt_by_channel_and_outcome(
    email_sink: OutreachSink, mailbox: FakeNylas, metrics: Metrics
) -> None:
    mailbox.fail("POST", SEND_PATH, 503)
    mailbox.fail("POST", SEND_PATH, 400)
    for _ in range(3):
        with contextlib.suppress(SinkError):
            await email_sink.deliver(message(payload()), None, None)
    text = metrics.render().decode()
    assert "# TYPE reauthbot_outreach_total counter" in text
    assert 'reauthbot_outreach_total{channel="nylas",outcome="unavailable"} 1.0' in text
    assert 'reauthbot_outreach_total{channel="nylas",outcome="rejected"} 1.0' in text
    assert 'reauthbot_outreach_total{channel="nylas",outcome="sent"} 1.0' in text
