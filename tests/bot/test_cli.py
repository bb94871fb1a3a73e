"""The command line, run as operators run it: a real process, a clean environment."""

from __future__ import annotations

import json
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import cases
from storage.engine import create_engine, session_factory
from storage.migrate import current_revision, head_revision
from storage.models import Account
from tests.cli import run
from tests.ports import free_port

HEAD = head_revision()


def assert_one_line_error(result: object, code: int, *needles: str) -> None:
    stderr = result.stderr  # type: ignore[attr-defined]
    assert result.returncode == code, stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("reauthbot: ")
    for needle in needles:
        assert needle in lines[0]


def test_console_script_is_installed() -> None:
    assert shutil.which("reauthbot", path=str(Path(sys.executable).parent))


@pytest.mark.parametrize(
    ("env", "needles"),
    [
        ({"SLACK_APP_TOKEN": "xapp-1-A1-2-abc"}, ["SLACK_BOT_TOKEN", "SLACK_APP_TOKEN is set"]),
        ({"SLACK_BOT_TOKEN": "xoxb-1-abc"}, ["SLACK_ALERT_CHANNEL", "C…"]),
        (
            {"SLACK_BOT_TOKEN": "xoxb-1-abc", "SLACK_ALERT_CHANNEL": "C0ALERTS"},
            ["SLACK_SIGNING_SECRET"],
        ),
        ({"DATABASE_URL": "postgres//nope"}, ["DATABASE_URL", "not a database URL"]),
        ({"DATABASE_URL": "mysql://h/db"}, ["DATABASE_URL", "unsupported database"]),
        ({"REAUTHBOT_CONFIG": "missing.toml"}, ["REAUTHBOT_CONFIG", "does not exist"]),
        ({"NYLAS_API_VERSION": "v4"}, ["NYLAS_API_VERSION", "'v3' or 'v2'", "'v4'"]),
    ],
)
def test_bad_configuration_stops_serve_with_one_line(
    tmp_path: Path, env: dict[str, str], needles: list[str]
) -> None:
    result = run(tmp_path, "serve", PORT=str(free_port()), **env)
    assert_one_line_error(result, 2, *needles)
    assert not (tmp_path / "reauthbot.db").exists()


def test_unparsable_policy_file(tmp_path: Path) -> None:
    (tmp_path / "policy.toml").write_text("[storms\n")
    result = run(tmp_path, "check", REAUTHBOT_CONFIG="policy.toml")
    assert_one_line_error(result, 2, "REAUTHBOT_CONFIG", "policy.toml is not valid TOML")


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("NYLAS_API_VERSION=v7\n")
    assert_one_line_error(run(tmp_path, "check"), 2, "NYLAS_API_VERSION", "'v7'")


