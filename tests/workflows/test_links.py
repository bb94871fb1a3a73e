"""Tracked links and outreach in the workflows: nudge times, bulk pacing, withdrawal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlmodel import col, select

from storage.models import OUTREACH_CHANNEL, OutboxMessage
from tests.workflows.test_incidents import T0, Sessions, expire
from workflows import actions, bulk
from workflows.links import BULK_PACE, LinkMaker, nudge_times
from workflows.policy import Outreach

D, H = timedelta(days=1), timedelta(hours=1)
START = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
MAKER = LinkMaker(
    hosted=lambda account: f"https://auth.example/{account.id}",
    public_url="https://reauthbot.example.com",
    outreach=Outreach(channel="nylas", grant_id="g-support", nudges=[D, 3 * D]),
)


def test_nudges_follow_the_link_while_the_window_is_far() -> None:
    times = nudge_times(START, [D, 3 * D], window_end=START + 5 * D, expires_at=START + 7 * D)
    assert times == [START + D, START + 3 * D]


def test_the_last_nudge_moves_before_nylas_resend_window_closes() -> None:
    # The grant broke 10 h before the link: the window closes 62 h after it.
    window_end = START + 62 * H
    times = nudge_times(START, [D, 3 * D], window_end=window_end, expires_at=START + 7 * D)
    assert times == [START + D, window_end - 12 * H]


def test_nudges_after_the_window_give_way_to_one_and_none_outlives_the_link() -> None:
    window_end = START + 20 * H
    times = nudge_times(START, [D, 2 * D, 3 * D], window_end=window_end, expires_at=START + 7 * D)
    assert times == [START + 10 * H]  # half way, as 12 h before the end has passed
    assert nudge_times(START, [D, 8 * D], window_end=None, expires_at=START + 7 * D) == [START + D]
    # A link made after the window closed keeps its nudges (v2 has no window at all).
    late = nudge_times(START, [D], window_end=START - H, expires_at=START + 7 * D)
    assert late == [START + D]


async def outreach_messages(sessions: Sessions) -> list[OutboxMessage]:
    async with sessions() as session:
        stmt = (
            select(OutboxMessage)
            .where(col(OutboxMessage.channel) == OUTREACH_CHANNEL)
            .order_by(col(OutboxMessage.id))
        )
        return list((await session.exec(stmt)).all())


async def test_email_all_users_paces_the_emails(sessions: Sessions) -> None:
    for n in range(3):
        await expire(sessions, n, T0)
    result = await bulk.reauth_links(
        sessions, incident_id=1, actor="slack:U0SUE", now=T0, maker=MAKER, send=True
    )
    assert result.outcome == "done"
    assert "one every 0.5 s" in result.message
    requested = [
        m for m in await outreach_messages(sessions) if m.payload["event"] == "reauth.requested"
    ]
    assert [m.available_at for m in requested] == [T0 + BULK_PACE * i for i in range(3)]
    assert len({m.payload["to"] for m in requested}) == 3
    assert all(m.payload["link"].startswith("https://reauthbot.example.com/r/") for m in requested)


async def test_a_newer_link_and_a_snooze_withdraw_the_nudges(sessions: Sessions) -> None:
    await expire(sessions, 0, T0)
    for minutes in (0, 5):
        result = await actions.send_reauth_link(
            sessions,
            case_id=1,
            actor="slack:U0SUE",
            now=T0 + timedelta(minutes=minutes),
            maker=MAKER,
            send=True,
        )
        assert result.outcome == "done"
    statuses = [(m.payload["event"], m.status) for m in await outreach_messages(sessions)]
    # The first link's nudges are withdrawn; its email, already due, is checked again
    # before it is sent (it is no longer the newest link).
    assert statuses == [
        ("reauth.requested", "pending"),
        ("reauth.nudge", "superseded"),
        ("reauth.nudge", "superseded"),
        ("reauth.requested", "pending"),
        ("reauth.nudge", "pending"),
        ("reauth.nudge", "pending"),
    ]
    snoozed = await actions.snooze(
        sessions, case_id=1, actor="slack:U0SUE", now=T0 + H, duration="4h"
    )
    assert snoozed.outcome == "done"
    nudges = [m.status for m in await outreach_messages(sessions) if "nudge" in m.payload["event"]]
    assert nudges == ["superseded"] * 4


async def test_sending_needs_outreach_and_a_public_url(sessions: Sessions) -> None:
    await expire(sessions, 0, T0)
    untracked = LinkMaker(hosted=lambda account: "https://auth.example/x")
    refused = await actions.send_reauth_link(
        sessions, case_id=1, actor="slack:U0SUE", now=T0, maker=untracked, send=True
    )
    assert refused.outcome == "unavailable"
    assert "REAUTHBOT_PUBLIC_URL" in refused.message
    assert await outreach_messages(sessions) == []
