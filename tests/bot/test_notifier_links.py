"""The notifier hands a case's newest re-authentication link to the sink with its card."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from bot import logs
from bot.metrics import Metrics
from bot.notifier import LogSink, Notifier, Posted
from storage import actors, outbox
from storage import links as store
from storage.incidents import IncidentView
from storage.models import Account, Case, OutboxKind, OutboxMessage, ReauthLink
from tests import builders
from tests.conftest import FrozenClock

Sessions = async_sessionmaker[AsyncSession]


class RecordingSink:
    """Posts every message, and keeps what it was handed."""

    name = "recording"

    def __init__(self) -> None:
        self.calls: list[tuple[str, int | None]] = []

    async def deliver(
        self,
        message: OutboxMessage,
        case: Case | None,
        account: Account | None,
        incident: IncidentView | None = None,
        *,
        parent: Posted | None = None,
        link: ReauthLink | None = None,
    ) -> Posted | None:
        self.calls.append((message.kind, link.id if link is not None else None))
        return Posted(channel="C0ALERTS", ts="1700000000.000100")


async def add_link(sessions: Sessions, case_id: int, clock: FrozenClock, **fields: Any) -> int:
    async with sessions() as session, session.begin():
        link = await store.add(
            session,
            token=f"token-{clock().timestamp()}",
            case_id=case_id,
            created_by=actors.slack("U0ANA"),
            now=clock(),
            expires_at=clock() + timedelta(days=7),
        )
        for name, value in fields.items():
            setattr(link, name, value)
        session.add(link)
        assert link.id is not None
        return link.id


async def queue(sessions: Sessions, case_id: int, kind: OutboxKind, clock: FrozenClock) -> None:
    async with sessions() as session, session.begin():
        payload = {"text": "A line."} if kind == OutboxKind.THREAD else {}
        await outbox.enqueue(
            session,
            channel="C0ALERTS",
            kind=kind,
            now=clock(),
            case_id=case_id,
            payload=payload,
        )


async def test_the_newest_link_goes_with_the_card(sessions: Sessions, clock: FrozenClock) -> None:
    sink = RecordingSink()
    notifier = Notifier(sessions, sink, clock=clock, metrics=Metrics())
    case_id = await builders.open_case_with_alert(sessions, clock(), channel="C0ALERTS")
    await notifier.drain_once()
    assert sink.calls == [(OutboxKind.POST, None)]  # no link yet
    await add_link(sessions, case_id, clock)
    clock.advance(minutes=5)
    newest = await add_link(sessions, case_id, clock)
    await queue(sessions, case_id, OutboxKind.UPDATE, clock)
    await queue(sessions, case_id, OutboxKind.THREAD, clock)
    await notifier.drain_once()
    # A thread line shows no card: no link is read for it.
    assert sink.calls[1:] == [(OutboxKind.UPDATE, newest), (OutboxKind.THREAD, None)]


async def test_the_log_sink_writes_the_link_line(
    sessions: Sessions, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    case_id = await builders.open_case_with_alert(sessions, clock(), channel="C0ALERTS")
    await add_link(sessions, case_id, clock, sent_at=clock(), sent_via="nylas")
    caplog.set_level(logging.WARNING, logger="reauthbot.alerts")
    await Notifier(sessions, LogSink(), clock=clock, metrics=Metrics()).drain_once()
    (record,) = [r for r in caplog.records if r.name == "reauthbot.alerts"]
    assert "Link made by @U0ANA 09:30 · emailed 09:30" in getattr(record, logs.BLOCK)
