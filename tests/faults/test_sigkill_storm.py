"""A storm of webhooks, ``reauthbot serve`` killed with SIGKILL half-way, a new one started.

300 signed deliveries (some repeated by "Nylas", some second expiries of a grant) for accounts
at four large domains (storms: one incident each) and ten small ones (one alert per case).
The process is killed after every delivery was answered 200 and while alerts are still being
posted, some of them with their answer still on its way. A new process on the same database
must finish the work: each delivery applied once, one case per account, and every top-level
Slack message (a case's alert or an incident's) posted exactly once.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import update
from sqlmodel import col, select

from bot.slack.sink import CASE_EVENT, INCIDENT_EVENT
from storage.engine import create_engine, session_factory
from storage.models import (
    Case,
    CaseEvent,
    InboxDelivery,
    InboxStatus,
    Incident,
    OutboxMessage,
    OutboxStatus,
)
from tests.bot.slack.test_post_once import TOKEN, serve_env
from tests.cli import service
from tests.conftest import WEBHOOK_SECRET
from tests.fakes.slack import FakeSlack
from tests.waiting import eventually
from workflows.nylas import samples
from workflows.nylas.webhooks import sign

BIG = [
    (f"big{i}.example", provider)
    for i, provider in enumerate(("google", "microsoft", "yahoo", "icloud"))
]
PER_BIG = 60  # above the default storm threshold of 5
SMALL = [f"small{i}.example" for i in range(10)]
SMALL_PROVIDERS = ("imap", "eas", "exchange", "zoho")  # at most 4 cases each: no storm
REPEATS = 25  # the same notification again (Nylas retries)
SECOND_EXPIRIES = 20  # a new notification for an account already expired
TOTAL = 300


@dataclass(frozen=True)
class Account:
    grant_id: str
    email: str
    provider: str
    domain: str


def accounts() -> list[Account]:
    found = [
        Account(f"g-{domain}-{n}", f"user{n}@{domain}", provider, domain)
        for domain, provider in BIG
        for n in range(PER_BIG)
    ]
    small = [(domain, n) for i, domain in enumerate(SMALL) for n in range(1 + i % 2)]
    found += [
        Account(f"g-{domain}-{n}", f"user{n}@{domain}", SMALL_PROVIDERS[k % 4], domain)
        for k, (domain, n) in enumerate(small)
    ]
    return found


def signed(account: Account, notification: str, at: datetime) -> bytes:
    return json.dumps(
        samples.v3_notification(
            "grant.expired",
            grant_id=account.grant_id,
            email=account.email,
            provider=account.provider,
            notification_id=notification,
            at=at,
        )
    ).encode()


def storm(everyone: list[Account]) -> list[bytes]:
    """TOTAL deliveries in a shuffled order: one per account, repeats and second expiries."""
    rng = random.Random(7)
    now = datetime.now(UTC)
    firsts = [signed(a, f"n-{a.grant_id}", now) for a in everyone]
    seconds = [
        signed(a, f"n2-{a.grant_id}", now + timedelta(seconds=30))
        for a in rng.sample(everyone, SECOND_EXPIRIES)
    ]
    bodies = firsts + seconds + rng.sample(firsts, REPEATS)
    rng.shuffle(bodies)
    assert len(bodies) == TOTAL
    return bodies


def policy(tmp_path: Path) -> Path:
    """Each domain alerts in its own channel, so Slack's pace per channel is not the bottleneck."""
    domains = [d for d, _ in BIG] + SMALL
    routes = "\n".join(f'"{d}" = "C0CH{i}"' for i, d in enumerate(domains))
    path = tmp_path / "policy.toml"
    path.write_text(f"[routing.domains]\n{routes}\n")
    return path


def top_level(slack: FakeSlack) -> list[dict[str, object]]:
    return [m for m in slack.messages.values() if m.get("thread_ts", m["ts"]) == m["ts"]]


def posted_for(slack: FakeSlack, event_type: str, key: str) -> Counter[int]:
    found: Counter[int] = Counter()
    for message in top_level(slack):
        metadata = message.get("metadata") or {}
        assert isinstance(metadata, dict)
        if metadata.get("event_type") == event_type:
            found[metadata["event_payload"][key]] += 1
    return found