def test_unreachable_database_is_one_line(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://nobody:hunter22@127.0.0.1:{free_port()}/none"
    result = run(tmp_path, "cases", DATABASE_URL=url)
    assert_one_line_error(result, 1, "cannot use the database at postgresql+asyncpg://nobody:***@")
    assert "hunter22" not in result.stderr


def test_unknown_command_shows_usage(tmp_path: Path) -> None:
    result = run(tmp_path, "frobnicate")
    assert result.returncode == 2
    assert "usage: reauthbot" in result.stderr
    assert "Traceback" not in result.stderr


def test_db_upgrade_then_check(tmp_path: Path, blank_url: str) -> None:
    check = run(tmp_path, "check", DATABASE_URL=blank_url)
    if blank_url.startswith("sqlite"):
        # check only checks: it reports a missing file instead of creating an empty one.
        assert check.returncode == 1, check.stderr
        assert "no database at" in check.stdout
    else:
        assert check.returncode == 0, check.stderr
        assert "schema empty: run db upgrade" in check.stdout
    first = run(tmp_path, "db", "upgrade", DATABASE_URL=blank_url)
    assert first.returncode == 0, first.stderr
    assert f"database upgraded from empty to {HEAD}" in first.stdout
    again = run(tmp_path, "db", "upgrade", DATABASE_URL=blank_url)
    assert f"database already at {HEAD}" in again.stdout
    check = run(tmp_path, "check", DATABASE_URL=blank_url)
    assert f"reachable, schema {HEAD}" in check.stdout
    assert "local (alerts go to the log)" in check.stdout


def test_cases_refuses_an_unmigrated_database(tmp_path: Path, blank_url: str) -> None:
    result = run(tmp_path, "cases", DATABASE_URL=blank_url)
    assert_one_line_error(result, 1, "reauthbot db upgrade")


async def test_cases_table_never_truncates(
    tmp_path: Path, migrated_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    now = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
    long_email = "first.middle.last+mailbox-tracking-" + "x" * 40 + "@subdomain.example.co.uk"
    long_id = "grant-" + "0123456789abcdef" * 4
    async with sessions() as session, session.begin():
        session.add(
            Account(
                id=long_id, api_version="v3", email=long_email, first_seen_at=now, updated_at=now
            )
        )
        session.add(Account(id="a2", api_version="v2", first_seen_at=now, updated_at=now))
        await session.flush()
        await cases.open_case(session, account_id=long_id, kind="reauth", state="invalid", now=now)
        await cases.open_case(session, account_id="a2", kind="stopped", state="stopped", now=now)

    table = run(tmp_path, "cases", DATABASE_URL=migrated_url)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "CASE", "ACCOUNT", "EMAIL", "KIND", "STATE", "INCIDENT", "OPENED", "STATUS"
    ]  # fmt: skip
    assert long_email in lines[1] and long_id in lines[1]
    assert lines[1].split()[0] == "1"
    assert lines[2].split() == [
        "2", "a2", "-", "stopped", "stopped", "-", "2026-11-02T09:30:00Z", "open"
    ]  # fmt: skip

    as_json = run(tmp_path, "cases", "--json", DATABASE_URL=migrated_url)
    records = json.loads(as_json.stdout)
    assert [r["email"] for r in records] == [long_email, None]
    assert records[0] == {
        "case": 1,
        "account": long_id,
        "email": long_email,
        "state": "invalid",
        "kind": "reauth",
        "incident": None,
        "opened": "2026-11-02T09:30:00Z",
        "status": "open",
    }


def test_cases_with_none_open(tmp_path: Path, blank_url: str) -> None:
    assert run(tmp_path, "db", "upgrade", DATABASE_URL=blank_url).returncode == 0
    result = run(tmp_path, "cases", DATABASE_URL=blank_url)
    assert result.stdout.strip() == "no open cases"
    assert json.loads(run(tmp_path, "cases", "--json", DATABASE_URL=blank_url).stdout) == []


async def test_db_downgrade_for_a_rollback_keeps_what_older_versions_know(
    tmp_path: Path, blank_url: str
) -> None:
    missing = run(tmp_path, "db", "downgrade", "0011", DATABASE_URL=f"sqlite:///{tmp_path}/x.db")
    assert_one_line_error(missing, 1, "no database at")
    assert not (tmp_path / "x.db").exists()

    assert run(tmp_path, "db", "upgrade", DATABASE_URL=blank_url).returncode == 0
    engine = create_engine(blank_url)
    try:
        async with session_factory(engine)() as session, session.begin():
            now = datetime.now(UTC)
            session.add(Account(id="g-1", api_version="v3", email="ana@example.com",
                                first_seen_at=now, updated_at=now))  # fmt: skip

        # Without --yes it only says what it would undo, and changes nothing.
        asked = run(tmp_path, "db", "downgrade", "0011", DATABASE_URL=blank_url)
        assert asked.returncode == 2, asked.stderr
        assert "0013  Maintenance windows" in asked.stderr and "--yes" in asked.stderr
        assert await current_revision(engine) == HEAD

        for wrong, needle in [("9999", "is not a revision"), (HEAD, "already at")]:
            result = run(tmp_path, "db", "downgrade", wrong, DATABASE_URL=blank_url)
            assert needle in result.stdout + result.stderr
        done = run(tmp_path, "db", "downgrade", "0011", "--yes", DATABASE_URL=blank_url)
        assert done.returncode == 0, done.stderr
        assert f"database downgraded from {HEAD} to 0011" in done.stdout
        assert await current_revision(engine) == "0011"
        newer = run(tmp_path, "db", "downgrade", HEAD, DATABASE_URL=blank_url)
        assert_one_line_error(newer, 2, "use `reauthbot db upgrade`")

        # What the older schema holds is kept, and the way forward is open again.
        again = run(tmp_path, "db", "upgrade", DATABASE_URL=blank_url)
        assert f"database upgraded from 0011 to {HEAD}" in again.stdout
        async with session_factory(engine)() as session:
            account = await session.get(Account, "g-1")
            assert account is not None and account.email == "ana@example.com"
    finally:
        await engine.dispose()
