"""The Slack sink sends a case and an incident down one path: post, update, DM, thread."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from slack_sdk.web.async_client import AsyncWebClient

from bot.notifier import Posted, SinkError
from bot.slack.sink import CASE_EVENT, INCIDENT_EVENT, SlackSink
from storage.incidents import IncidentView
from storage.models import Account, Case, Incident, IncidentScope, OutboxKind, OutboxMessage
from tests.fakes.slack import FakeSlack

TOKEN = "xoxb-cards-token"
CHANNEL = "C0ALERTS"
NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


@pytest.fixture
async def slack() -> AsyncIterator[FakeSlack]:
    async with FakeSlack(bot_token=TOKEN) as fake:
        yield fake


@pytest.fixture
def sink(slack: FakeSlack) -> SlackSink:
    return SlackSink(AsyncWebClient(token=TOKEN, base_url=slack.url), post_interval=0)


def message(kind: str, *, channel: str = CHANNEL, **about: int) -> OutboxMessage:
    return OutboxMessage(
        channel=channel,
        kind=kind,
        payload={"text": "Escalated (level 1): no one has acknowledged it for 15 minutes."},
        attempts=1,
        created_at=NOW,
        available_at=NOW,
        **about,
    )


def a_case() -> tuple[Case, Account]:
    account = Account(
        id="g-1",
        api_version="v3",
        email="ana@example.com",
        provider="google",
        sync_state="invalid",
        first_seen_at=NOW,
        updated_at=NOW,
    )
    case = Case(
        id=1,
        account_id="g-1",
        kind="reauth",
        state="invalid",
        opened_at=NOW,
        updated_at=NOW,
        slack_channel=CHANNEL,
    )
    return case, account


def an_incident() -> IncidentView:
    incident = Incident(
        id=7,
        scope=IncidentScope.DOMAIN,
        key="acme.com",
        opened_at=NOW,
        updated_at=NOW,
        first_case_at=NOW,
        last_case_at=NOW,
        slack_channel=CHANNEL,
    )
    return IncidentView(
        incident=incident,
        total=5,
        by_status={"open": 5},
        by_kind={"reauth": 5},
        retryable=0,
        linkable=5,
        sample=(),
        resolved_by={},
    )


async def test_a_case_and_an_incident_are_posted_updated_and_threaded_alike(
    slack: FakeSlack, sink: SlackSink
) -> None:
    case, account = a_case()
    view = an_incident()

    # Until its parent message is posted, neither an update nor a thread line can go.
    for kind in (OutboxKind.UPDATE, OutboxKind.THREAD):
        with pytest.raises(SinkError) as waiting:
            await sink.deliver(message(kind, case_id=1), case, account)
        assert waiting.value.code == "parent_not_posted" and not waiting.value.permanent
        with pytest.raises(SinkError) as waiting:
            await sink.deliver(message(kind, incident_id=7), None, None, view)
        assert waiting.value.code == "parent_not_posted" and not waiting.value.permanent

    posted_case = await sink.deliver(message(OutboxKind.POST, case_id=1), case, account)
    posted_incident = await sink.deliver(message(OutboxKind.POST, incident_id=7), None, None, view)
    assert isinstance(posted_case, Posted) and isinstance(posted_incident, Posted)
    assert slack.messages[CHANNEL, posted_case.ts]["metadata"] == {
        "event_type": CASE_EVENT,
        "event_payload": {"case_id": 1},
    }
    assert slack.messages[CHANNEL, posted_incident.ts]["metadata"] == {
        "event_type": INCIDENT_EVENT,
        "event_payload": {"incident_id": 7},
    }

    case.slack_ts, view.incident.slack_ts = posted_case.ts, posted_incident.ts
    for kind in (OutboxKind.UPDATE, OutboxKind.THREAD):
        assert await sink.deliver(message(kind, case_id=1), case, account) is None
        assert await sink.deliver(message(kind, incident_id=7), None, None, view) is None
    updates = [(c.params["channel"], c.params["ts"]) for c in slack.calls_to("chat.update")]
    assert updates == [(CHANNEL, posted_case.ts), (CHANNEL, posted_incident.ts)]
    for ts in (posted_case.ts, posted_incident.ts):
        (line,) = slack.thread(CHANNEL, ts)
        assert line["text"].startswith("Escalated (level 1)")


async def test_a_direct_message_does_not_wait_for_the_parent_message(
    slack: FakeSlack, sink: SlackSink
) -> None:
    """The DM carries the whole alert: on-call hears of it even while the channel post waits."""
    case, account = a_case()
    view = an_incident()
    assert case.slack_ts is None and view.incident.slack_ts is None

    await sink.deliver(message(OutboxKind.DM, channel="U0ONCALL", case_id=1), case, account)
    await sink.deliver(message(OutboxKind.DM, channel="U0ONCALL", incident_id=7), None, None, view)

    dms = slack.calls_to("chat.postMessage")
    assert [dm.params["channel"] for dm in dms] == ["U0ONCALL", "U0ONCALL"]
    assert "ana@example.com" in str(dms[0].params["blocks"])
    assert "acme.com" in str(dms[1].params["blocks"])
    assert all(dm.params["text"].startswith("Escalated (level 1)") for dm in dms)
