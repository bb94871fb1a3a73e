"""The outreach clients against the fake Nylas and the fake receiver, over real HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

import httpx
import pytest

from tests.conftest import NYLAS_API_KEY
from tests.fakes.nylas import FakeNylas
from tests.fakes.receiver import FakeReceiver
from tests.ports import closed_port_url
from workflows.outreach import (
    NylasMailer,
    OutreachError,
    OutreachRejected,
    OutreachUnavailable,
    OutreachUncertain,
    OutreachWebhook,
    email_text,
    sign,
    text_to_html,
    verify,
)

# Unquoted, the slash would miss the route: a sent message shows the id was quoted.
GRANT = "support/grant 1"
SECRET = "outreach-secret-51aa"
LINK = "https://reauth.example.com/r/abc123?x=1&y=2"
EXPIRES = datetime(2026, 12, 9, 14, 5, tzinfo=UTC)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield client


@pytest.fixture
def mailbox(nylas_fake: FakeNylas) -> FakeNylas:
    nylas_fake.add_grant(id=GRANT, email="support@example.com")
    return nylas_fake


def mailer(http: httpx.AsyncClient, url: str, *, grant_id: str = GRANT) -> NylasMailer:
    return NylasMailer(http, base_url=url, api_key=NYLAS_API_KEY, grant_id=grant_id)


@pytest.fixture
async def receiver() -> AsyncIterator[FakeReceiver]:
    async with FakeReceiver(secret=SECRET) as fake:
        yield fake


# -- email ---------------------------------------------------------------------------------


async def test_an_email_is_sent_from_the_grant_with_the_link_as_an_anchor(
    mailbox: FakeNylas, http: httpx.AsyncClient
) -> None:
    text = email_text(link=LINK, expires_at=EXPIRES, nudge=False)
    message_id = await mailer(http, mailbox.url).send(
        to="ann@example.com", subject="Please reconnect your mailbox", text=text
    )
    [call] = mailbox.calls
    assert call.method == "POST"
    assert call.path == f"/v3/grants/{GRANT}/messages/send"
    assert call.headers["Authorization"] == f"Bearer {NYLAS_API_KEY}"
    [sent] = mailbox.sent_messages
    assert sent["id"] == message_id
    assert sent["grant_id"] == GRANT
    assert sent["to"] == ["ann@example.com"]
    assert sent["subject"] == "Please reconnect your mailbox"
    anchor = '<a href="https://reauth.example.com/r/abc123?x=1&amp;y=2">'
    assert anchor in sent["body"]
    assert sent["body"].startswith("<p>Hello,</p>")
    assert "9 December 2026, 14:05 UTC" in sent["body"]


async def test_the_message_id_comes_from_nylas_answer(
    mailbox: FakeNylas, http: httpx.AsyncClient
) -> None:
    client = mailer(http, mailbox.url)
    first = await client.send(to="ann@example.com", subject="s", text="t")
    second = await client.send(to="ann@example.com", subject="s", text="t")
    assert first != second
    assert [m["id"] for m in mailbox.sent_messages] == [first, second]


def test_the_html_body_escapes_text_and_keeps_paragraphs_and_lines() -> None:
    html = text_to_html("Hi <b>&</b>,\nsecond line\n\nsee http://x.example.com/a?b=<c>.")
    assert html == (
        "<p>Hi &lt;b&gt;&amp;&lt;/b&gt;,<br>\nsecond line</p>\n"
        '<p>see <a href="http://x.example.com/a?b=">http://x.example.com/a?b=</a>&lt;c&gt;.</p>'
    )


async def test_a_429_with_retry_after_is_unavailable_with_the_delay(
    mailbox: FakeNylas, http: httpx.AsyncClient
) -> None:
    mailbox.fail("POST", r"/v3/grants/.*/messages/send", 429, headers={"Retry-After": "7"})
    with pytest.raises(OutreachUnavailable) as caught:
        await mailer(http, mailbox.url).send(to="ann@example.com", subject="s", text="t")
    assert caught.value.status == 429
    assert caught.value.retry_after == 7.0
    assert mailbox.sent_messages == []


async def test_a_retry_after_date_is_read_as_seconds(
    mailbox: FakeNylas, http: httpx.AsyncClient
) -> None:
    when = format_datetime(datetime.fromtimestamp(time.time() + 120, UTC), usegmt=True)
    mailbox.fail("POST", r"/v3/.*", 503, headers={"Retry-After": when})
    with pytest.raises(OutreachUnavailable) as caught:
        await mailer(http, mailbox.url).send(to="ann@example.com", subject="s", text="t")
    assert caught.value.retry_after is not None
    assert 100 < caught.value.retry_after <= 120


@pytest.mark.parametrize("status", [500, 502, 503, 408])
async def test_a_5xx_or_408_is_unavailable(
    mailbox: FakeNylas, http: httpx.AsyncClient, status: int
) -> None:
    mailbox.fail("POST", r"/v3/.*", status)
    with pytest.raises(OutreachUnavailable) as caught:
        await mailer(http, mailbox.url).send(to="ann@example.com", subject="s", text="t")
    assert caught.value.status == status
    assert caught.value.retry_after is None


async def test_a_bad_request_is_rejected(mailbox: FakeNylas, http: httpx.AsyncClient) -> None:
    mailbox.fail("POST", r"/v3/.*", 400)
    with pytest.raises(OutreachRejected) as caught:
        await mailer(http, mailbox.url).send(to="ann@example.com", subject="s", text="t")
    assert caught.value.status == 400
    assert "HTTP 400" in str(caught.value)


async def test_an_unknown_grant_is_rejected(nylas_fake: FakeNylas, http: httpx.AsyncClient) -> None:
    with pytest.raises(OutreachRejected) as caught:
        await mailer(http, nylas_fake.url, grant_id="nobody").send(
            to="ann@example.com", subject="s", text="t"
        )
    assert caught.value.status == 404
    assert "Grant not found" in str(caught.value)


async def test_a_wrong_api_key_is_rejected_without_showing_either_key(
    mailbox: FakeNylas, http: httpx.AsyncClient
) -> None:
    wrong = "nyk_v0_wrong_key_0000"
    client = NylasMailer(http, base_url=mailbox.url, api_key=wrong, grant_id=GRANT)
    with pytest.raises(OutreachRejected) as caught:
        await client.send(to="ann@example.com", subject="s", text="t")
    assert caught.value.status == 401
    assert wrong not in str(caught.value)
    assert wrong not in repr(client)


async def test_an_error_text_echoing_the_api_key_is_scrubbed(
    mailbox: FakeNylas, http: httpx.AsyncClient
) -> None:
    echo = {"request_id": "r1", "error": {"type": "x", "message": f"bad key {NYLAS_API_KEY}"}}
    mailbox.fail("POST", r"/v3/.*", 400, body=echo)
    mailbox.fail("POST", r"/v3/.*", 503, body=echo)
    client = mailer(http, mailbox.url)
    errors: list[OutreachError] = []
    for _ in range(2):
        with pytest.raises(OutreachError) as caught:
            await client.send(to="ann@example.com", subject="s", text="t")
        errors.append(caught.value)
    assert [type(e) for e in errors] == [OutreachRejected, OutreachUnavailable]
    for error in errors:
        assert NYLAS_API_KEY not in str(error)
        assert "[redacted]" in str(error)


async def test_no_answer_in_time_is_uncertain(mailbox: FakeNylas, http: httpx.AsyncClient) -> None:
    mailbox.delay(r"/v3/.*", 5.0)
    async with httpx.AsyncClient(timeout=0.2) as impatient:
        with pytest.raises(OutreachUncertain) as caught:
            await mailer(impatient, mailbox.url).send(to="ann@example.com", subject="s", text="t")
    assert caught.value.status is None
    assert NYLAS_API_KEY not in str(caught.value)


async def test_a_connection_dropped_after_sending_is_uncertain(http: httpx.AsyncClient) -> None:
    received = asyncio.Event()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        received.set()
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        with pytest.raises(OutreachUncertain) as caught:
            await mailer(http, f"http://127.0.0.1:{port}").send(
                to="ann@example.com", subject="s", text="t"
            )
    assert received.is_set()
    assert NYLAS_API_KEY not in str(caught.value)


async def test_a_refused_connection_is_unavailable(http: httpx.AsyncClient) -> None:
    with pytest.raises(OutreachUnavailable) as caught:
        await mailer(http, closed_port_url()).send(to="ann@example.com", subject="s", text="t")
    assert caught.value.status is None
    assert NYLAS_API_KEY not in str(caught.value)


# -- the text ------------------------------------------------------------------------------


def test_the_default_text_is_short_and_names_the_link_and_its_end() -> None:
    text = email_text(link=LINK, expires_at=EXPIRES, nudge=False)
    assert LINK in text.splitlines()
    assert "Please reconnect it by opening this link:" in text
    assert "The link works until 9 December 2026, 14:05 UTC." in text
    assert "reminder" not in text.lower()


def test_a_nudge_opens_with_a_reminder() -> None:
    text = email_text(link=LINK, expires_at=EXPIRES, nudge=True)
    assert text.splitlines()[0].startswith("This is a reminder")


def test_an_expiry_in_another_zone_is_shown_in_utc() -> None:
    paris = datetime(2026, 12, 9, 15, 5, tzinfo=timezone(timedelta(hours=1)))
    assert "9 December 2026, 14:05 UTC" in email_text(link=LINK, expires_at=paris, nudge=False)


def test_a_template_replaces_the_text() -> None:
    template = "Reconnect: {link}\nValid until {expires}.\n{{not a placeholder}}"
    text = email_text(link=LINK, expires_at=EXPIRES, nudge=True, template=template)
    assert (
        text == f"Reconnect: {LINK}\nValid until 9 December 2026, 14:05 UTC.\n{{not a placeholder}}"
    )


def test_a_template_with_an_unknown_placeholder_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\{name\}"):
        email_text(link=LINK, expires_at=EXPIRES, nudge=False, template="Hi {name}: {link}")


def test_a_template_without_the_link_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\{link\}"):
        email_text(link=LINK, expires_at=EXPIRES, nudge=False, template="Until {expires}.")


@pytest.mark.parametrize("template", ["{link", "{link} {0}", "{link} {}", "{link.upper}"])
def test_a_malformed_template_is_refused(template: str) -> None:
    with pytest.raises(ValueError):
        email_text(link=LINK, expires_at=EXPIRES, nudge=False, template=template)


# -- the webhook ---------------------------------------------------------------------------

EVENT = {"id": "evt-1", "type": "reauth.requested", "data": {"email": "ann@example.com"}}


async def test_the_webhook_is_signed_so_the_receiver_accepts_it(
    receiver: FakeReceiver, http: httpx.AsyncClient
) -> None:
    hook = OutreachWebhook(http, url=receiver.url + "/hooks/reauth", secret=SECRET)
    await hook.post(EVENT)
    [delivery] = receiver.deliveries
    assert delivery.path == "/hooks/reauth"
    assert delivery.signature_valid
    assert delivery.status == 200
    assert delivery.body == json.dumps(EVENT, separators=(",", ":")).encode()
    assert delivery.json == EVENT
    assert delivery.headers["Content-Type"] == "application/json"
    timestamp = delivery.headers["X-Reauthbot-Timestamp"]
    assert timestamp.isdigit()
    assert abs(int(timestamp) - time.time()) < 5
    assert delivery.headers["X-Reauthbot-Signature"].startswith("sha256=")


async def test_the_webhook_timestamp_comes_from_its_clock(
    receiver: FakeReceiver, http: httpx.AsyncClient
) -> None:
    hook = OutreachWebhook(http, url=receiver.url, secret=SECRET, clock=lambda: 1_800_000_000.9)
    with pytest.raises(OutreachRejected) as caught:  # far from the receiver's now
        await hook.post(EVENT)
    assert caught.value.status == 401
    [delivery] = receiver.deliveries
    assert delivery.headers["X-Reauthbot-Timestamp"] == "1800000000"
    assert delivery.headers["X-Reauthbot-Signature"] == sign(SECRET, 1_800_000_000, delivery.body)


async def test_a_wrong_webhook_secret_is_refused_and_not_shown(
    receiver: FakeReceiver, http: httpx.AsyncClient
) -> None:
    hook = OutreachWebhook(http, url=receiver.url, secret="not-the-secret")
    with pytest.raises(OutreachRejected) as caught:
        await hook.post(EVENT)
    assert caught.value.status == 401
    assert "not-the-secret" not in str(caught.value)
    assert not receiver.deliveries[0].signature_valid


@pytest.mark.parametrize(
    ("status", "retry_after", "expected"),
    [
        (429, "3", OutreachUnavailable),
        (503, None, OutreachUnavailable),
        (400, None, OutreachRejected),
    ],
)
async def test_webhook_failures_are_classified(
    receiver: FakeReceiver,
    http: httpx.AsyncClient,
    status: int,
    retry_after: str | None,
    expected: type[OutreachError],
) -> None:
    receiver.fail(status, retry_after=retry_after)
    hook = OutreachWebhook(http, url=receiver.url, secret=SECRET)
    with pytest.raises(expected) as caught:
        await hook.post(EVENT)
    assert caught.value.status == status
    if retry_after is not None:
        assert isinstance(caught.value, OutreachUnavailable)
        assert caught.value.retry_after == 3.0
    await hook.post(EVENT)  # the failure was injected once
    assert receiver.events() == [EVENT]


async def test_a_webhook_that_does_not_answer_is_uncertain(receiver: FakeReceiver) -> None:
    receiver.delay(5.0)
    async with httpx.AsyncClient(timeout=0.2) as impatient:
        hook = OutreachWebhook(impatient, url=receiver.url, secret=SECRET)
        with pytest.raises(OutreachUncertain):
            await hook.post(EVENT)


async def test_an_unreachable_webhook_is_unavailable(http: httpx.AsyncClient) -> None:
    hook = OutreachWebhook(http, url=closed_port_url() + "/hook", secret=SECRET)
    with pytest.raises(OutreachUnavailable):
        await hook.post(EVENT)


# -- sign and verify -----------------------------------------------------------------------

BODY = b'{"id":"evt-1"}'
NOW = 1_800_000_000.0


def test_a_good_signature_is_accepted() -> None:
    assert verify(SECRET, "1800000000", BODY, sign(SECRET, 1_800_000_000, BODY), now=NOW)


@pytest.mark.parametrize(
    ("timestamp", "body", "signature"),
    [
        ("1800000000", b'{"id":"evt-2"}', sign(SECRET, 1_800_000_000, BODY)),  # body changed
        ("1800000001", BODY, sign(SECRET, 1_800_000_000, BODY)),  # timestamp changed
        ("1799999000", BODY, sign(SECRET, 1_799_999_000, BODY)),  # replayed, 1000 s old
        ("1800001000", BODY, sign(SECRET, 1_800_001_000, BODY)),  # from the future
        (None, BODY, sign(SECRET, 1_800_000_000, BODY)),  # no timestamp
        ("1800000000", BODY, None),  # no signature
        ("1800000000", BODY, sign("another secret", 1_800_000_000, BODY)),  # wrong secret
        ("1800000000", BODY, sign(SECRET, 1_800_000_000, BODY)[7:]),  # no "sha256="
        ("1800000000", BODY, "sha256=zz"),  # garbled
        ("1800000000", BODY, "sha256=é"),  # not ASCII
        ("18e8", BODY, sign(SECRET, 1_800_000_000, BODY)),  # not an integer
        ("", BODY, sign(SECRET, 1_800_000_000, BODY)),
    ],
)
def test_a_bad_signature_is_refused(
    timestamp: str | None, body: bytes, signature: str | None
) -> None:
    assert not verify(SECRET, timestamp, body, signature, now=NOW)


def test_the_tolerance_can_be_set() -> None:
    signature = sign(SECRET, 1_799_999_000, BODY)
    assert verify(SECRET, "1799999000", BODY, signature, now=NOW, tolerance=1000)
    assert not verify(SECRET, "1799999000", BODY, signature, now=NOW, tolerance=999)
