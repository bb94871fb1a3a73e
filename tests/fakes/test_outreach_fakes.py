"""The fake Nylas's message sending and the fake outreach receiver, driven with plain HTTP."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import httpx
import pytest

from tests.fakes.nylas import FakeNylas
from tests.fakes.receiver import FakeReceiver

KEY = "nyk_fake_test"
SECRET = "receiver-secret"


async def send(fake: FakeNylas, grant: str, body: Any, *, key: str = KEY) -> httpx.Response:
    async with httpx.AsyncClient(timeout=5) as http:
        return await http.post(
            f"{fake.url}/v3/grants/{grant}/messages/send",
            json=body,
            headers={"Authorization": f"Bearer {key}"},
        )


async def test_a_message_is_sent_and_recorded() -> None:
    async with FakeNylas(api_key=KEY) as fake:
        fake.add_grant(id="g1", email="support@example.com")
        body = {"to": [{"email": "ann@example.com"}], "subject": "Hi", "body": "<p>x</p>"}
        response = await send(fake, "g1", body)
    assert response.status_code == 200
    answer = response.json()
    assert answer["grant_id"] == "g1"
    assert answer["data"]["grant_id"] == "g1"
    assert answer["data"]["to"] == [{"email": "ann@example.com"}]
    assert abs(answer["data"]["date"] - time.time()) < 5
    assert fake.sent_messages == [
        {
            "id": answer["data"]["id"],
            "grant_id": "g1",
            "to": ["ann@example.com"],
            "subject": "Hi",
            "body": "<p>x</p>",
        }
    ]


@pytest.mark.parametrize(
    "body", [{"subject": "Hi"}, {"to": []}, {"to": "ann@example.com"}, {"to": [{"name": "A"}]}]
)
async def test_a_message_without_recipients_is_400(body: dict[str, Any]) -> None:
    async with FakeNylas(api_key=KEY) as fake:
        fake.add_grant(id="g1", email="support@example.com")
        response = await send(fake, "g1", body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert fake.sent_messages == []


async def test_an_unknown_grant_or_a_wrong_key_is_refused() -> None:
    body = {"to": [{"email": "ann@example.com"}]}
    async with FakeNylas(api_key=KEY) as fake:
        fake.add_grant(id="g1", email="support@example.com")
        missing = await send(fake, "g2", body)
        unauthorized = await send(fake, "g1", body, key="nope")
    assert missing.status_code == 404
    assert missing.json()["error"]["type"] == "not_found_error"
    assert unauthorized.status_code == 401
    assert fake.sent_messages == []


def signed(body: bytes, *, secret: str = SECRET, at: int | None = None) -> dict[str, str]:
    timestamp = str(int(time.time()) if at is None else at)
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return {
        "X-Reauthbot-Timestamp": timestamp,
        "X-Reauthbot-Signature": "sha256=" + mac.hexdigest(),
    }


async def test_the_receiver_checks_signatures_and_records_everything() -> None:
    body = b'{"id":"e1"}'
    async with FakeReceiver(secret=SECRET) as receiver, httpx.AsyncClient(timeout=5) as http:
        good = await http.post(receiver.url + "/a", content=body, headers=signed(body))
        again = await http.post(receiver.url + "/a", content=body, headers=signed(body))
        wrong = await http.post(receiver.url + "/b", content=body, headers=signed(body, secret="x"))
        old = await http.post(receiver.url, content=body, headers=signed(body, at=1_000))
        bare = await http.post(receiver.url, content=b"not json")
    assert [r.status_code for r in (good, again, wrong, old, bare)] == [200, 200, 401, 401, 401]
    assert [d.signature_valid for d in receiver.deliveries] == [True, True, False, False, False]
    assert [d.path for d in receiver.deliveries][:3] == ["/a", "/a", "/b"]
    assert receiver.deliveries[-1].json is None
    assert receiver.deliveries[-1].body == b"not json"
    assert receiver.events() == [{"id": "e1"}]


async def test_the_receiver_fails_as_told() -> None:
    body = b'{"id":"e1"}'
    async with FakeReceiver(secret=SECRET) as receiver, httpx.AsyncClient(timeout=5) as http:
        receiver.fail(429, times=2, retry_after=3)
        answers = [
            await http.post(receiver.url, content=body, headers=signed(body)) for _ in range(3)
        ]
    assert [a.status_code for a in answers] == [429, 429, 200]
    assert answers[0].headers["Retry-After"] == "3"
    assert [d.status for d in receiver.deliveries] == [429, 429, 200]
    assert receiver.events() == [{"id": "e1"}]
