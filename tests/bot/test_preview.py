"""`reauthbot preview`: a case's or an incident's card as text, run as operators run it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import cases, incidents
from storage.models import Account, CaseStatus
from tests.bot.test_cli import assert_one_line_error
from tests.cli import run
from workflows.diagnosis import Finding

Sessions = async_sessionmaker[AsyncSession]
NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
FINDING = Finding(
    rule="password",
    title="Password changed",
    advice="Send the end user a re-auth link.",
    evidence=("grant.expired at 09:29",),
)


async def add_case(
    sessions: Sessions,
    account_id: str,
    email: str,
    *,
    status: str = CaseStatus.OPEN,
    incident_id: int | None = None,
) -> int:
    """Store a v3 grant with an expired case of the given status; return the case number."""
    async with sessions() as session, session.begin():
        session.add(
            Account(
                id=account_id,
                api_version="v3",
                email=email,
                email_domain=email.split("@")[1],
                provider="google",
                billing_state="paid",
                first_seen_at=NOW,
                updated_at=NOW,
            )
        )
        await session.flush()
        case = await cases.open_case(
            session, account_id=account_id, kind="reauth", state="invalid", now=NOW
        )
        assert case is not None and case.id is not None
        case.diagnosis = [FINDING.to_json()]
        case.incident_id = incident_id
        if status == CaseStatus.ACKNOWLEDGED:
            case.status, case.acknowledged_at, case.acknowledged_by = status, NOW, "slack:U0ANA"
        if status == CaseStatus.RESOLVED:
            case.status, case.resolved_at = status, NOW + timedelta(hours=2)
            case.resolved_by, case.resolution = "nylas", "The end user re-authenticated."
        session.add(case)
        return case.id


def preview(tmp_path: Path, url: str, *args: str) -> list[str]:
    result = run(tmp_path, "preview", *args, DATABASE_URL=url)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return result.stdout.splitlines()


async def test_an_open_case_reads_like_its_alert(
    tmp_path: Path, migrated_url: str, sessions: Sessions
) -> None:
    case_id = await add_case(sessions, "g-1", "ana@example.com")
    lines = preview(tmp_path, migrated_url, str(case_id))
    assert lines[:8] == [
        "Needs re-authentication: ana@example.com",
        "ana@example.com grant has expired and must be re-authenticated.",
        "  Account   g-1",
        "  Provider  google (v3)",
        "  State     invalid",
        "  Since     2026-11-02T09:30:00Z",
        "  Status    Open",
        f"  Case      #{case_id}",
    ]
    assert lines[8].startswith("Why it matters: No mail syncs and no notifications arrive")
    assert "bills" in lines[8]
    assert lines[9].startswith("Broken since 2026-11-02T09:30:00Z. Re-authenticated by ")
    assert lines[10:14] == [
        "Next step: Send the end user a re-authentication link.",
        "Likely cause:",
        "  - Password changed: Send the end user a re-auth link.",
        "    grant.expired at 09:29",
    ]
    assert lines[14:] == [
        "Actions: [Acknowledge] [Send re-auth link] [Snooze: 1 hour | 4 hours | 24 hours] "
        "[Check again] [Resolve] [Revoke tokens (off)]"
    ]
    # "#12" reads the same as "12".
    assert preview(tmp_path, migrated_url, f"#{case_id}") == lines


async def test_a_resolved_case_reads_resolved(
    tmp_path: Path, migrated_url: str, sessions: Sessions
) -> None:
    case_id = await add_case(sessions, "g-1", "ana@example.com", status=CaseStatus.RESOLVED)
    text = "\n".join(preview(tmp_path, migrated_url, str(case_id)))
    assert text.splitlines()[:2] == [
        "Resolved: ana@example.com",
        "ana@example.com no longer needs attention: the case is resolved.",
    ]
    assert "  Was       invalid" in text
    assert "  Resolved  2026-11-02T11:30:00Z" in text
    assert text.endswith("Resolution: The end user re-authenticated.")
    for gone in ("must be re-authenticated", "State", "Next step", "Actions"):
        assert gone not in text


async def test_an_incident_reads_like_its_message(
    tmp_path: Path, migrated_url: str, sessions: Sessions
) -> None:
    async with sessions() as session, session.begin():
        incident = await incidents.create_incident(
            session, scope="domain", key="example.com", now=NOW, first_case_at=NOW
        )
        assert incident is not None and incident.id is not None
        incident_id = incident.id
    for n in range(3):
        await add_case(sessions, f"g-{n}", f"user{n}@example.com", incident_id=incident_id)
    lines = preview(tmp_path, migrated_url, "--incident", str(incident_id))
    assert lines == [
        "Storm: 3 accounts at example.com lost access within a minute",
        f"Incident #{incident_id}: 3 cases, 3 open.",
        "First at 2026-11-02T09:30:00Z, latest at 2026-11-02T09:30:00Z.",
        "Unresolved: 3 needs re-authentication.",
        "Accounts: user0@example.com, user1@example.com, user2@example.com",
        "Actions: [Show cases] [Acknowledge all] [Re-auth links (3)]",
    ]


async def test_blocks_print_what_slack_would_get(
    tmp_path: Path, migrated_url: str, sessions: Sessions
) -> None:
    case_id = await add_case(sessions, "g-1", "ana@example.com")
    printed = json.loads("\n".join(preview(tmp_path, migrated_url, str(case_id), "--blocks")))
    blocks = printed["blocks"]
    assert blocks[0] == {
        "type": "header",
        "text": {"type": "plain_text", "text": "Needs re-authentication: ana@example.com"},
    }
    assert blocks[-1]["type"] == "actions"


async def test_an_unknown_case_or_incident_is_one_line(
    tmp_path: Path, migrated_url: str, sessions: Sessions
) -> None:
    await add_case(sessions, "g-1", "ana@example.com")
    result = run(tmp_path, "preview", "999", DATABASE_URL=migrated_url)
    assert_one_line_error(result, 1, "no case #999 in the database at ")
    assert result.stdout == ""
    result = run(tmp_path, "preview", "--incident", "999", DATABASE_URL=migrated_url)
    assert_one_line_error(result, 1, "no incident #999")


def test_bad_arguments_are_usage_errors(tmp_path: Path) -> None:
    for args in (["abc"], ["0"], ["1.5"], [], ["1", "--incident", "2"], ["--incident", "x"]):
        result = run(tmp_path, "preview", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert "usage: reauthbot preview" in result.stderr
        assert "Traceback" not in result.stderr
    assert "'abc' is not a number" in run(tmp_path, "preview", "abc").stderr
    assert not (tmp_path / "reauthbot.db").exists()


def test_no_database_is_created_to_preview_from(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "reauthbot.db"
    result = run(tmp_path, "preview", "1", DATABASE_URL=f"sqlite+aiosqlite:///{missing}")
    assert_one_line_error(result, 1, f"no database at {missing}")
    assert not missing.parent.exists()
    result = run(tmp_path, "preview", "1")  # the default database, in the working directory
    assert_one_line_error(result, 1, "no database at ", "reauthbot.db")
    assert not (tmp_path / "reauthbot.db").exists()


def test_an_unmigrated_database_is_one_line(tmp_path: Path, blank_url: str) -> None:
    url = make_url(blank_url)
    if url.get_backend_name() == "sqlite":
        Path(url.database or "").touch()  # an empty file is an empty SQLite database
    result = run(tmp_path, "preview", "1", DATABASE_URL=blank_url)
    assert_one_line_error(result, 1, "reauthbot db upgrade")
