"""POST /slack/events through the real app with hostile but correctly signed payloads: never a
5xx, and nothing changes (no case, no audit row but ``refused``, no Nylas call, no message)
unless it is a valid click by an allowed user on an existing case, which these never are.

Payloads claim the app's own team and app ids, or others (refused with 403); some requests
are sent twice with the same signature (the copy is served at most once)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient
from hypothesis import event, given
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.settings import load_settings
from bot.slack import ids
from tests.appclient import start_app
from tests.bot.slack.support import CHANNEL, SIGNING_SECRET, expire, nylas_settings, signed
from tests.conftest import WEBHOOK_SECRET
from tests.databases import TABLES
from tests.fakes.nylas import FakeNylas
from tests.fakes.slack import FakeSlack
from tests.properties import rawhttp
from tests.properties.strategies import SLOW, json_values, mostly
from tests.waiting import eventually

ALLOWED = "U0ALLOWED"  # the only user (directly, or through S0OPS) allowed to act
PERMISSIONS = ("ack", "link", "retry", "snooze", "resolve", "revoke")
POLICY = "[permissions]\n" + "".join(f'{p} = ["{ALLOWED}", "S0OPS"]\n' for p in PERMISSIONS)
# Calls to Slack that would show a change (reading users and groups, or publishing someone's
# Home tab, is fine).
WRITES = ("chat.postMessage", "chat.update", "chat.postEphemeral", "views.open")
# Audit rows anyone may cause: a refusal, or taking a case's support ticket (read-only).
HARMLESS = {"refused": None, "support_ticket": ids.SUPPORT_TICKET}

Snapshot = dict[str, list[dict[str, Any]]]


@dataclass
class World:
    app: TestClient
    engine: AsyncEngine
    slack: FakeSlack
    nylas: FakeNylas
    errors: list[logging.LogRecord] = field(repr=False)


class _Keep(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def listener_errors() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []
    handler = _Keep(records)
    logger = logging.getLogger("reauthbot.slack")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.fixture
async def world(
    engine: AsyncEngine,
    nylas_fake: FakeNylas,
    tmp_path: Path,
    listener_errors: list[logging.LogRecord],
) -> AsyncIterator[World]:
    """The app with one open case whose alert is posted, and nothing left to do."""
    config = tmp_path / "policy.toml"
    config.write_text(POLICY)
    nylas_fake.add_grant(id="g-1", email="ana@example.com", grant_status="invalid")
    async with FakeSlack(bot_token="xoxb-props") as slack:
        slack.add_user_group("S0OPS", [ALLOWED])
        settings = load_settings(
            _env_file=None,
            slack_bot_token="xoxb-props",
            slack_signing_secret=SIGNING_SECRET,
            slack_alert_channel=CHANNEL,
            slack_api_url=slack.url,
            nylas_webhook_secret=WEBHOOK_SECRET,
            config_file=config,
            **nylas_settings(nylas_fake, "v3"),
        )
        app = await start_app(settings, engine=engine, scheduled_jobs=False, migrate=False)
        try:
            await expire(app)

            async def quiet() -> bool:
                async with engine.connect() as conn:
                    busy = await conn.execute(
                        text(
                            "SELECT (SELECT count(*) FROM outbox WHERE status != 'sent')"
                            " + (SELECT count(*) FROM inbox WHERE status != 'done')"
                            " + (SELECT count(*) FROM cases WHERE slack_ts IS NULL)"
                        )
                    )
                    return busy.scalar_one() == 0 and bool(slack.calls_to("chat.postMessage"))

            await eventually(quiet, within=10)
            yield World(app, engine, slack, nylas_fake, listener_errors)
        finally:
            await app.close()


async def snapshot(engine: AsyncEngine) -> Snapshot:
    """Every row of every table, in the order of their keys (the first column)."""
    async with engine.connect() as conn:
        return {
            table: [
                dict(row._mapping)
                for row in sorted(
                    (await conn.execute(text(f"SELECT * FROM {table}"))).all(), key=lambda r: r[0]
                )
            ]
            for table in TABLES
        }


async def settle() -> None:
    """Wait for the listeners Bolt keeps running after it acknowledged the request."""
    me = asyncio.current_task()
    while True:
        running = [
            task
            for task in asyncio.all_tasks()
            if task is not me
            and not task.done()
            and "run_ack_function" in getattr(task.get_coro(), "__qualname__", "")
        ]
        if not running:
            return
        await asyncio.wait(running, timeout=10)


def slack_writes(slack: FakeSlack) -> int:
    return sum(len(slack.calls_to(method)) for method in WRITES)


async def send_and_check(
    world: World,
    body: str,
    headers: dict[str, str],
    action: str | None = None,
    *,
    well_formed: bool = False,
    copy: bool = False,
) -> None:
    """Send the request as is; check the answer is no 5xx and nothing changed.

    A ``well_formed`` request (shaped as Slack sends them) must also be answered: no listener
    may fail on it after acknowledging, which the operator would see as silence. A ``copy``
    of a request sent before is not even noted in the replay ledger.
    """
    before = await snapshot(world.engine)
    writes, nylas_calls = slack_writes(world.slack), len(world.nylas.calls)
    errors = len(world.errors)
    lines = [
        (name.encode(), value.encode("utf-8", "surrogatepass").translate(None, b"\r\n"))
        for name, value in headers.items()
    ]
    response = await rawhttp.post(world.app, ids.EVENTS_PATH, body.encode(), lines)
    await settle()
    event(f"HTTP {response.status}")
    failures = [r.exc_info[1] if r.exc_info else r.getMessage() for r in world.errors[errors:]]
    assert not (well_formed and failures), failures
    for error in failures:
        # Malformed beyond what Slack sends: acknowledged, nothing changed, no answer either.
        event(f"listener failed after ack: {type(error).__name__}: {error}"[:120])
    assert response.status < 500, response.body
    if response.status == 403:
        assert response.body == b"forbidden"
    after = await snapshot(world.engine)
    assert world.nylas.calls[nylas_calls:] == []
    assert slack_writes(world.slack) == writes
    for table in TABLES:
        if table not in ("case_events", "slack_requests"):
            assert after[table] == before[table], table
    # The replay ledger notes the signature of each request it lets through, and only that.
    noted = [r for r in after["slack_requests"] if r not in before["slack_requests"]]
    assert len(noted) <= (0 if copy or response.status == 403 else 1), noted
    old, new = before["case_events"], after["case_events"]
    assert after["case_events"][: len(old)] == old
    for audit in new[len(old) :]:
        assert audit["action"] in HARMLESS, audit
        assert HARMLESS[audit["action"]] in (None, action), audit
        event(f"audit {audit['action']}")


# --- what hostile but signed interactions look like ------------------------------------

# Users who may not act, by ids of any type (Slack sends a string).
users = st.one_of(
    st.sampled_from(["U0MALLORY", "U0ALLOWEd", " U0ALLOWED", "S0NOBODY", "", "U0ALLOWED\x00"]),
    st.text(max_size=12),
    json_values,
).filter(lambda u: u not in (ALLOWED, "S0OPS"))
# Always an object: a `user` of another type, or no response_url, makes the listener fail
# right after its ack(), which Bolt (1.30) then waits 3 s for and answers 404 (see the report).
user_fields = users.map(lambda u: {"id": u, "username": "x", "team_id": "T0TEST"})

action_ids = mostly(st.sampled_from(ids.ACTIONS), st.text(max_size=20))
numbers = st.integers() | st.sampled_from([0, -1, 2**31, 2**63, 10**40])
values = st.one_of(
    st.sampled_from(["1", "2", "1:4h", "1:1h", "2:24h"]),
    numbers.map(str),
    st.sampled_from(["1", "#1", " 1", "1:4h", "1:forever", "1:", ":4h", "1.0", "1e3", "０"]),
    st.builds("{}:{}".format, numbers, st.text(max_size=6)),
    st.text(max_size=20),
    st.text(min_size=5000, max_size=20000),
    json_values,
)


def anything_but_allowed(payload: Any) -> bool:
    # A user id equal to a listed group id ("S0OPS") is drawn too: only members of the group
    # may act, never the group's id itself.
    return ALLOWED not in json.dumps(payload)


# The team and app a request claims: mostly the app's own (see FakeSlack), else another.
team_ids = mostly(
    st.just("T0TEST"), st.sampled_from(["T0OTHER", "", "t0test"]) | st.text(max_size=8)
)
app_ids = mostly(st.just("A0APP"), st.sampled_from(["A0OTHER", "", "a0app"]) | st.text(max_size=8))


@st.composite
def actions(draw: st.DrawFn) -> dict[str, Any]:
    action: dict[str, Any] = {"action_id": draw(action_ids), "action_ts": "1.2"}
    shape = draw(st.sampled_from(["button"] * 3 + ["select"] * 2 + ["both", "neither", "junk"]))
    if shape in ("button", "both"):
        action |= {"type": "button", "value": draw(values)}
    if shape in ("select", "both"):
        action |= {"type": "static_select", "selected_option": {"value": draw(values)}}
    if shape == "junk":
        action |= draw(
            st.dictionaries(
                st.sampled_from(["value", "block_id", "type", "selected_option"]), json_values
            )
        )
    return action


@st.composite
def block_actions(draw: st.DrawFn, slack: FakeSlack) -> dict[str, Any]:
    """A click on the alert, by someone who may not act, with anything in its fields."""
    payload: dict[str, Any] = {
        "type": draw(
            mostly(st.just("block_actions"), st.sampled_from(["interactive_message", "x"]))
        ),
        "api_app_id": draw(app_ids),
        "token": "legacy",
        "team": {"id": draw(team_ids), "domain": "acme"},
        "container": {"type": "message", "message_ts": "1.2", "channel_id": CHANNEL},
        "channel": {"id": CHANNEL, "name": "alerts"},
        "trigger_id": draw(st.text(max_size=10)),
        "response_url": slack.response_url("p"),
        "actions": draw(mostly(st.lists(actions(), min_size=1, max_size=3), json_values)),
    }
    if draw(st.integers(0, 4)):
        payload["user"] = draw(user_fields)
    for key in draw(st.lists(st.sampled_from(sorted(payload)), max_size=1)):
        if key != "response_url":
            del payload[key]  # a field missing
    return payload


# User ids as Slack writes them (U… or W…, upper-case letters and digits).
slack_user_ids = st.builds(
    "{}{}".format,
    st.sampled_from("UW"),
    st.text(st.characters(codec="ascii", categories=("Lu", "Nd")), min_size=2, max_size=10),
)


@st.composite
def well_formed(draw: st.DrawFn, slack: FakeSlack, *, allowed: bool) -> dict[str, Any]:
    """A click as Slack sends it: by a stranger on the open case (number 1), or by the
    allowed user on a case (or incident) that does not exist."""
    if allowed:
        user = ALLOWED
        number = draw(st.integers(min_value=2) | st.integers(max_value=0))
    else:
        user = draw(st.sampled_from(["U0MALLORY", "U0ALLOWEd", "W0GUEST"]) | slack_user_ids)
        number = 1
    value = draw(st.sampled_from(["{}", "{}:4h", "{}:x"])).format(number)
    action = {"action_id": draw(st.sampled_from(ids.ACTIONS)), "type": "button", "value": value}
    return {
        "type": "block_actions",
        "user": {"id": user, "username": "someone", "team_id": "T0TEST"},
        "team": {"id": "T0TEST"},
        "api_app_id": "A0APP",
        "channel": {"id": CHANNEL},
        "container": {"type": "message", "message_ts": "1.2", "channel_id": CHANNEL},
        "trigger_id": "1.2.x",
        "response_url": slack.response_url("a"),
        "actions": [action],
    }


@st.composite
def submissions(draw: st.DrawFn) -> dict[str, Any]:
    """A modal submitted (resolve, revoke): by someone who may not, or about no case."""
    callback = draw(st.sampled_from(ids.VIEWS) | st.text(max_size=10))
    allowed = draw(st.booleans())
    if allowed:
        metadata: Any = str(draw(st.integers(min_value=2) | st.integers(max_value=0)))
    else:
        metadata = draw(st.sampled_from(["1", " 1", "1.0"]) | values)
    state = {
        ids.NOTE_BLOCK: {ids.NOTE_INPUT: {"type": "plain_text_input", "value": draw(values)}},
        ids.CONFIRM_BLOCK: {
            ids.CONFIRM_INPUT: {"type": "plain_text_input", "value": "ana@example.com"}
        },
    }
    return {
        "type": "view_submission",
        "team": {"id": draw(team_ids)},
        "api_app_id": draw(app_ids),
        "user": {"id": ALLOWED} if allowed else draw(users | user_fields),
        "view": {
            # A view the app never opened, or one like those it opens.
            "id": draw(st.sampled_from(["V0X", "V00000001", ""]) | st.text(max_size=12)),
            "type": "modal",
            "callback_id": callback,
            "private_metadata": metadata,
            "state": {"values": draw(st.just(state) | json_values)},
        },
    }


@SLOW
@given(data=st.data())
async def test_hostile_interactions_change_nothing(world: World, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["hostile", "allowed", "stranger", "modal"]), label="kind")
    payload = data.draw(
        {
            "hostile": block_actions(world.slack).filter(anything_but_allowed),
            "allowed": well_formed(world.slack, allowed=True),
            "stranger": well_formed(world.slack, allowed=False).filter(anything_but_allowed),
            "modal": submissions(),
        }[kind],
        label="payload",
    )
    body = urlencode({"payload": json.dumps(payload)})
    actions = payload.get("actions")
    first = actions[0] if isinstance(actions, list) and actions else {}
    action = first.get("action_id") if isinstance(first, dict) else None
    event(f"{payload.get('type')} {action in ids.ACTIONS}")
    as_slack_sends = kind in ("allowed", "stranger")
    await send_and_check(world, body, signed(body), str(action), well_formed=as_slack_sends)


# --- arbitrary requests: forms, slash commands, events; signed, unsigned, replayed ------------

command_texts = st.one_of(
    st.builds(
        "{} {}".format,
        st.sampled_from(["ack", "resolve", "snooze", "link", "retry", "revoke", "show", "list"]),
        st.sampled_from(["1", "#1", "g-1", "ana@example.com", "1 4h", "1 fixed", "2"]),
    ),
    st.sampled_from(["", "help", "stats", "oncall", "list --kind reauth", "show 1"]),
    st.text(max_size=40),
)
form_keys = st.sampled_from(
    ["payload", "command", "text", "user_id", "team_id", "channel_id", "trigger_id", "type"]
)


@st.composite
def forms(draw: st.DrawFn, slack: FakeSlack) -> tuple[str, str]:
    """A body of any shape, and its content type."""
    kind = draw(st.sampled_from(["command", "form", "event", "json"]))
    if kind == "command":
        fields: dict[str, Any] = {
            "command": draw(mostly(st.just(ids.COMMAND), st.text(max_size=10))),
            "text": draw(command_texts),
            "user_id": draw(users),
            "team_id": draw(team_ids),
            "api_app_id": draw(app_ids),
            "channel_id": CHANNEL,
            "trigger_id": "1.2.x",
        }
        for key in draw(st.lists(st.sampled_from(sorted(fields)), max_size=1)):
            del fields[key]
        # Always somewhere to answer (see user_fields for what happens without).
        fields["response_url"] = slack.response_url("c")
        return urlencode(fields), "application/x-www-form-urlencoded"
    if kind == "form":
        fields = draw(
            st.dictionaries(
                form_keys | st.text(max_size=8),
                st.text(max_size=30) | json_values.map(json.dumps),
                max_size=6,
            )
        )
        return urlencode(fields), "application/x-www-form-urlencoded"
    if kind == "event":
        event_ = {"type": "app_home_opened", "user": draw(users), "tab": "home"}
        for key in draw(st.lists(st.sampled_from(sorted(event_)), max_size=1)):
            event_[key] = draw(json_values)
        body = {
            "type": "event_callback",
            "team_id": draw(team_ids),
            "api_app_id": draw(app_ids),
            "event": event_,
        }
        return json.dumps(body), "application/json"
    return json.dumps(draw(json_values)), draw(
        st.sampled_from(["application/json", "application/x-www-form-urlencoded", "text/plain"])
    )


@st.composite
def signatures(draw: st.DrawFn, body: str) -> dict[str, str]:
    """Slack's signature headers: right, missing, forged, replayed or not even a number."""
    how = draw(mostly(st.just("right"), st.sampled_from(["none", "forged", "old", "junk"])))
    headers = signed(body)
    if how == "none":
        return {}
    if how == "forged":
        headers["X-Slack-Signature"] = draw(
            st.sampled_from(["v0=" + "0" * 64, "", "v0="]) | st.text(max_size=70)
        )
    elif how == "old":
        headers = signed(body, timestamp=draw(st.sampled_from([0, 1_000_000_000, 10**12])))
    elif how == "junk":
        headers["X-Slack-Request-Timestamp"] = draw(st.text(max_size=12))
    return headers


@SLOW
@given(data=st.data())
async def test_any_request_to_slack_events_changes_nothing(
    world: World, data: st.DataObject
) -> None:
    body, content_type = data.draw(forms(world.slack).filter(anything_but_allowed), label="body")
    headers = {**data.draw(signatures(body), label="signature"), "Content-Type": content_type}
    await send_and_check(world, body, headers)
    if data.draw(st.booleans(), label="sent again"):
        # The same bytes and signature again: served once at most, the copy changes nothing.
        await send_and_check(world, body, headers, copy=True)
