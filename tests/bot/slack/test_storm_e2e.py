"""A storm end to end: 200 expiries at two domains become two incidents, not 200 alerts."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from aiohttp.test_utils import TestClient
from sqlmodel import col, select

from bot.runtime import RUNTIME
from bot.slack import ids
from storage.models import Case, CaseEvent, CaseStatus, Incident, IncidentStatus
from tests.bot.slack.support import CHANNEL, NOW, Sessions, click, click_payload, nylas_settings
from tests.conftest import WEBHOOK_SECRET, FrozenClock
from tests.fakes.nylas import FakeNylas
from tests.fakes.slack import FakeSlack
from tests.waiting import eventually
from workflows.nylas import samples
from workflows.nylas.webhooks import sign

DOMAINS = ("north.example", "south.example")
PER_DOMAIN = 100
POLICY = """
[storms]
threshold = 5
window = "10m"

[permissions]
ack = ["U0SUE"]
"""


async def deliver(app: TestClient, trigger: str, n: int, domain: str, **kw: Any) -> None:
    raw = json.dumps(
        samples.v3_notification(
            trigger, grant_id=f"g-{domain}-{n}", email=f"user{n}@{domain}", **kw
        )
    ).encode()
    response = await app.post(
        "/nylas/webhook", data=raw, headers={"X-Nylas-Signature": sign(WEBHOOK_SECRET, raw)}
    )
    assert response.status == 200


async def deliver_all(app: TestClient, trigger: str, **kw: Any) -> None:
    """One delivery per account, the two domains interleaved, 20 in flight at a time."""
    jobs = [(n, d) for n in range(PER_DOMAIN) for d in DOMAINS]
    for start in range(0, len(jobs), 20):
        await asyncio.gather(
            *(deliver(app, trigger, n, d, **kw) for n, d in jobs[start : start + 20])
        )


def channel_posts(slack: FakeSlack) -> list[dict[str, Any]]:
    """Top-level messages in the alert channel (thread replies not counted)."""
    return [
        m
        for (channel, _), m in slack.messages.items()
        if channel == CHANNEL and m.get("thread_ts", m["ts"]) == m["ts"]
    ]


async def incidents(sessions: Sessions) -> list[Incident]:
    async with sessions() as session:
        return list((await session.exec(select(Incident).order_by(col(Incident.id)))).all())


async def all_cases(sessions: Sessions) -> list[Case]:
    async with sessions() as session:
        return list((await session.exec(select(Case).order_by(col(Case.id)))).all())


def text_of(message: dict[str, Any]) -> str:
    return json.dumps(message.get("blocks") or []) + message.get("text", "")


async def settle(app: TestClient, clock: FrozenClock) -> None:
    """Let the held-back incident updates fall due and wake the notifier."""
    clock.advance(seconds=5)
    notify = app.server.app[RUNTIME].notify
    assert notify is not None
    notify.wake()  # nothing was queued, time passed: no need to wait for its next look


async def test_a_storm_is_one_message_per_domain_with_bulk_actions_and_a_summary(
    start: Any, slack: FakeSlack, sessions: Sessions
) -> None:
    clock = FrozenClock(NOW)
    app = await start(POLICY, clock=clock)

    await deliver_all(app, "grant.expired", at=NOW)

    async def tracked() -> bool:
        return len(await all_cases(sessions)) == 2 * PER_DOMAIN

    await eventually(tracked, within=30)

    async def incidents_posted() -> bool:
        await settle(app, clock)
        found = await incidents(sessions)
        return len(found) == 2 and all(i.slack_ts for i in found)

    await eventually(incidents_posted, within=20)
    found = await incidents(sessions)
    assert sorted(i.key for i in found) == sorted(DOMAINS)
    cases = await all_cases(sessions)
    assert {c.incident_id for c in cases} == {i.id for i in found}
    assert all(c.status == CaseStatus.OPEN for c in cases)

    # At most the few cases posted before their storm was recognized, plus one per incident.
    posts = channel_posts(slack)
    assert 2 <= len(posts) <= 2 + 2 * 4
    assert sum(1 for c in cases if c.own_alert) == len(posts) - 2

    async def headline_current() -> bool:
        await settle(app, clock)
        return all(
            f"{PER_DOMAIN} accounts at {i.key} lost access"
            in text_of(slack.messages[(CHANNEL, i.slack_ts or "")])
            for i in found
        )

    await eventually(headline_current, within=20)

    # Someone not allowed to acknowledge is refused, and nothing changes.
    north = next(i for i in found if i.key == "north.example")
    refused = click_payload(slack, ids.INCIDENT_ACK, str(north.id), "U0BOB", n="bob")
    body = urlencode({"payload": json.dumps(refused)})
    assert await click(app, body) == 200

    async def told_bob() -> bool:
        return bool(slack.responses_to("bob"))

    await eventually(told_bob)
    assert "not allowed" in slack.responses_to("bob")[0]["text"]
    assert not any(c.acknowledged_at for c in await all_cases(sessions))

    # Acknowledge all: every case of the north storm, none of the south one.
    payload = click_payload(slack, ids.INCIDENT_ACK, str(north.id), "U0SUE", n="sue")
    assert await click(app, urlencode({"payload": json.dumps(payload)})) == 200

    async def acknowledged() -> bool:
        return sum(1 for c in await all_cases(sessions) if c.acknowledged_by) == PER_DOMAIN

    await eventually(acknowledged, within=10)
    for case in await all_cases(sessions):
        if case.incident_id == north.id:
            assert (case.status, case.acknowledged_by) == (CaseStatus.ACKNOWLEDGED, "slack:U0SUE")
        else:
            assert case.acknowledged_at is None

    async def told_sue() -> bool:  # the reply follows the commit
        return bool(slack.responses_to("sue"))

    await eventually(told_sue)
    assert "acknowledged incident" in slack.responses_to("sue")[0]["text"]
    async with sessions() as session:
        audit = (
            await session.exec(select(CaseEvent).where(CaseEvent.action == "acknowledged"))
        ).all()
    assert len(audit) == PER_DOMAIN

    # A second press finds it done.
    again = click_payload(slack, ids.INCIDENT_ACK, str(north.id), "U0SUE", n="sue2")
    assert await click(app, urlencode({"payload": json.dumps(again)})) == 200

    async def told_again() -> bool:
        return bool(slack.responses_to("sue2"))

    await eventually(told_again)
    assert "was acknowledged by" in slack.responses_to("sue2")[0]["text"]

    # Everyone re-authenticates: both incidents end with a summary in the channel.
    clock.advance(minutes=20)
    await deliver_all(app, "grant.updated", at=NOW + timedelta(minutes=20), reauthenticated=True)

    async def ended() -> bool:
        await settle(app, clock)
        done = await incidents(sessions)
        return all(i.status == IncidentStatus.ENDED for i in done) and all(
            any("ended" in m.get("text", "") for m in slack.thread(CHANNEL, i.slack_ts or ""))
            for i in done
        )

    await eventually(ended, within=30)
    assert all(c.status == CaseStatus.RESOLVED for c in await all_cases(sessions))
    for incident in await incidents(sessions):
        summary = [
            m for m in slack.thread(CHANNEL, incident.slack_ts or "") if "ended" in m["text"]
        ]
        assert len(summary) == 1
        assert summary[0]["subtype"] == "thread_broadcast"
        assert f"all {PER_DOMAIN} accounts at {incident.key} are resolved" in summary[0]["text"]
        assert f"{PER_DOMAIN} re-authenticated" in summary[0]["text"]

        async def shows_ended(incident: Incident = incident) -> bool:
            await settle(app, clock)
            message = slack.messages[(CHANNEL, incident.slack_ts or "")]
            return "Ended" in text_of(message) and ids.INCIDENT_ACK not in text_of(message)

        await eventually(shows_ended, within=20)
    # Still only the posts of the storm: recovery added no new top-level messages but the
    # summaries, which are thread replies also sent to the channel.
    assert len(channel_posts(slack)) == len(posts)


async def test_re_auth_links_for_a_whole_storm_come_as_csv(
    start: Any, slack: FakeSlack, sessions: Sessions, nylas_fake: FakeNylas
) -> None:
    clock = FrozenClock(NOW)
    app = await start(
        clock=clock,
        nylas_redirect_uri="https://app.example/nylas/callback",
        **nylas_settings(nylas_fake, "v3"),
    )
    await asyncio.gather(
        *(deliver(app, "grant.expired", n, "west.example", at=NOW) for n in range(6))
    )

    async def posted() -> bool:
        await settle(app, clock)
        found = await incidents(sessions)
        return len(found) == 1 and bool(found[0].slack_ts)

    await eventually(posted, within=20)
    payload = click_payload(slack, ids.INCIDENT_LINKS, "1", "U0SUE", n="links")
    assert await click(app, urlencode({"payload": json.dumps(payload)})) == 200

    async def answered() -> bool:
        return bool(slack.responses_to("links"))

    await eventually(answered)
    (answer,) = slack.responses_to("links")
    assert answer["response_type"] == "ephemeral"
    assert answer["text"].startswith("6 re-authentication links for incident #1")
    csv_text = "".join(
        b["text"]["text"].strip("`") for b in answer["blocks"][1:] if b["type"] == "section"
    )
    rows = csv_text.strip().splitlines()
    assert rows[0] == '"email","link"'
    assert sorted(r.split(",", 1)[0] for r in rows[1:]) == [
        f'"user{n}@west.example"' for n in range(6)
    ]
    assert all("/v3/connect/auth?" in r and "login_hint=" in r for r in rows[1:])
    assert not any("state=" in r for r in rows[1:])
    assert {c.status for c in await all_cases(sessions)} == {CaseStatus.WAITING_ON_USER}
