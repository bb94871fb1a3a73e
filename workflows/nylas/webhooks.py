"""Nylas webhook deliveries: signature check, shape check, and normalization.

A delivery is verified over its raw bytes, split into inbox entries (one per v2 account delta,
one per v3 grant notification) with a stable deduplication key, and later turned into an
``AccountEvent`` by ``parse_entry``. Deliveries of triggers reauthbot does not act on are
valid and produce no entries.

Errors: ``WebhookError`` carries the HTTP status to answer: ``BadSignature`` (401),
``NotAccepted`` (403: signed, but for an API version the service does not take),
``MalformedDelivery`` (400) and ``TooLarge`` (413: too many bytes or too many deltas).
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import math
import re
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from storage.models import ApiVersion
from workflows.events import AccountEvent
from workflows.states import V2_TRIGGER_STATES, V3_TRIGGERS

MAX_BODY_BYTES = 1024 * 1024
REAUTH_CODE = 25027
# Ids end up in 255-character columns and deduplication keys (with a prefix and a date).
MAX_ID_CHARS = 200
# Nylas sends one delta per POST in practice; a delivery carrying more is refused whole, so one
# signed body cannot open an unbounded number of cases.
MAX_DELTAS = 100


class WebhookError(Exception):
    status = 400


class BadSignature(WebhookError):
    status = 401


class NotAccepted(WebhookError):
    status = 403


class MalformedDelivery(WebhookError):
    status = 400


class TooLarge(WebhookError):
    status = 413


@dataclass(frozen=True, slots=True)
class InboxEntry:
    dedupe_key: str
    source: str  # "nylas-v2" or "nylas-v3"
    body: str


def _digest(secret: str, raw: bytes) -> str:
    return hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def verify(raw: bytes, signature: str | None, secrets: Mapping[str, str]) -> str:
    """Return the API version whose secret signed ``raw``; raise BadSignature otherwise.

    ``secrets`` maps "v2" to the client secret and "v3" to the webhook secret. Every
    configured secret is compared in constant time, whether or not an earlier one matched.
    """
    if not signature:
        raise BadSignature("missing X-Nylas-Signature header")
    if not secrets:
        raise BadSignature("no webhook secret is configured (NYLAS_WEBHOOK_SECRET for v3)")
    given = signature.strip().lower()
    if not given.isascii():  # a hex digest is ASCII; the header may carry any byte
        raise BadSignature("X-Nylas-Signature does not match the body")
    matched = None
    for version, secret in sorted(secrets.items()):
        if hmac.compare_digest(_digest(secret, raw), given) and matched is None:
            matched = version
    if matched is None:
        raise BadSignature("X-Nylas-Signature does not match the body")
    return matched


def check_accepted(version: str, accepted: frozenset[str]) -> None:
    """Refuse a verified delivery of an API version the service does not take."""
    if version in accepted:
        return
    if version == ApiVersion.V2:
        raise NotAccepted(
            "v2 webhook deliveries are not accepted when NYLAS_API_VERSION=v3; "
            "set NYLAS_ACCEPT_V2_WEBHOOKS=true while migrating"
        )
    raise NotAccepted(f"{version} webhook deliveries are not accepted by this service")


def sign(secret: str, raw: bytes) -> str:
    """Sign a body the way Nylas does (for ``reauthbot trigger`` and tests)."""
    return _digest(secret, raw)


def decompress(raw: bytes) -> bytes:
    """Inflate a gzip body, refusing to expand past the size limit (a gzip bomb)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        body = inflater.decompress(raw, MAX_BODY_BYTES + 1)
    except zlib.error:
        raise MalformedDelivery("body is not valid gzip") from None
    if len(body) > MAX_BODY_BYTES or inflater.unconsumed_tail:
        raise TooLarge("body is larger than 1 MiB once decompressed")
    return body


