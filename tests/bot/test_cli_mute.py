"""`reauthbot mute` and `reauthbot unmute`, run as operators run them: a real process."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import CaseEvent, Mute, OutboxKind, OutboxMessage
from tests.bot.test_cli import assert_one_line_error
from tests.cli import run

Sessions = async_sessionmaker[AsyncSession]


async def stored(sessions: Sessions) -> tuple[list[Mute], list[OutboxMessage], int]:
    async with sessions() as session:
        mutes = list((await session.exec(select(Mute).order_by(col(Mute.id)))).all())
        messages = list((await session.exec(select(OutboxMessage))).all())
        events = len((await session.exec(select(CaseEvent))).all())
    return mutes, messages, events


async def test_mute_list_and_unmute_from_the_command_line(
    tmp_path: Path, migrated_url: str, sessions: Sessions
) -> None:
    env = {"DATABASE_URL": migrated_url, "USER": "ana", "SLACK_ALERT_CHANNEL": "C0ALERTS"}
    assert run(tmp_path, "mute", "list", **env).stdout.strip() == "no mutes in force"

    muted = run(tmp_path, "mute", "domain", "Example.com", "--for", "2h", "--reason", "move", **env)
    assert muted.returncode == 0, muted.stderr
    assert muted.stdout.startswith("muted domain example.com until ")
    assert muted.stdout.strip().endswith("(2 h): mute #1")
    (mute,), messages, _ = await stored(sessions)
    assert (mute.scope, mute.value, mute.created_by, mute.reason) == (
        "domain",
        "example.com",
        "cli:ana",
        "move",
    )
    assert (mute.ends_at - mute.starts_at).total_seconds() == 2 * 3600
    assert messages == []

    table = run(tmp_path, "mute", "list", **env).stdout.splitlines()
    assert table[0].split() == ["MUTE", "SCOPE", "VALUE", "UNTIL", "BY", "REASON"]
    assert table[1].split()[:3] == ["1", "domain", "example.com"]
    assert table[1].split()[4:] == ["cli:ana", "move"]
    (record,) = json.loads(run(tmp_path, "mute", "list", "--json", **env).stdout)
    assert record["mute"] == 1 and record["by"] == "cli:ana"

    twice = run(tmp_path, "mute", "domain", "example.com", "--for", "1h", **env)
    assert_one_line_error(twice, 1, "domain example.com is already muted (mute #1")

    ended = run(tmp_path, "unmute", "1", **env)
    assert ended.returncode == 0, ended.stderr
    assert ended.stdout.strip() == "ended mute #1 of domain example.com; its summary is queued"
    (mute,), messages, _ = await stored(sessions)
    assert mute.ended_by == "cli:ana" and mute.summarised_at is not None
    (summary,) = messages
    assert (summary.kind, summary.channel) == (OutboxKind.NOTICE, "C0ALERTS")
    assert summary.payload["text"] == (
        "Mute of domain example.com ended: no account broke during it."
    )
    assert_one_line_error(run(tmp_path, "unmute", "1", **env), 1, "Mute #1", "is already over")
    assert run(tmp_path, "mute", "list", **env).stdout.strip() == "no mutes in force"


async def test_wrong_input_exits_with_one_line_and_changes_nothing(
    tmp_path: Path, migrated_url: str, sessions: Sessions
) -> None:
    env = {"DATABASE_URL": migrated_url, "USER": "ana"}
    for args, code, needle in [
        (["mute", "domain"], 2, "which domain?"),
        (["mute", "provider", "google"], 2, "for how long? add --for 2h"),
        (["mute", "domain", "localhost", "--for", "2h"], 2, "`localhost` is not an email domain"),
        (["mute", "domain", "example.com", "--for", "soon"], 2, "`soon` is not a duration"),
        (["mute", "domain", "example.com", "--for", "8d"], 2, "A mute lasts at most 7 d"),
        (["mute", "list", "--for", "2h"], 2, "`mute list` takes no value, --for or --reason"),
        (["unmute", "first"], 2, "'first' is not a mute number"),
        (["unmute", "99"], 1, "There is no mute #99."),
    ]:
        assert_one_line_error(run(tmp_path, *args, **env), code, needle)
    unknown = run(tmp_path, "mute", "planet", "earth", "--for", "2h", **env)
    assert unknown.returncode == 2
    assert "invalid choice: 'planet' (choose from 'domain', 'provider', 'list')" in unknown.stderr
    assert await stored(sessions) == ([], [], 0)