async def test_sigkill_in_a_storm_loses_nothing_and_posts_nothing_twice(
    tmp_path: Path, blank_url: str
) -> None:
    everyone = accounts()
    bodies = storm(everyone)
    log = tmp_path / "serve.log"
    engine = create_engine(blank_url)
    sessions = session_factory(engine)
    async with FakeSlack(bot_token=TOKEN) as slack:
        env = serve_env(blank_url, slack) | {"REAUTHBOT_CONFIG": str(policy(tmp_path))}
        # Slack takes each of the first posts, then is slow to say so: the kill is likely to
        # land between a post and its answer.
        slack.answer_late("chat.postMessage", 0.3, times=12)
        try:
            async with service(tmp_path, log, env) as base, httpx.AsyncClient() as http:

                async def send(raw: bytes) -> int:
                    headers = {"X-Nylas-Signature": sign(WEBHOOK_SECRET, raw)}
                    answer = await http.post(f"{base}/nylas/webhook", content=raw, headers=headers)
                    return answer.status_code

                statuses: list[int] = []
                for start in range(0, TOTAL, 25):
                    statuses += await asyncio.gather(*map(send, bodies[start : start + 25]))
                assert statuses == [200] * TOTAL

                async def some_posted() -> bool:
                    return len(top_level(slack)) >= 3

                await eventually(some_posted, within=20)
                # SIGKILL on leaving the block.

            async with sessions() as session:
                left = (
                    await session.exec(
                        select(OutboxMessage).where(OutboxMessage.status == OutboxStatus.PENDING)
                    )
                ).all()
            assert left, "the kill came too late: nothing was left to do"
            posted_before = len(top_level(slack))

            async with sessions() as session, session.begin():
                # The dead process's leases would run out in a minute; let that minute pass.
                await session.exec(
                    update(OutboxMessage)
                    .where(col(OutboxMessage.lease_until).is_not(None))
                    .values(lease_until=datetime.now(UTC) - timedelta(seconds=1))
                )

            async with service(tmp_path, log, env):

                async def settled() -> bool:
                    async with sessions() as session:
                        waiting = (
                            await session.exec(
                                select(OutboxMessage.id).where(
                                    OutboxMessage.status == OutboxStatus.PENDING
                                )
                            )
                        ).all()
                        unprocessed = (
                            await session.exec(
                                select(InboxDelivery.id).where(
                                    InboxDelivery.status != InboxStatus.DONE
                                )
                            )
                        ).all()
                    return not waiting and not unprocessed

                await eventually(settled, within=60)
                await asyncio.sleep(1.5)  # room for a second post of anything to show up

            async with sessions() as session:
                deliveries = (await session.exec(select(InboxDelivery))).all()
                all_cases = (await session.exec(select(Case))).all()
                opened = (
                    await session.exec(select(CaseEvent).where(CaseEvent.action == "opened"))
                ).all()
                incidents = (await session.exec(select(Incident))).all()
                failed = (
                    await session.exec(
                        select(OutboxMessage).where(OutboxMessage.status == OutboxStatus.FAILED)
                    )
                ).all()
        finally:
            await engine.dispose()

    # Every delivery answered 200 is stored once and applied once.
    assert len(deliveries) == TOTAL - REPEATS
    assert {(d.status, d.attempts) for d in deliveries} == {(InboxStatus.DONE, 1)}
    # One case per account, opened once.
    assert sorted(c.account_id for c in all_cases) == sorted(a.grant_id for a in everyone)
    assert len(opened) == len(everyone)
    assert failed == []

    # Each big domain is one incident, each posted once where its cases' stored coordinates say.
    assert sorted(i.key for i in incidents) == sorted(d for d, _ in BIG)
    incident_posts = posted_for(slack, INCIDENT_EVENT, "incident_id")
    assert incident_posts == Counter({i.id: 1 for i in incidents})
    for incident in incidents:
        assert (incident.slack_channel, incident.slack_ts) in slack.messages
    # Each case has its own alert, posted once, or belongs to an incident (or both: a case
    # posted before its storm was recognized keeps its alert).
    case_posts = posted_for(slack, CASE_EVENT, "case_id")
    assert set(case_posts.values()) <= {1}
    small = {a.grant_id for a in everyone if a.domain in SMALL}
    for case in all_cases:
        if case.account_id in small:
            assert case.incident_id is None and case.own_alert, case.account_id
        else:
            assert case.incident_id is not None, case.account_id
        if case.own_alert or case.id in case_posts:
            assert case_posts[case.id or 0] == 1, case.account_id
            assert (case.slack_channel, case.slack_ts) in slack.messages, case.account_id
    # Nothing else was posted at the top level, and no top-level message twice.
    assert len(top_level(slack)) == sum(incident_posts.values()) + sum(case_posts.values())
    print(
        f"posted before the kill: {posted_before}; after: {len(top_level(slack))}; "
        f"adopted after restart: {log.read_text().count('adopted the parent message')}"
    )