def compress(body: bytes) -> bytes:
    return gzip.compress(body)


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _finite(number: str) -> float:
    value = float(number)
    if not math.isfinite(value):  # 1e999
        raise ValueError(f"{number} is out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite)
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


# A UTF-16 surrogate written as an escape; only a pair of them is a character.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _decode(body: bytes) -> str:
    """The body as text, in the encoding JSON allows it to be sent in (UTF-8 in practice)."""
    try:
        return body.decode(json.detect_encoding(body))
    except UnicodeDecodeError:  # also a surrogate encoded in UTF-8: no database stores it
        raise MalformedDelivery("body is not valid JSON (not UTF-8 text)") from None


def _load(text: str) -> dict[str, Any]:
    try:
        payload = _DECODER.decode(text)
    except (ValueError, RecursionError):  # also NaN, 5000-digit ints, deep nesting
        raise MalformedDelivery("body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise MalformedDelivery("body must be a JSON object")
    return payload


def _text(value: Any, where: str, limit: int = MAX_ID_CHARS) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedDelivery(f"{where} must be a non-empty string")
    _optional_text(value, where, limit)
    return value


def _optional_text(value: Any, where: str, limit: int) -> None:
    # Printable: no NUL (PostgreSQL refuses it in text) and no lone surrogates (not UTF-8).
    if value is not None and (
        not isinstance(value, str) or len(value) > limit or not value.isprintable()
    ):
        raise MalformedDelivery(f"{where} must be a string of at most {limit} printable characters")


def _timestamp(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedDelivery(f"{where} must be a unix timestamp")
    try:
        _at(value)  # as parse_entry will read it
    except (OverflowError, OSError, ValueError):
        raise MalformedDelivery(f"{where} must be a unix timestamp") from None
    return int(value)


def _serialize(value: Any) -> str:
    text = _ENCODER.encode(value)
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:  # a lone surrogate ("\ud800"): no database stores it
            raise MalformedDelivery("body holds text that is not valid Unicode") from None
    return text


def split(version: str, body: bytes) -> list[InboxEntry]:
    """Check a verified delivery's shape and return the inbox entries it holds."""
    text = _decode(body)
    payload = _load(text)
    if version == ApiVersion.V2:
        return _split_v2(payload)
    return _split_v3(payload, text)


def _split_v2(payload: dict[str, Any]) -> list[InboxEntry]:
    deltas = payload.get("deltas")
    if not isinstance(deltas, list) or not deltas:
        raise MalformedDelivery("a v2 delivery needs a non-empty 'deltas' list")
    if len(deltas) > MAX_DELTAS:
        raise TooLarge(f"a v2 delivery carries at most {MAX_DELTAS} deltas, not {len(deltas)}")
    entries = []
    for i, delta in enumerate(deltas):
        where = f"deltas[{i}]"
        if not isinstance(delta, dict):
            raise MalformedDelivery(f"{where} must be an object")
        trigger = _text(delta.get("type"), f"{where}.type")
        date = _timestamp(delta.get("date"), f"{where}.date")
        data = delta.get("object_data")
        if not isinstance(data, dict):
            raise MalformedDelivery(f"{where}.object_data must be an object")
        if trigger not in V2_TRIGGER_STATES:
            continue
        account_id = _text(
            data.get("account_id") or data.get("id"), f"{where}.object_data.account_id"
        )
        entries.append(
            InboxEntry(
                dedupe_key=f"v2:{account_id}:{trigger}:{date}",
                source="nylas-v2",
                body=_serialize(delta),
            )
        )
    return entries


def _split_v3(payload: dict[str, Any], text: str) -> list[InboxEntry]:
    notification_id = _text(payload.get("id"), "id")
    trigger = _text(payload.get("type"), "type")
    _timestamp(payload.get("time"), "time")
    data = payload.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise MalformedDelivery("a v3 delivery needs 'data.object'")
    if trigger not in V3_TRIGGERS:
        return []
    obj = data["object"]
    _text(obj.get("grant_id"), "data.object.grant_id")
    # Column sizes of accounts.email and accounts.provider.
    _optional_text(obj.get("email"), "data.object.email", 320)
    _optional_text(obj.get("provider"), "data.object.provider", 64)
    _optional_text(obj.get("credential_id"), "data.object.credential_id", 255)
    if _SURROGATE_ESCAPE.search(text):
        _serialize(payload)  # refuses a lone surrogate ("\ud800"), as for v2
    return [
        InboxEntry(
            dedupe_key=f"v3:{notification_id}",
            source="nylas-v3",
            # The notification as it came: valid UTF-8 (so storable), and read again by
            # parse_entry into the payload checked here. Serializing it again cost as much
            # as parsing it.
            body=text,
        )
    ]


def _at(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def parse_entry(source: str, body: str) -> AccountEvent:
    """Turn a stored inbox entry into the event it announces."""
    payload = json.loads(body)
    if source == "nylas-v2":
        data = payload["object_data"]
        trigger = payload["type"]
        return AccountEvent(
            account_id=data.get("account_id") or data["id"],
            api_version=ApiVersion.V2,
            event_type=trigger,
            state=V2_TRIGGER_STATES[trigger],
            occurred_at=_at(payload["date"]),
            source="webhook",
        )
    obj = payload["data"]["object"]
    trigger = payload["type"]
    details: dict[str, Any] = {"notification_id": payload["id"]}
    if "code" in obj:
        details["code"] = obj["code"]
    state: str | None
    if trigger == "grant.expired":
        state = "invalid"
    elif trigger == "grant.deleted":
        state = "deleted"
    elif trigger == "grant.created":
        state = "valid"
    else:  # grant.updated: only a re-authentication says the grant works again
        reauth = bool(obj.get("reauthentication_flag")) or obj.get("code") == REAUTH_CODE
        details["reauthenticated"] = reauth
        state = "valid" if reauth else None
    return AccountEvent(
        account_id=obj["grant_id"],
        api_version=ApiVersion.V3,
        event_type=trigger,
        state=state,
        occurred_at=_at(payload["time"]),
        source="webhook",
        email=obj.get("email"),
        provider=obj.get("provider"),
        credential_id=obj.get("credential_id"),
        details=details,
    )
