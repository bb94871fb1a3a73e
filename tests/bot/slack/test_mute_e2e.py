"""Maintenance windows end to end: `/reauth mute`, cases tracked without alerts, one summary.

Requests are signed as Slack signs them; Nylas deliveries are signed webhooks; the summary is
posted by the service's own job function under an injected clock.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from sqlmodel import col, select

from bot import jobs
from bot.services import SERVICES
from storage.models import Case, CaseEvent, Mute, OutboxKind, OutboxMessage
from tests.bot.slack.support import CHANNEL, NOW, Sessions, case_events, wait_posts
from tests.bot.slack.test_commands import Operator, shown
from tests.conftest import WEBHOOK_SECRET, FrozenClock
from tests.fakes.pagerduty import FakePagerDuty
from tests.fakes.slack import FakeSlack
from tests.waiting import eventually
from workflows.escalation import escalate_due
from workflows.nylas import samples
from workflows.nylas.webhooks import sign

ROUTING_KEY = "R0UTINGKEY0000000000000000000042"
PAGING = """
[[escalation.levels]]
after = "15m"
mention = ["U0SUE"]
pagerduty = true
"""


@pytest.fixture
async def pagerduty() -> AsyncIterator[FakePagerDuty]:
    async with FakePagerDuty(routing_key=ROUTING_KEY) as fake:
        yield fake


async def notify(
    app: TestClient,
    clock: FrozenClock,
    trigger: str,
    grant: str,
    email: str,
    provider: str = "google",
    **kw: Any,
) -> None:
    """Nylas sends a signed v3 notification about ``grant``."""
    raw = json.dumps(
        samples.v3_notification(
            trigger, grant_id=grant, email=email, at=clock(), provider=provider, **kw
        )
    ).encode()
    response = await app.post(
        "/nylas/webhook", data=raw, headers={"X-Nylas-Signature": sign(WEBHOOK_SECRET, raw)}
    )
    assert response.status == 200


async def case_of(sessions: Sessions, grant: str, *, resolved: bool = False) -> Case:
    """Wait until the grant's case is opened (and resolved, if asked) and return it."""
    found: list[Case] = []

    async def there() -> bool:
        async with sessions() as session:
            stmt = select(Case).where(col(Case.account_id) == grant).order_by(col(Case.id))
            found[:] = (await session.exec(stmt)).all()
        return bool(found) and (not resolved or found[-1].resolved_at is not None)

    await eventually(there)
    return found[-1]


async def messages(sessions: Sessions) -> list[OutboxMessage]:
    async with sessions() as session:
        return list((await session.exec(select(OutboxMessage).order_by(OutboxMessage.id))).all())


async def stored_mutes(sessions: Sessions) -> list[Mute]:
    async with sessions() as session:
        return list((await session.exec(select(Mute).order_by(col(Mute.id)))).all())


def top_level_posts(slack: FakeSlack) -> list[dict[str, Any]]:
    """Messages posted to the alert channel, not in a thread."""
    return [
        call.params
        for call in slack.calls_to("chat.postMessage")
        if call.params.get("channel") == CHANNEL and not call.params.get("thread_ts")
    ]


async def wait_top_level(slack: FakeSlack, count: int) -> list[dict[str, Any]]:
    """Wait until ``count`` messages were posted to the alert channel outside threads."""

    async def posted() -> bool:
        return len(top_level_posts(slack)) >= count

    await eventually(posted)
    return top_level_posts(slack)


async def summarise(app: TestClient) -> None:
    """The scheduled job that ends windows, as the scheduler runs it."""
    await jobs.summarise_mutes(app.server.app[SERVICES])


