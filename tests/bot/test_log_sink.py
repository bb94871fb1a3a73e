"""Local mode: each alert is one log record that shows the whole card, as the log reads it."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from bot import logs
from bot.notifier import LogSink
from storage.incidents import IncidentView, Member
from storage.models import Account, Case, CaseStatus, Incident, OutboxKind, OutboxMessage

NOW = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 ")


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    logs.configure(fmt="plain", level="INFO", stream=stream)
    yield stream
    logs.configure(fmt="plain", level="WARNING", stream=io.StringIO())


def message(
    kind: str, *, case_id: int | None = None, incident_id: int | None = None
) -> OutboxMessage:
    return OutboxMessage(
        channel="C0ALERTS",
        kind=kind,
        case_id=case_id,
        incident_id=incident_id,
        created_at=NOW,
        available_at=NOW,
    )


def records(text: str) -> list[list[str]]:
    """The records of a plain log: each is its first line and the indented lines below it."""
    found: list[list[str]] = []
    for row in text.splitlines():
        if TIME.match(row):
            found.append([row])
        else:
            assert row.startswith("  ") and found, row
            found[-1].append(row)
    return found


def an_account(email: str) -> Account:
    return Account(
        id="g-1",
        api_version="v3",
        email=email,
        provider="google",
        billing_state="paid",
        first_seen_at=NOW,
        updated_at=NOW,
    )


def a_case(status: str = CaseStatus.OPEN) -> Case:
    case = Case(
        id=7,
        account_id="g-1",
        kind="reauth",
        status=status,
        state="invalid",
        opened_at=NOW,
        updated_at=NOW,
    )
    if status == CaseStatus.RESOLVED:
        case.resolved_at, case.resolved_by = NOW + timedelta(hours=1), "nylas"
        case.resolution = "The end user re-authenticated."
    return case


async def test_an_open_case_is_logged_with_its_whole_card(log: io.StringIO) -> None:
    sink = LogSink(revoke_enabled=True, outreach="nylas")
    await sink.deliver(message(OutboxKind.POST, case_id=7), a_case(), an_account("ana@example.com"))
    (record,) = records(log.getvalue())
    assert record[0].endswith(
        "WARNING reauthbot.alerts alert: Needs re-authentication: ana@example.com case=7 kind=post"
    )
    card = "\n".join(record)
    for expected in (
        "  ana@example.com grant has expired and must be re-authenticated.",
        "    State     invalid",
        "  Why it matters: No mail syncs",
        "  Next step: Send the end user a re-authentication link.",
        "  Actions: [Acknowledge] [Send re-auth link] [Email the user]",
        "[Delete grant (asks to confirm)]",
    ):
        assert expected in card


async def test_a_resolved_case_is_logged_as_resolved(log: io.StringIO) -> None:
    resolved = a_case(CaseStatus.RESOLVED)
    await LogSink().deliver(
        message(OutboxKind.UPDATE, case_id=7), resolved, an_account("ana@example.com")
    )
    (record,) = records(log.getvalue())
    assert "alert updated: Resolved: ana@example.com case=7" in record[0]
    card = "\n".join(record)
    assert "Resolution: The end user re-authenticated." in card
    assert "must be re-authenticated" not in card and "State " not in card
    assert "Actions" not in card


async def test_an_email_cannot_forge_a_record(log: io.StringIO) -> None:
    forged = "ana@example.com\n2026-11-02T09:30:00.000+00:00 ERROR reauthbot.app forged"
    await LogSink().deliver(message(OutboxKind.POST, case_id=7), a_case(), an_account(forged))
    (record,) = records(log.getvalue())
    assert "forged" in record[0] and "\\n2026-11-02" in record[0]


async def test_a_storm_is_logged_with_its_duration_and_incident(log: io.StringIO) -> None:
    incident = Incident(
        id=3,
        scope="domain",
        key="example.com",
        status="open",
        opened_at=NOW,
        updated_at=NOW,
        first_case_at=NOW,
        last_case_at=NOW + timedelta(seconds=40),
    )
    view = IncidentView(
        incident=incident,
        total=25,
        by_status={CaseStatus.OPEN: 25},
        by_kind={"reauth": 25},
        retryable=0,
        linkable=25,
        sample=(Member("a@example.com"), Member("b@example.com")),
        resolved_by={},
    )
    await LogSink().deliver(message(OutboxKind.POST, incident_id=3), None, None, view)
    (record,) = records(log.getvalue())
    assert record[0].endswith(
        "storm: Storm: 25 accounts at example.com lost access within a minute incident=3 kind=post"
    )
    assert "case=" not in record[0]
    assert record[1:] == [
        "  Incident #3: 25 cases, 25 open.",
        "  First at 2026-11-02T09:30:00Z, latest at 2026-11-02T09:30:40Z.",
        "  Unresolved: 25 needs re-authentication.",
        "  Accounts: a@example.com, b@example.com",
        "  and 23 more",
        "  Actions: [Show cases] [Acknowledge all] [Re-auth links (25)]",
    ]
