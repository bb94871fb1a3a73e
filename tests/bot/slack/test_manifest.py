"""manifest.yml is valid for Slack and agrees with what the service registers."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlparse

import jsonschema
import pytest
import yaml
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.signature import SignatureVerifier

from bot.app import create_app
from bot.settings import load_settings
from bot.slack import ids
from bot.slack.app import BOLT

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = ROOT / "tests" / "vendor" / "slack-manifest.schema.1.0.0.json"
SOCKET_MODE_MANIFEST = ROOT / "deploy" / "slack" / "manifest-socket-mode.yml"
SECRET = "manifest-test-secret"


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "manifest.yml").read_text()))


def test_manifest_is_valid_against_slacks_schema(manifest: dict[str, Any]) -> None:
    jsonschema.validate(manifest, json.loads(SCHEMA.read_text()))


@pytest.fixture(scope="module")
def socket_mode_manifest() -> dict[str, Any]:
    return dict(yaml.safe_load(SOCKET_MODE_MANIFEST.read_text()))


def test_the_socket_mode_manifest_is_valid_against_slacks_schema(
    socket_mode_manifest: dict[str, Any],
) -> None:
    jsonschema.validate(socket_mode_manifest, json.loads(SCHEMA.read_text()))


def test_the_socket_mode_manifest_is_the_http_one_without_urls(
    manifest: dict[str, Any], socket_mode_manifest: dict[str, Any]
) -> None:
    # Everything but the URLs and the switch must stay in step with manifest.yml: a scope,
    # command or event added to one and not the other would break only one kind of install.
    settings = socket_mode_manifest["settings"]
    assert settings["socket_mode_enabled"] is True
    assert "request_url" not in settings["interactivity"]
    assert "request_url" not in settings["event_subscriptions"]
    assert all("url" not in c for c in socket_mode_manifest["features"]["slash_commands"])

    expected = json.loads(json.dumps(manifest))
    expected["settings"]["socket_mode_enabled"] = True
    del expected["settings"]["interactivity"]["request_url"]
    del expected["settings"]["event_subscriptions"]["request_url"]
    for command in expected["features"]["slash_commands"]:
        del command["url"]
    assert socket_mode_manifest == expected


def test_scopes_are_exactly_what_the_features_need(manifest: dict[str, Any]) -> None:
    assert sorted(manifest["oauth_config"]["scopes"]["bot"]) == sorted(ids.BOT_SCOPES)


def test_request_urls_point_at_the_events_route(manifest: dict[str, Any]) -> None:
    settings = manifest["settings"]
    assert settings["interactivity"]["is_enabled"] is True
    assert urlparse(settings["interactivity"]["request_url"]).path == ids.EVENTS_PATH
    assert settings["socket_mode_enabled"] is False  # HTTP mode by default; see the README
    commands = manifest["features"]["slash_commands"]
    assert sorted(c["command"] for c in commands) == sorted(ids.COMMANDS)
    assert all(urlparse(c["url"]).path == ids.EVENTS_PATH for c in commands)
    events = settings["event_subscriptions"]
    assert urlparse(events["request_url"]).path == ids.EVENTS_PATH
    assert sorted(events["bot_events"]) == sorted(ids.EVENTS)
    assert "user_events" not in events


def test_the_home_tab_is_on(manifest: dict[str, Any]) -> None:
    # app_home_opened is only sent, and views.publish only shown, with the Home tab enabled.
    home = manifest["features"]["app_home"]
    assert home["home_tab_enabled"] is True
    # Escalation DMs land in the Messages tab; nothing listens for replies, so none are taken.
    assert home["messages_tab_enabled"] is True
    assert home["messages_tab_read_only_enabled"] is True


@pytest.fixture
def bolt() -> AsyncApp:
    settings = load_settings(
        _env_file=None,
        slack_bot_token="xoxb-1",
        slack_signing_secret=SECRET,
        slack_alert_channel="C0ALERTS",
    )
    return create_app(settings)[BOLT]


@pytest.mark.parametrize("action_id", ids.ACTIONS)
async def test_every_button_id_has_a_listener(bolt: AsyncApp, action_id: str) -> None:
    # An interactivity payload for each button the app renders must be handled, not 404.
    payload = {
        "type": "block_actions",
        "user": {"id": "U1"},
        "team": {"id": "T1"},
        "actions": [{"action_id": action_id, "value": "x", "type": "button"}],
        "response_url": "http://127.0.0.1:9/unused",
    }
    body = urlencode({"payload": json.dumps(payload)})
    bolt._authorize = None  # type: ignore[assignment]  # no auth.test: this checks routing only
    assert await listeners_of(bolt, signed_request(body, "application/x-www-form-urlencoded")) == 1


@pytest.mark.parametrize("command", ids.COMMANDS)
async def test_every_command_has_a_listener(bolt: AsyncApp, command: str) -> None:
    body = urlencode({"command": command, "text": "help", "user_id": "U1", "team_id": "T1"})
    assert await listeners_of(bolt, signed_request(body, "application/x-www-form-urlencoded")) == 1


@pytest.mark.parametrize("event_type", ids.EVENTS)
async def test_every_event_has_a_listener(bolt: AsyncApp, event_type: str) -> None:
    body = json.dumps(
        {
            "type": "event_callback",
            "team_id": "T1",
            "api_app_id": "A1",
            "event": {"type": event_type, "user": "U1", "tab": "home"},
            "event_id": "Ev1",
            "event_time": int(time.time()),
        }
    )
    assert await listeners_of(bolt, signed_request(body, "application/json")) == 1


def signed_request(body: str, content_type: str) -> AsyncBoltRequest:
    """A request signed exactly as Slack signs it."""
    ts = str(int(time.time()))
    signature = SignatureVerifier(SECRET).generate_signature(timestamp=ts, body=body)
    headers = {
        "x-slack-request-timestamp": [ts],
        "content-type": [content_type],
        "x-slack-signature": [signature],
    }
    return AsyncBoltRequest(body=body, headers=headers)


async def listeners_of(bolt: AsyncApp, request: AsyncBoltRequest) -> int:
    """How many listeners would take the request."""
    return sum(
        [
            await listener.async_matches(req=request, resp=None)  # type: ignore[arg-type]
            for listener in bolt._async_listeners
        ]
    )


class _EventTypeProbe:
    """Stands in for an event's type and records every type a listener compares it with."""

    def __init__(self) -> None:
        self.compared: set[str] = set()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            self.compared.add(other)
        return False

    __hash__ = None  # type: ignore[assignment]


def _event(event_type: object) -> AsyncBoltRequest:
    body = {"type": "event_callback", "team_id": "T1", "event": {"type": event_type, "user": "U1"}}
    return AsyncBoltRequest(body=body, mode="socket_mode")  # a dict body, taken as it is


async def _listened(bolt: AsyncApp, request: AsyncBoltRequest) -> bool:
    return any(
        [
            await listener.async_matches(req=request, resp=None)  # type: ignore[arg-type]
            for listener in bolt._async_listeners
        ]
    )


async def test_the_manifest_subscribes_to_every_event_bolt_listens_to(
    bolt: AsyncApp, manifest: dict[str, Any]
) -> None:
    # The other direction: an event listener the manifest does not subscribe to never runs.
    # Which event types the listeners look for is found by asking them about a probe; Bolt
    # also compares every request with a few types of its own, which no listener takes.
    probe = _EventTypeProbe()
    assert not await _listened(bolt, _event(probe))
    listened = {t for t in probe.compared if await _listened(bolt, _event(t))}
    assert listened == set(ids.EVENTS)
    assert listened == set(manifest["settings"]["event_subscriptions"]["bot_events"])