async def test_a_muted_domain_is_tracked_without_alerts_and_summarised_once(
    start: Any, slack: FakeSlack, pagerduty: FakePagerDuty, sessions: Sessions
) -> None:
    clock = FrozenClock(NOW)
    app = await start(
        PAGING, clock=clock, pagerduty_routing_key=ROUTING_KEY, pagerduty_api_url=pagerduty.url
    )
    op = Operator(app, slack)

    answer = await op.type("mute domain Example.COM for 2h mail server move")
    assert answer["text"] == "Muted domain example.com"
    assert "until <!date^" in shown(answer) and "mute #1" in shown(answer)
    (mute,) = await stored_mutes(sessions)
    assert (mute.scope, mute.value, mute.created_by) == ("domain", "example.com", "slack:U0ANA")
    assert (mute.starts_at, mute.ends_at, mute.reason) == (
        NOW,
        NOW.replace(hour=11),
        "mail server move",
    )

    # Ana's grant expires during the window: a case, tracked, but no alert.
    await notify(app, clock, "grant.expired", "g-1", "ana@example.com")
    ana = await case_of(sessions, "g-1")
    assert (ana.muted_by, ana.own_alert, ana.status) == (1, False, "open")
    # Another domain still alerts; its alert is the first and only post so far.
    clock.advance(minutes=1)
    await notify(app, clock, "grant.expired", "g-2", "bob@other.example")
    await wait_posts(slack, 1)
    (posted,) = top_level_posts(slack)
    assert "bob@other.example" in json.dumps(posted) and "ana@" not in json.dumps(posted)
    # A third account of the domain breaks and recovers within the window.
    await notify(app, clock, "grant.expired", "g-3", "cy@example.com")
    await case_of(sessions, "g-3")
    clock.advance(minutes=5)
    await notify(app, clock, "grant.updated", "g-3", "cy@example.com", reauthenticated=True)
    await case_of(sessions, "g-3", resolved=True)

    async with sessions() as session:
        muted = (await session.exec(select(CaseEvent).where(CaseEvent.action == "muted"))).all()
    assert sorted((e.case_id, e.actor, e.details["mute"]) for e in muted) == [
        (1, "system", 1),
        (3, "system", 1),
    ]
    assert {m.case_id for m in await messages(sessions) if m.kind == OutboxKind.POST} == {2}

    # Nobody acknowledges anything: only the case that was alerted escalates and pages.
    clock.advance(minutes=20)
    policy = app.server.app[SERVICES].settings.policy.escalation
    assert await escalate_due(sessions, policy=policy, now=clock()) == 1

    async def paged() -> bool:
        return pagerduty.incident("reauthbot-case-2") is not None

    await eventually(paged)
    assert pagerduty.incident("reauthbot-case-1") is None
    async with sessions() as session:
        stmt = select(CaseEvent.case_id).where(CaseEvent.action == "escalated")
        assert (await session.exec(stmt)).all() == [2]

    # /reauth oncall and /reauth mute list show the window: scope, until when, by whom.
    for text in ("oncall", "mute list"):
        listed = shown(await op.type(text))
        assert "*#1* domain example.com until <!date^" in listed
        assert "by <@U0ANA>: mail server move" in listed

    # Before its end the job leaves it be; at its end it posts exactly one summary.
    await summarise(app)
    clock.advance(hours=2)
    await summarise(app)
    await summarise(app)
    posts = await wait_top_level(slack, 2)
    assert len(posts) == 2
    summary = posts[1]
    assert summary["text"] == (
        "Mute of domain example.com ended: 2 accounts broke during it, "
        "1 still broken (#1), 1 resolved."
    )
    body = json.dumps(summary["blocks"])
    assert (
        "#1 ana@example.com: grant has expired and must be re-authenticated (invalid), open."
        in body
    )
    assert "cy@example.com" not in body
    assert "Muted by U0ANA from 2026-11-02 09:30 to 2026-11-02 11:30 UTC (2 h)" in body
    assert "/reauth list --domain example.com" in body
    notices = [m for m in await messages(sessions) if m.kind == OutboxKind.NOTICE]
    assert len(notices) == 1
    assert (await stored_mutes(sessions))[0].summarised_at == clock()

    # The still-broken case is worked from the list, which carries its buttons.
    listed = await op.type("list --domain example.com")
    blocks = listed["blocks"]
    assert "*#1* ana@example.com" in json.dumps(blocks)
    (buttons,) = [b for b in blocks if b["type"] == "actions"]
    assert buttons["block_id"] == "case-1"

    # The window is over: the domain alerts again, and the muted case still does not page.
    assert "No mutes in force" in shown(await op.type("mute list"))
    await notify(app, clock, "grant.expired", "g-4", "dan@example.com")
    assert "dan@example.com" in json.dumps((await wait_top_level(slack, 3))[2])
    clock.advance(hours=1)
    await escalate_due(sessions, policy=policy, now=clock())
    assert pagerduty.incident("reauthbot-case-1") is None


async def test_a_muted_provider_is_tracked_without_alerts(
    start: Any, slack: FakeSlack, sessions: Sessions
) -> None:
    clock = FrozenClock(NOW)
    app = await start(clock=clock)
    op = Operator(app, slack)
    answer = await op.type("mute provider Microsoft 30m")
    assert answer["text"] == "Muted provider microsoft"

    await notify(app, clock, "grant.expired", "g-1", "ana@example.com", provider="microsoft")
    assert (await case_of(sessions, "g-1")).muted_by == 1
    await notify(app, clock, "grant.expired", "g-2", "bob@example.com", provider="google")
    await wait_posts(slack, 1)
    (posted,) = top_level_posts(slack)
    assert "bob@example.com" in json.dumps(posted)
    assert {m.case_id for m in await messages(sessions) if m.kind == OutboxKind.POST} == {2}


