"""Storms by cause, end to end: what is ordinary churn stays one alert per case.

Signed deliveries go to the running app, which posts to the fake Slack; clicks are signed
as Slack signs them. The policy is the one a new user writes first: five cases of one domain
within ten minutes.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from bot.services import SERVICES
from bot.slack import ids
from storage.incidents import SAMPLE
from storage.models import Case, CaseStatus, IncidentScope
from tests.bot.slack.support import CHANNEL, NOW, Sessions, click, click_payload
from tests.bot.slack.test_storm_e2e import (
    all_cases,
    channel_posts,
    deliver,
    incidents,
    settle,
    text_of,
)
from tests.conftest import FrozenClock
from tests.fakes.slack import FakeSlack
from tests.waiting import eventually
from workflows.escalation import escalate_due

POLICY = """
[storms]
threshold = 5
window = "10m"

[escalation]
levels = [{ after = "15m", mention = ["U0ONCALL"] }]

[permissions]
ack = ["U0SUE"]
"""


def buttons_in(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for b in blocks if b["type"] == "actions" for e in b["elements"]]


async def posted_alone(slack: FakeSlack, sessions: Sessions, count: int, clock: Any) -> None:
    async def done() -> bool:
        return len([m for m in channel_posts(slack) if "Case #" in m.get("text", "")]) >= count

    await eventually(done, within=30)


async def test_five_expiries_at_a_public_mail_domain_are_five_alerts(
    start: Any, slack: FakeSlack, sessions: Sessions
) -> None:
    clock = FrozenClock(NOW)
    app = await start(POLICY, clock=clock)
    await asyncio.gather(*(deliver(app, "grant.expired", n, "gmail.com", at=NOW) for n in range(5)))
    await posted_alone(slack, sessions, 5, clock)
    assert await incidents(sessions) == []
    posts = channel_posts(slack)
    assert len(posts) == 5
    for post in posts:  # each with its own buttons
        assert {ids.ACK, ids.RESOLVE} <= {b["action_id"] for b in buttons_in(post["blocks"])}


async def test_churn_of_one_provider_over_many_domains_is_one_alert_each(
    start: Any, slack: FakeSlack, sessions: Sessions
) -> None:
    clock = FrozenClock(NOW)
    app = await start(POLICY, clock=clock)
    await asyncio.gather(
        *(
            deliver(app, "grant.expired", n, f"d{n}.example", at=NOW + timedelta(seconds=n))
            for n in range(12)
        )
    )
    await posted_alone(slack, sessions, 12, clock)
    await settle(app, clock)
    assert await incidents(sessions) == []
    posts = channel_posts(slack)
    assert len(posts) == 12
    for post in posts:
        actions = {b["action_id"] for b in buttons_in(post["blocks"])}
        assert {ids.ACK, ids.LINK, ids.RETRY, ids.REVOKE} <= actions
    assert all(c.own_alert and c.incident_id is None for c in await all_cases(sessions))


async def test_an_outage_of_one_provider_is_one_incident_whose_cases_stay_one_click_away(
    start: Any, slack: FakeSlack, sessions: Sessions
) -> None:
    clock = FrozenClock(NOW)
    app = await start(POLICY, clock=clock)
    # 60 grants of google over 20 domains (three each: no domain storm) within a minute.
    jobs = [(n, f"d{n % 20}.example") for n in range(60)]
    for first in range(0, 60, 20):
        await asyncio.gather(
            *(deliver(app, "grant.expired", n, d, at=NOW) for n, d in jobs[first : first + 20])
        )

    async def one_incident() -> bool:
        await settle(app, clock)
        found = await incidents(sessions)
        return len(found) == 1 and bool(found[0].slack_ts) and len(await all_cases(sessions)) == 60

    # The cases posted before the 50th arrived go out first, paced as Slack wants.
    await eventually(one_incident, within=90)
    (incident,) = await incidents(sessions)
    assert (incident.scope, incident.key) == (IncidentScope.INTEGRATION, "google")
    cases = await all_cases(sessions)
    assert {c.incident_id for c in cases} == {incident.id}

    # Cases posted alone before the storm was seen are listed as already posted, with links.
    async def current() -> bool:
        await settle(app, clock)
        message = slack.messages[(CHANNEL, incident.slack_ts or "")]
        return "60 accounts of the google integration" in text_of(message)

    await eventually(current, within=60)
    message = slack.messages[(CHANNEL, incident.slack_ts or "")]
    posted_alone_before = [c for c in cases if c.own_alert]
    shown = text_of(message)
    # The first cases (oldest first) are those posted alone: each is linked, none is new.
    linked = set(re.findall(r"archives/C0ALERTS/p(\d+)\|", shown))
    own = {c.slack_ts.replace(".", "") for c in posted_alone_before if c.slack_ts}
    assert own and linked and linked <= own
    assert len(linked) == min(SAMPLE, len(own))
    assert ids.INCIDENT_SHOW in shown

    # Show cases: privately, the open cases with their own buttons, which work.
    payload = click_payload(slack, ids.INCIDENT_SHOW, str(incident.id), "U0ANA", n="show")
    assert await click(app, urlencode({"payload": json.dumps(payload)})) == 200

    async def shown_cases() -> bool:
        return bool(slack.responses_to("show"))

    await eventually(shown_cases)
    (answer,) = slack.responses_to("show")
    assert answer["response_type"] == "ephemeral"
    assert f"incident #{incident.id}" in answer["text"]
    rows = [b for b in answer["blocks"] if b["type"] == "actions"]
    case_rows = [b for b in rows if b.get("block_id", "").startswith("case-")]
    assert len(case_rows) == 10  # a page; "More" pages on
    ack = next(e for e in case_rows[0]["elements"] if e["action_id"] == ids.ACK)
    click_ack = click_payload(slack, ids.ACK, ack["value"], "U0SUE", n="ack")
    assert await click(app, urlencode({"payload": json.dumps(click_ack)})) == 200

    async def acknowledged() -> bool:
        async with sessions() as session:
            case = await session.get(Case, int(ack["value"]))
        return case is not None and case.status == CaseStatus.ACKNOWLEDGED

    await eventually(acknowledged)
    more = [e for b in rows for e in b["elements"] if e["action_id"] == ids.LIST_MORE]
    assert more and '"incident":' in more[0]["value"]


async def test_a_case_after_its_domain_storm_went_quiet_alerts_and_escalates_alone(
    start: Any, slack: FakeSlack, sessions: Sessions
) -> None:
    clock = FrozenClock(NOW)
    app = await start(POLICY, clock=clock)
    await asyncio.gather(
        *(deliver(app, "grant.expired", n, "acme.example", at=NOW) for n in range(6))
    )

    async def storm_posted() -> bool:
        await settle(app, clock)
        found = await incidents(sessions)
        return len(found) == 1 and bool(found[0].slack_ts)

    await eventually(storm_posted, within=60)
    before = len(channel_posts(slack))

    # Eleven minutes of quiet: the next case of the domain is posted on its own.
    clock.advance(minutes=11)
    await deliver(app, "grant.expired", 99, "acme.example", at=clock())

    async def alone() -> bool:
        # Posted, and its message recorded on the case (its thread is where it escalates).
        cases = {c.account_id: c for c in await all_cases(sessions)}
        late = cases.get("g-acme.example-99")
        posted = any("user99@acme.example" in m.get("text", "") for m in channel_posts(slack))
        return posted and late is not None and late.slack_ts is not None

    await eventually(alone, within=60)
    assert len(channel_posts(slack)) == before + 1
    (incident,) = await incidents(sessions)
    assert incident.sealed_at is not None
    late = next(c for c in await all_cases(sessions) if c.account_id == "g-acme.example-99")
    assert late.incident_id is None and late.own_alert

    # Nobody reacts: it escalates on its own, in its own thread.
    services = app.server.app[SERVICES]
    await escalate_due(sessions, policy=services.settings.policy.escalation, now=clock())
    clock.advance(minutes=16)
    await escalate_due(sessions, policy=services.settings.policy.escalation, now=clock())

    async def escalated() -> bool:
        return any(
            "Escalated" in m.get("text", "") for m in slack.thread(CHANNEL, late.slack_ts or "")
        )

    await eventually(escalated, within=60)
