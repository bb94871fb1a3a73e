"""Two `reauthbot serve` processes on one database, escalating what nobody acknowledges.

Both replicas run the escalation sweep over the same cases and the same storm incident; each
level's mention, DM and PagerDuty page must still go out once for each, and an acknowledged
case must go no further. Nylas' API is not configured: the cases open from the webhooks alone.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from bot.slack import ids
from bot.slack.sink import CASE_EVENT, INCIDENT_EVENT
from storage.engine import create_engine, session_factory
from storage.models import (
    Case,
    CaseEvent,
    CaseStatus,
    Incident,
    OutboxKind,
    OutboxMessage,
    OutboxStatus,
)
from tests.bot.slack.support import SIGNING_SECRET, click_payload, signed
from tests.cli import service
from tests.conftest import WEBHOOK_SECRET
from tests.fakes.pagerduty import FakePagerDuty
from tests.fakes.slack import FakeSlack
from tests.waiting import eventually
from workflows.escalation import sweep_period
from workflows.nylas import samples
from workflows.nylas.webhooks import sign
from workflows.policy import load_policy

TOKEN = "xoxb-e2e-token"
CHANNEL = "C0ALERTS"
ROUTING_KEY = "R0UTINGKEY0000000000000000000042"
SINGLES = 6  # accounts of their own domains: a case and an alert each
STORM = 5  # accounts of one domain: the default storm threshold, one incident
LEVEL_1 = 2  # seconds: mention on-call in the thread
LEVEL_2 = 7  # seconds: DM the lead and page PagerDuty
SPREAD = timedelta(seconds=0.15)  # between deliveries: they span more than one sweep (1 s)
POLICY = f"""
[escalation]
[[escalation.levels]]
after = "{LEVEL_1}s"
mention = ["S0ONCALL", "U0SUE"]
[[escalation.levels]]
after = "{LEVEL_2}s"
dm = ["U0LEAD"]
pagerduty = true
"""

Sessions = async_sessionmaker[AsyncSession]


@pytest.fixture
async def pagerduty() -> AsyncIterator[FakePagerDuty]:
    async with FakePagerDuty(routing_key=ROUTING_KEY) as fake:
        yield fake


def env(
    database_url: str, config: Path, slack: FakeSlack, pagerduty: FakePagerDuty
) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url,
        "REAUTHBOT_CONFIG": str(config),
        "SLACK_BOT_TOKEN": TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_ALERT_CHANNEL": CHANNEL,
        "SLACK_API_URL": slack.url,
        "NYLAS_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "PAGERDUTY_ROUTING_KEY": ROUTING_KEY,
        "PAGERDUTY_API_URL": pagerduty.url,
    }


def expired(grant: str, email: str, provider: str) -> tuple[bytes, dict[str, str]]:
    at = datetime.now(UTC)
    notification = samples.v3_notification(
        "grant.expired", grant_id=grant, email=email, at=at, provider=provider
    )
    raw = json.dumps(notification).encode()
    return raw, {"X-Nylas-Signature": sign(WEBHOOK_SECRET, raw)}


def deliveries() -> list[tuple[bytes, dict[str, str]]]:
    # The singles alternate between two providers, so that no provider storms either.
    singles = [
        expired(f"g-{n}", f"user@example{n}.com", ("google", "imap")[n % 2]) for n in range(SINGLES)
    ]
    storm = [expired(f"s-{n}", f"user{n}@storm.example", "microsoft") for n in range(STORM)]
    return singles + storm


def subjects(slack: FakeSlack) -> dict[str, str]:
    """The ts of each parent message in the channel, and what it is about ("case-1")."""
    found = {}
    for (channel, ts), message in slack.messages.items():
        metadata = message.get("metadata") or {}
        kind = {CASE_EVENT: "case", INCIDENT_EVENT: "incident"}.get(metadata.get("event_type", ""))
        if channel == CHANNEL and kind is not None:
            found[ts] = f"{kind}-{metadata['event_payload'][f'{kind}_id']}"
    return found


def escalation_lines(slack: FakeSlack, level: int) -> Counter[str]:
    """How many times each thread was told of `level`."""
    parents = subjects(slack)
    return Counter(
        parents[c.params["thread_ts"]]
        for c in slack.calls_to("chat.postMessage")
        if c.params.get("thread_ts") in parents
        and f"Escalated (level {level})" in c.params.get("text", "")
    )


def dms(slack: FakeSlack, user: str) -> Counter[str]:
    """How many DMs `user` got about each case and incident."""
    found = (
        re.match(r"(Case|Incident) #(\d+) ", c.params.get("text", ""))
        for c in slack.calls_to("chat.postMessage")
        if c.params.get("channel") == user
    )
    return Counter(f"{m.group(1).lower()}-{m.group(2)}" for m in found if m)


def triggers(pagerduty: FakePagerDuty) -> Counter[str]:
    """How many trigger events PagerDuty accepted for each case and incident."""
    return Counter(
        e.dedup_key.removeprefix("reauthbot-")
        for e in pagerduty.events
        if e.action == "trigger" and e.status == 202 and e.dedup_key
    )


async def escalation_sweeps(http: httpx.AsyncClient, replica: str) -> float:
    metrics = (await http.get(f"{replica}/metrics")).text
    match = re.search(r'reauthbot_job_runs_total\{job="escalation",outcome="ok"\} (\S+)', metrics)
    return float(match.group(1)) if match else 0.0


async def escalations(sessions: Sessions) -> Counter[str]:
    """The audit log's escalations, as "case-1 level 2"."""
    async with sessions() as session:
        stmt = select(CaseEvent).where(col(CaseEvent.action) == "escalated")
        rows = (await session.exec(stmt)).all()
    return Counter(f"case-{e.case_id} level {e.details['level']}" for e in rows)


