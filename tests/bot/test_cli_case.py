"""``reauthbot cases`` filters and ``reauthbot case show|ack|snooze|resolve``, run as real
processes on a real database: the same audit and queued Slack update as a button click."""

from __future__ import annotations

import json
import os
import pwd
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import cases
from storage.models import Account, Case, CaseEvent, OutboxKind, OutboxMessage
from tests.bot.test_cli import assert_one_line_error
from tests.cli import run

NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)


async def seed(sessions: async_sessionmaker[AsyncSession]) -> tuple[int, int]:
    """Two open cases: a re-auth at acme.com (google) and a stopped one at globex.com."""
    async with sessions() as session, session.begin():
        session.add(
            Account(
                id="g-1",
                api_version="v3",
                email="ana@acme.com",
                provider="google",
                first_seen_at=NOW,
                updated_at=NOW,
            )
        )
        session.add(
            Account(
                id="a-2",
                api_version="v2",
                email="bo@globex.com",
                provider="microsoft",
                first_seen_at=NOW,
                updated_at=NOW,
            )
        )
        await session.flush()
        first = await cases.open_case(
            session, account_id="g-1", kind="reauth", state="invalid", now=NOW, channel="C0ALERTS"
        )
        second = await cases.open_case(
            session, account_id="a-2", kind="stopped", state="stopped", now=NOW, channel="C0ALERTS"
        )
        assert first is not None and second is not None
        assert first.id is not None and second.id is not None
        return first.id, second.id


async def history(
    sessions: async_sessionmaker[AsyncSession], case_id: int
) -> tuple[Case, list[CaseEvent], list[str]]:
    async with sessions() as session:
        case = await session.get(Case, case_id)
        assert case is not None
        events = (
            await session.exec(
                select(CaseEvent).where(CaseEvent.case_id == case_id).order_by(col(CaseEvent.id))
            )
        ).all()
        queued = (
            await session.exec(
                select(OutboxMessage.kind)
                .where(OutboxMessage.case_id == case_id)
                .order_by(col(OutboxMessage.id))
            )
        ).all()
        return case, list(events), list(queued)


def table(stdout: str) -> list[list[str]]:
    return [line.split() for line in stdout.splitlines()]


async def test_cases_filters_and_columns(
    tmp_path: Path, migrated_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    first, second = await seed(sessions)
    listed = run(tmp_path, "cases", DATABASE_URL=migrated_url)
    assert listed.returncode == 0, listed.stderr
    rows = table(listed.stdout)
    assert rows[0] == ["CASE", "ACCOUNT", "EMAIL", "KIND", "STATE", "INCIDENT", "OPENED", "STATUS"]
    assert rows[1] == [
        str(first),
        "g-1",
        "ana@acme.com",
        "reauth",
        "invalid",
        "-",
        "2026-11-02T09:30:00Z",
        "open",
    ]
    for args, expected in [
        (["--kind", "stopped"], [second]),
        (["--domain", "ACME.com"], [first]),
        (["--provider", "microsoft"], [second]),
        (["--status", "open", "--kind", "reauth"], [first]),
        (["--incident", "7"], []),
    ]:
        result = run(tmp_path, "cases", "--json", *args, DATABASE_URL=migrated_url)
        assert result.returncode == 0, result.stderr
        assert [r["case"] for r in json.loads(result.stdout)] == expected, args
    none = run(tmp_path, "cases", "--incident", "7", DATABASE_URL=migrated_url)
    assert none.stdout.strip() == "no open cases match"
    wrong = run(tmp_path, "cases", "--kind", "nonsense", DATABASE_URL=migrated_url)
    assert wrong.returncode == 2 and "invalid choice" in wrong.stderr


async def test_case_actions_audit_as_the_operator_and_queue_the_card(
    tmp_path: Path, migrated_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    first, second = await seed(sessions)
    login = pwd.getpwuid(os.getuid()).pw_name

    acked = run(tmp_path, "case", "ack", str(first), DATABASE_URL=migrated_url)
    assert acked.returncode == 0, acked.stderr
    assert acked.stdout.strip() == f"You acknowledged case #{first}."
    case, events, queued = await history(sessions, first)
    assert (case.status, case.acknowledged_by) == ("acknowledged", f"cli:{login}")
    assert [(e.actor, e.action) for e in events][-1] == (f"cli:{login}", "acknowledged")
    assert queued[-2:] == [OutboxKind.UPDATE, OutboxKind.THREAD]

    again = run(tmp_path, "case", "ack", str(first), "--as", "bo", DATABASE_URL=migrated_url)
    assert again.returncode == 0
    assert f"already acknowledged by cli:{login}" in again.stdout

    snoozed = run(
        tmp_path, "case", "snooze", str(second), "--for", "4h", "--as", "bo",
        DATABASE_URL=migrated_url,
    )  # fmt: skip
    assert snoozed.returncode == 0, snoozed.stderr
    case, events, queued = await history(sessions, second)
    assert case.status == "snoozed" and case.snoozed_until is not None
    assert (events[-1].actor, events[-1].action, events[-1].details["for"]) == (
        "cli:bo",
        "snoozed",
        "4h",
    )
    assert queued[-2:] == [OutboxKind.UPDATE, OutboxKind.THREAD]

    resolved = run(
        tmp_path, "case", "resolve", str(second), "--note", "user left", "--as", "bo",
        DATABASE_URL=migrated_url,
    )  # fmt: skip
    assert resolved.returncode == 0, resolved.stderr
    case, events, _ = await history(sessions, second)
    assert (case.status, case.resolved_by, case.resolution) == ("resolved", "cli:bo", "user left")
    assert (events[-1].actor, events[-1].details) == ("cli:bo", {"note": "user left"})

    shown = run(tmp_path, "case", "show", str(second), DATABASE_URL=migrated_url)
    assert shown.returncode == 0, shown.stderr
    # The case's card, as Slack and `reauthbot preview` show it: resolved, so it says so.
    assert shown.stdout.startswith("Resolved: bo@globex.com\n"), shown.stdout
    assert f"Case      #{second}" in shown.stdout
    assert "Resolution: user left" in shown.stdout
    assert "resolved by cli:bo" in shown.stdout


async def test_case_errors_change_nothing(
    tmp_path: Path, migrated_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    first, _ = await seed(sessions)
    before = await history(sessions, first)

    missing = run(tmp_path, "case", "ack", "999", DATABASE_URL=migrated_url)
    assert_one_line_error(missing, 1, "Case #999 does not exist.")
    assert_one_line_error(
        run(tmp_path, "case", "show", "999", DATABASE_URL=migrated_url), 1, "#999 does not exist"
    )
    for args in (
        ["case", "snooze", str(first), "--for", "2d"],
        ["case", "snooze", str(first)],
        ["case", "ack", "first"],
        ["case", "frobnicate", str(first)],
    ):
        result = run(tmp_path, *args, DATABASE_URL=migrated_url)
        assert result.returncode == 2, args
        assert "Traceback" not in result.stderr
    bad_name = run(tmp_path, "case", "ack", str(first), "--as", "", DATABASE_URL=migrated_url)
    assert_one_line_error(bad_name, 2, "--as takes a name")

    after = await history(sessions, first)
    assert (after[0].status, len(after[1]), after[2]) == (
        before[0].status,
        len(before[1]),
        before[2],
    )