async def test_a_storm_of_a_muted_domain_is_not_posted(
    start: Any, slack: FakeSlack, sessions: Sessions
) -> None:
    clock = FrozenClock(NOW)
    app = await start("[storms]\nthreshold = 2\n", clock=clock)
    op = Operator(app, slack)
    await op.type("mute domain example.com for 1h")
    for n in range(1, 6):
        await notify(app, clock, "grant.expired", f"g-{n}", f"user{n}@example.com")
        await case_of(sessions, f"g-{n}")
    async with sessions() as session:
        opened = (await session.exec(select(Case))).all()
    assert [(c.muted_by, c.incident_id) for c in opened] == [(1, None)] * 5
    assert await messages(sessions) == []

    clock.advance(hours=1)
    await summarise(app)
    await wait_posts(slack, 1)
    (summary,) = top_level_posts(slack)
    assert summary["text"] == (
        "Mute of domain example.com ended: 5 accounts broke during it, "
        "5 still broken (#1, #2, #3, #4, #5), 0 resolved."
    )


async def test_ending_a_mute_early_summarises_it_once(
    start: Any, slack: FakeSlack, sessions: Sessions
) -> None:
    clock = FrozenClock(NOW)
    app = await start(clock=clock)
    op = Operator(app, slack)
    await op.type("mute domain example.com for 4h")
    clock.advance(minutes=30)
    answer = await op.type("unmute #1")
    assert answer["text"] == "Ended mute #1"
    await wait_posts(slack, 1)
    (summary,) = top_level_posts(slack)
    assert summary["text"] == "Mute of domain example.com ended: no account broke during it."
    assert "ended early by U0ANA" in json.dumps(summary["blocks"])
    (mute,) = await stored_mutes(sessions)
    assert (mute.ended_at, mute.ended_by) == (clock(), "slack:U0ANA")

    # Its planned end passes: nothing more is posted; `mute end` of it again is refused.
    clock.advance(hours=4)
    await summarise(app)
    assert len([m for m in await messages(sessions) if m.kind == OutboxKind.NOTICE]) == 1
    again = await op.type("mute end 1")
    assert again["text"] == "Mute #1 (domain example.com) is already over."
    # A new case of the domain alerts again.
    await notify(app, clock, "grant.expired", "g-1", "ana@example.com")
    await wait_posts(slack, 2)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("mute", "Mute what? Name a domain or a provider, and for how long."),
        ("mute planet earth for 2h", "`planet` is not something to mute; use domain or provider."),
        ("mute domain", "Which domain?"),
        ("mute provider", "Which provider?"),
        ("mute domain example.com", "For how long? Add `for 2h`, for example."),
        ("mute domain localhost for 2h", "`localhost` is not an email domain, like example.com."),
        ("mute domain example.com for soon", "`soon` is not a duration like 30m, 2h or 1d."),
        ("mute domain example.com for 8d", "A mute lasts at most 7 d; `8d` is longer."),
        ("mute domain example.com for 0m", "A mute lasts at least 1 minute."),
        ("mute list all", "`mute list` takes no arguments."),
        ("unmute", "Name one mute by its number (see `/reauth mute list`)."),
        ("unmute first", "`first` is not a mute number."),
        ("unmute 42", "There is no mute #42."),
    ],
)
async def test_wrong_input_is_explained_and_changes_nothing(
    start: Any, slack: FakeSlack, sessions: Sessions, text: str, error: str
) -> None:
    op = Operator(await start(), slack)
    answer = await op.type(text)
    assert answer["text"].startswith(error)
    assert await stored_mutes(sessions) == []
    assert await case_events(sessions) == []
    assert await messages(sessions) == []


async def test_a_scope_muted_twice_is_refused(
    start: Any, slack: FakeSlack, sessions: Sessions
) -> None:
    op = Operator(await start(clock=FrozenClock(NOW)), slack)
    await op.type("mute domain example.com for 2h")
    again = await op.type("mute domain @example.com for 4h")
    assert again["text"] == (
        "domain example.com is already muted (mute #1, until 2026-11-02 11:30 UTC); end it first."
    )
    assert len(await stored_mutes(sessions)) == 1


async def test_only_those_who_may_snooze_may_mute(
    start: Any, slack: FakeSlack, sessions: Sessions
) -> None:
    clock = FrozenClock(NOW)
    op = Operator(await start('[permissions]\nsnooze = ["U0SUE"]\n', clock=clock), slack)
    refused = await op.type("mute domain example.com for 2h", user="U0ANA")
    assert refused["text"] == "You are not allowed to mute alerts: it takes the snooze permission."
    assert await stored_mutes(sessions) == []

    allowed = await op.type("mute domain example.com for 2h", user="U0SUE")
    assert allowed["text"] == "Muted domain example.com"
    not_ended = await op.type("unmute 1", user="U0ANA")
    assert not_ended["text"] == (
        "You are not allowed to end a mute: it takes the snooze permission."
    )
    (mute,) = await stored_mutes(sessions)
    assert mute.ended_at is None and mute.summarised_at is None
    assert await messages(sessions) == []
    assert await case_events(sessions) == [("slack:U0ANA", "refused"), ("slack:U0ANA", "refused")]
