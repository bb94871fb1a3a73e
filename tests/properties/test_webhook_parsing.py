"""Webhook bodies: whatever arrives, ``split`` returns entries or raises ``WebhookError``, and
every entry it returns becomes a valid ``AccountEvent`` that the database can store."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from storage.models import Account, InboxDelivery
from tests.properties.strategies import FAST, bodies, encode, real_samples
from workflows.events import AccountEvent
from workflows.nylas import webhooks
from workflows.states import V2_TRIGGER_STATES, V3_TRIGGERS

VERSIONS = st.sampled_from(["v2", "v3"])
STATES = {*V2_TRIGGER_STATES.values(), "valid", "invalid", "deleted", None}


def column_limit(model: type[Any], name: str) -> int:
    return int(model.__table__.c[name].type.length)


def storable(text: Any, limit: int | None = None) -> bool:
    """Text a column takes on every engine: UTF-8 encodable, no NUL (PostgreSQL), in size."""
    if not isinstance(text, str) or "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return limit is None or len(text) <= limit


def check_entry(entry: webhooks.InboxEntry) -> None:
    assert storable(entry.dedupe_key, column_limit(InboxDelivery, "dedupe_key"))
    assert entry.source in ("nylas-v2", "nylas-v3")
    assert storable(entry.body)


def check_event(event: AccountEvent, source: str) -> None:
    assert isinstance(event, AccountEvent)
    assert event.account_id and storable(event.account_id, column_limit(Account, "id"))
    assert event.api_version == source.removeprefix("nylas-")
    assert event.event_type in (V2_TRIGGER_STATES if event.api_version == "v2" else V3_TRIGGERS)
    assert event.state in STATES
    assert event.occurred_at.utcoffset() == timedelta(0)
    assert event.source == "webhook"
    for name in ("email", "provider"):
        value = getattr(event, name)
        assert value is None or storable(value, column_limit(Account, name)), (name, value)
    # details go into a JSON column: standard JSON (no NaN) that PostgreSQL accepts.
    assert storable(json.dumps(event.details, allow_nan=False))


def split_and_parse(version: str, body: bytes) -> list[AccountEvent]:
    try:
        entries = webhooks.split(version, body)
    except webhooks.WebhookError as exc:
        assert exc.status == 400
        return []
    events = []
    for entry in entries:
        check_entry(entry)
        event = webhooks.parse_entry(entry.source, entry.body)
        check_event(event, entry.source)
        events.append(event)
    return events


@FAST
@given(version=VERSIONS, body=bodies())
@example(version="v3", body=b'{"id": "n", "type": "grant.expired", "time": NaN, "data": {}}')
@example(
    version="v3",
    body=b'{"id":"n","type":"grant.expired","time":1e300,"data":{"object":{"grant_id":"g"}}}',
)
@example(version="v2", body=b"[" * 100_000)
@example(version="v3", body=b"1" * 5000)
@example(
    version="v3",
    body=b'{"id":"n","type":"grant.created","time":1,"data":{"object":{"grant_id":"g",'
    b'"email":{"a":1},"code":Infinity}}}',
)
@example(
    version="v2",
    body=b'{"deltas":[{"type":"account.invalid","date":1,"object_data":{"id":"a\\u0000"}}]}',
)
def test_any_body_splits_into_valid_events_or_a_webhook_error(version: str, body: bytes) -> None:
    split_and_parse(version, body)


@FAST
@given(payload=real_samples(), data=st.data())
def test_real_samples_always_become_their_event(payload: dict[str, Any], data: Any) -> None:
    version = "v2" if "deltas" in payload else "v3"
    (event,) = split_and_parse(version, encode(payload, data.draw))
    if version == "v2":
        delta = payload["deltas"][0]
        expected = (delta["object_data"]["account_id"], delta["type"], delta["date"])
    else:
        expected = (payload["data"]["object"]["grant_id"], payload["type"], payload["time"])
    assert (event.account_id, event.event_type, int(event.occurred_at.timestamp())) == expected


@FAST
@given(raw=st.binary(max_size=2000))
def test_decompress_returns_bytes_or_a_webhook_error(raw: bytes) -> None:
    try:
        body = webhooks.decompress(raw)
    except webhooks.WebhookError as exc:
        assert exc.status in (400, 413)
    else:
        assert len(body) <= webhooks.MAX_BODY_BYTES


@FAST
@given(body=st.binary(max_size=5000) | bodies())
def test_compressed_bodies_come_back_unchanged(body: bytes) -> None:
    assert webhooks.decompress(webhooks.compress(body)) == body


@pytest.mark.parametrize("size", [webhooks.MAX_BODY_BYTES, webhooks.MAX_BODY_BYTES + 1])
def test_decompression_stops_at_the_limit(size: int) -> None:
    packed = webhooks.compress(b"{" * size)
    if size > webhooks.MAX_BODY_BYTES:
        with pytest.raises(webhooks.TooLarge):
            webhooks.decompress(packed)
    else:
        assert len(webhooks.decompress(packed)) == size
