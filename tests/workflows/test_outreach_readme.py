"""The README's example of checking an outreach signature works on what the service sends."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.fakes.receiver import FakeReceiver
from workflows.outreach import OutreachWebhook, sign

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- outreach-signature-example -->"
SECRET = "outreach-secret-readme"

Verify = Callable[[str, str | None, bytes, str | None], bool]


def readme_example() -> str:
    """Return the Python block that follows the marker line in README.md."""
    text = README.read_text(encoding="utf-8")
    assert text.count(MARKER) == 1, f"README.md must hold {MARKER} once"
    after = text[text.index(MARKER) :].split("\n", 1)[1]
    found = re.match(r"\s*```python\n(.*?)\n```", after, re.DOTALL)
    assert found, f"a ```python block must follow {MARKER} in README.md"
    return found.group(1)


def readme_verify() -> Verify:
    namespace: dict[str, Any] = {}
    exec(compile(readme_example(), str(README), "exec"), namespace)
    verify: Verify = namespace["verify"]
    return verify


async def test_the_readme_example_accepts_a_request_the_service_signed() -> None:
    verify = readme_verify()
    async with FakeReceiver(secret=SECRET) as receiver, httpx.AsyncClient(timeout=5) as http:
        hook = OutreachWebhook(http, url=receiver.url + "/hook", secret=SECRET)
        await hook.post({"id": "evt-1", "type": "reauth.requested", "data": {"case": 1}})
    [delivery] = receiver.deliveries
    timestamp = delivery.headers["X-Reauthbot-Timestamp"]
    signature = delivery.headers["X-Reauthbot-Signature"]

    assert verify(SECRET, timestamp, delivery.body, signature)
    assert not verify(SECRET, timestamp, delivery.body + b" ", signature)
    assert not verify("another secret", timestamp, delivery.body, signature)
    assert not verify(SECRET, str(int(timestamp) + 1), delivery.body, signature)
    assert not verify(SECRET, None, delivery.body, signature)
    assert not verify(SECRET, timestamp, delivery.body, None)


def test_the_readme_example_refuses_a_replayed_request() -> None:
    verify = readme_verify()
    body = b'{"id":"evt-1"}'
    old = int(time.time()) - 6 * 60
    assert not verify(SECRET, str(old), body, sign(SECRET, old, body))
    recent = int(time.time()) - 4 * 60
    assert verify(SECRET, str(recent), body, sign(SECRET, recent, body))
