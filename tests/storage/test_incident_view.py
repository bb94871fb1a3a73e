"""The tally an incident's message shows, counted by the database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import incidents
from storage.models import Account, Case, CaseStatus, Incident

Sessions = async_sessionmaker[AsyncSession]
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)

# (account id, api version, email, kind, status, resolved_by)
MEMBERS = [
    ("v2-stopped-1", "v2", "a@acme.com", "stopped", CaseStatus.OPEN, None),
    ("v2-stopped-2", "v2", None, "stopped", CaseStatus.ACKNOWLEDGED, None),
    ("v3-stopped", "v3", "b@acme.com", "stopped", CaseStatus.OPEN, None),  # not retryable
    ("v3-reauth", "v3", "c@acme.com", "reauth", CaseStatus.SNOOZED, None),
    ("v3-no-email", "v3", "", "reauth", CaseStatus.OPEN, None),  # no link without an email
    ("v3-support", "v3", "d@acme.com", "sync_error", CaseStatus.OPEN, None),  # not linkable
    ("v2-fixed", "v2", "e@acme.com", "stopped", CaseStatus.RESOLVED, "nylas"),
    ("v3-fixed-1", "v3", "f@acme.com", "reauth", CaseStatus.RESOLVED, "slack:U0SUE"),
    ("v3-fixed-2", "v3", "g@acme.com", "reauth", CaseStatus.RESOLVED, "slack:U0BOB"),
    ("v3-closed", "v3", "h@acme.com", "reauth", CaseStatus.RESOLVED, None),
]


async def make_incident(sessions: Sessions) -> int:
    async with sessions() as session, session.begin():
        incident = Incident(
            scope="domain",
            key="acme.com",
            opened_at=T0,
            updated_at=T0,
            first_case_at=T0,
            last_case_at=T0,
        )
        session.add(incident)
        await session.flush()
        assert incident.id is not None
        for n, (account_id, version, email, kind, status, resolver) in enumerate(MEMBERS):
            at = T0 + timedelta(minutes=n)
            session.add(
                Account(
                    id=account_id,
                    api_version=version,
                    email=email,
                    first_seen_at=at,
                    updated_at=at,
                )
            )
            session.add(
                Case(
                    account_id=account_id,
                    kind=kind,
                    status=status,
                    opened_at=at,
                    updated_at=at,
                    broken_since=at,
                    incident_id=incident.id,
                    own_alert=False,
                    resolved_by=resolver,
                    resolved_at=at if status == CaseStatus.RESOLVED else None,
                )
            )
        # A case of another incident counts for nothing here.
        session.add(Account(id="elsewhere", api_version="v2", first_seen_at=T0, updated_at=T0))
        session.add(
            Case(
                account_id="elsewhere",
                kind="stopped",
                status=CaseStatus.OPEN,
                opened_at=T0,
                updated_at=T0,
                broken_since=T0,
            )
        )
        return incident.id


async def test_the_tally_of_an_incident(sessions: Sessions) -> None:
    incident_id = await make_incident(sessions)
    async with sessions() as session:
        shown = await incidents.view(session, incident_id=incident_id)

    assert shown is not None
    assert shown.total == len(MEMBERS)
    assert shown.unresolved == 6
    assert shown.by_status == {
        CaseStatus.OPEN: 4,
        CaseStatus.ACKNOWLEDGED: 1,
        CaseStatus.SNOOZED: 1,
        CaseStatus.RESOLVED: 4,
    }
    assert shown.by_kind == {"stopped": 3, "reauth": 2, "sync_error": 1}  # unresolved only
    assert shown.retryable == 2  # the unresolved v2 stopped accounts
    assert shown.linkable == 3  # unresolved, an email, and a kind a link can fix
    assert shown.resolved_by == {"nylas": 1, "slack": 2, "system": 1}
    # Unresolved cases, oldest first, by email or else by id; none was posted on its own.
    assert not any(member.posted for member in shown.sample)
    assert tuple(member.label for member in shown.sample) == (
        "a@acme.com",
        "v2-stopped-2",
        "b@acme.com",
        "c@acme.com",
        "v3-no-email",
        "d@acme.com",
    )


async def test_an_incident_that_does_not_exist(sessions: Sessions) -> None:
    async with sessions() as session:
        assert await incidents.view(session, incident_id=404) is None