async def test_two_replicas_escalate_each_level_once(
    tmp_path: Path, blank_url: str, slack: FakeSlack, pagerduty: FakePagerDuty
) -> None:
    config = tmp_path / "policy.toml"
    config.write_text(POLICY)
    policy = load_policy(config).escalation
    settings = env(blank_url, config, slack, pagerduty)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    engine = create_engine(blank_url)
    sessions = session_factory(engine)
    try:
        async with (
            service(tmp_path / "a", tmp_path / "a.log", settings) as first,
            service(tmp_path / "b", tmp_path / "b.log", settings) as second,
            httpx.AsyncClient(timeout=10) as http,
        ):
            replicas = (first, second)
            # Each delivery to one replica, and Nylas' retry of it to the other. They come a
            # little apart, so that the cases fall due between the sweeps of both replicas.
            for n, (raw, headers) in enumerate(deliveries()):
                answers = await asyncio.gather(
                    *(
                        http.post(f"{replica}/nylas/webhook", content=raw, headers=headers)
                        for replica in (replicas[n % 2], replicas[(n + 1) % 2])
                    )
                )
                assert [a.status_code for a in answers] == [200, 200]
                await asyncio.sleep(SPREAD.total_seconds())

            async def opened() -> list[Case]:
                async with sessions() as session:
                    return list((await session.exec(select(Case).order_by(col(Case.id)))).all())

            async def all_opened() -> bool:
                return len(await opened()) == SINGLES + STORM

            await eventually(all_opened, within=10)
            cases = await opened()
            singles = [f"case-{c.id}" for c in cases if c.incident_id is None]
            assert len(singles) == SINGLES
            assert {c.incident_id for c in cases if c.incident_id is not None} == {1}
            acked_id = next(c.id for c in cases if c.account_id == "g-0")

            # Someone acknowledges one case once its first level has run, before its second.
            async def first_level_ran() -> bool:
                ran = f"case-{acked_id} level 1" in await escalations(sessions)
                return ran and bool(subjects(slack))  # the click comes from an alert

            await eventually(first_level_ran, within=LEVEL_1 + 10)
            payload = click_payload(slack, ids.ACK, str(acked_id), "U0ANA")
            body = urlencode({"payload": json.dumps(payload)})
            answer = await http.post(f"{second}/slack/events", content=body, headers=signed(body))
            assert answer.status_code == 200

            async def acknowledged() -> bool:
                async with sessions() as session:
                    case = await session.get(Case, acked_id)
                return case is not None and case.status == CaseStatus.ACKNOWLEDGED

            await eventually(acknowledged)
            async with sessions() as session:
                acked = await session.get(Case, acked_id)
                incident = await session.get(Incident, 1)
            assert acked is not None and acked.acknowledged_at is not None
            assert incident is not None
            level_2_due = acked.opened_at + timedelta(seconds=LEVEL_2)
            assert acked.acknowledged_at < level_2_due, "acknowledged after level 2 was due"

            async def all_posted() -> bool:
                return set(singles) | {"incident-1"} <= set(subjects(slack).values())

            await eventually(all_posted, within=15)

            # Everything else reaches the second level: a DM to the lead and a page each.
            unacked = [s for s in singles if s != f"case-{acked_id}"] + ["incident-1"]

            async def second_level_sent() -> bool:
                return (
                    sum(dms(slack, "U0LEAD").values()) >= len(unacked)
                    and sum(triggers(pagerduty).values()) >= len(unacked)
                    and sum(escalation_lines(slack, 2).values()) >= len(unacked)
                )

            await eventually(second_level_sent, within=LEVEL_2 + 10)

            # Give both replicas two more sweeps past the last second level that fell due.
            last = max([c.opened_at for c in cases] + [incident.opened_at])
            last += timedelta(seconds=LEVEL_2) + 2 * sweep_period(policy)
            await asyncio.sleep(max((last - datetime.now(UTC)).total_seconds(), 0))

            async def drained() -> bool:
                async with sessions() as session:
                    pending = select(OutboxMessage).where(
                        col(OutboxMessage.status) == OutboxStatus.PENDING
                    )
                    return (await session.exec(pending)).first() is None

            await eventually(drained)
            sweeps = [await escalation_sweeps(http, replica) for replica in replicas]
            async with sessions() as session:
                outbox = (await session.exec(select(OutboxMessage))).all()
                incident = await session.get(Incident, 1)
            audit = await escalations(sessions)
    finally:
        await engine.dispose()

    everyone = [*singles, "incident-1"]
    # Both replicas swept several times: the sweep follows the policy, not every 30 s.
    assert all(n >= 3 for n in sweeps), sweeps
    # The audit log of the cases: level 1 once each, level 2 once each but the acknowledged.
    assert audit == Counter(
        [f"{s} level 1" for s in singles] + [f"{s} level 2" for s in unacked if s in singles]
    )
    assert incident is not None and incident.escalation_step == 2
    # What Slack and PagerDuty received: the storm's cases escalate only through the incident.
    assert escalation_lines(slack, 1) == Counter(everyone)
    assert escalation_lines(slack, 2) == Counter(unacked)
    assert dms(slack, "U0LEAD") == Counter(unacked)
    assert triggers(pagerduty) == Counter(unacked)
    mentions = [
        c.params
        for c in slack.calls_to("chat.postMessage")
        if "Escalated (level 1)" in c.params.get("text", "")
    ]
    assert all(m["text"].startswith("<!subteam^S0ONCALL> <@U0SUE> ") for m in mentions)
    assert all(m["reply_broadcast"] for m in mentions)

    # What was queued: one DM and one page each, whichever replica queued it.
    def queued(kind: str) -> Counter[str]:
        return Counter(
            f"case-{m.case_id}" if m.case_id is not None else f"incident-{m.incident_id}"
            for m in outbox
            if m.kind == kind
        )

    assert queued(OutboxKind.DM) == Counter(unacked)
    assert queued(OutboxKind.PAGE) == Counter(unacked)
