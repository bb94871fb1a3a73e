"""Facts for the diagnosis and the support ticket, from history made by the real workflows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import cases, evidence
from storage.models import Account, Case
from tests.conftest import NYLAS_CLIENT_ID, NYLAS_CLIENT_SECRET
from tests.fakes.nylas import FakeNylas
from workflows import actions
from workflows.diagnosis import Facts, Finding, Revocation, diagnose, gather, refresh
from workflows.escalation import escalate_due
from workflows.events import AccountEvent
from workflows.lifecycle import apply_event
from workflows.nylas import NylasClient
from workflows.policy import Escalation, EscalationLevel
from workflows.ticket import hand_out, support_ticket, ticket_for

Sessions = async_sessionmaker[AsyncSession]
T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
M, H, D = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
TRIGGERS = {
    "running": "account.running",
    "stopped": "account.stopped",
    "invalid": "account.invalid",
    "sync-error": "account.sync_error",
}


async def event(
    sessions: Sessions, account_id: str, state: str, at: datetime, **fields: Any
) -> int | None:
    """Apply a v2 webhook as the ingest worker would, the account already enriched."""
    account_event = AccountEvent(
        account_id=account_id,
        api_version="v2",
        event_type=TRIGGERS[state],
        state=state,
        occurred_at=at,
        source="webhook",
        **fields,
    )
    async with sessions() as session, session.begin():
        outcome = await apply_event(session, account_event, now=at, route=lambda _: "C0ALERTS")
    return outcome.case_id


async def went_bad(
    sessions: Sessions, account_id: str, email: str, at: datetime, state: str = "invalid"
) -> int:
    await event(sessions, account_id, "running", at - D, email=email, provider="imap")
    case_id = await event(sessions, account_id, state, at)
    assert case_id is not None
    return case_id


async def load(sessions: Sessions, case_id: int) -> tuple[Any, Account]:
    async with sessions() as session:
        case = await cases.get_case(session, case_id=case_id)
        assert case is not None
        account = await cases.get_account(session, account_id=case.account_id)
        assert account is not None
    return case, account


@pytest.fixture
async def nylas(nylas_fake: FakeNylas) -> AsyncIterator[NylasClient]:
    async with httpx.AsyncClient(timeout=5) as http:
        yield NylasClient(
            http,
            api_version="v2",
            client_id=NYLAS_CLIENT_ID,
            client_secret=NYLAS_CLIENT_SECRET,
            base_url=nylas_fake.url,
            max_retries=0,
        )


async def test_gather_reads_our_revoke_the_domain_and_the_past(
    sessions: Sessions, nylas_fake: FakeNylas, nylas: NylasClient
) -> None:
    # Broken in Nylas too: revoke reads the account first and spares one that syncs again.
    nylas_fake.add_v2_account(
        id="a1", email="ana@acme-corp.com", provider="imap", sync_state="invalid"
    )
    # Two older episodes of the same account.
    for days in (60, 20):
        await went_bad(sessions, "a1", "ana@acme-corp.com", T0 - days * D)
        await event(sessions, "a1", "running", T0 - days * D + H)
    # It stopped; an operator revoked its tokens and closed the case by hand.
    earlier = await event(sessions, "a1", "stopped", T0 - 3 * H)
    assert earlier is not None
    done = await actions.revoke(
        sessions, case_id=earlier, actor="slack:U0ALICE", now=T0 - 2 * H, nylas=nylas
    )
    assert done.changed
    await actions.resolve(
        sessions, case_id=earlier, actor="slack:U0ALICE", now=T0 - 2 * H + M, note="revoked"
    )
    # Now it is invalid, and so are colleagues at the same company around the same time.
    case_id = await event(sessions, "a1", "invalid", T0)
    assert case_id is not None
    await went_bad(sessions, "a2", "bo@acme-corp.com", T0 - 10 * M)
    await went_bad(sessions, "a3", "cy@ACME-Corp.com", T0 + 20 * M)
    await went_bad(sessions, "a4", "dee@acme-corp.com", T0 + 45 * M)  # too late to be a peer
    await went_bad(sessions, "a5", "eve@notacme-corp.com", T0)  # another domain
    await went_bad(sessions, "a6", "fay@gmail.com", T0)
    await went_bad(sessions, "a7", "gus@acme-corp.com", T0, state="sync-error")  # no credentials
    # A later revoke, during this case, is not what broke it.
    await actions.revoke(sessions, case_id=case_id, actor="slack:U0BOB", now=T0 + H, nylas=nylas)

    case, account = await load(sessions, case_id)
    now = T0 + 2 * H
    async with sessions() as session:
        facts = await gather(session, case=case, account=account, now=now)
    assert facts == Facts(
        account_id="a1",
        api_version="v2",
        email="ana@acme-corp.com",
        provider="imap",
        kind="reauth",
        state="invalid",
        broken_since=T0,
        now=now,
        state_since=T0,
        connected_since=T0 - 61 * D,  # first seen then, never connected again
        revocation=Revocation("slack:U0ALICE", T0 - 2 * H, "revoke-all"),
        domain_peers=2,
        domain_peer_first=T0 - 10 * M,
        domain_peer_last=T0 + 20 * M,
        account_cases_30d=3,
        account_cases_90d=4,
        domain_cases_30d=7,
        domain_accounts_30d=5,
    )
    assert [f.rule for f in diagnose(facts)] == [
        "revoked_by_us",
        "same_domain",
        "basic_auth",
        "recurring",
    ]


async def test_gather_counts_the_case_itself_however_old(sessions: Sessions) -> None:
    case_id = await went_bad(sessions, "a1", "ana@initech.example", T0)
    case, account = await load(sessions, case_id)
    async with sessions() as session:
        facts = await gather(session, case=case, account=account, now=T0 + 100 * D)
    assert (facts.account_cases_30d, facts.account_cases_90d) == (1, 1)
    assert (facts.domain_cases_30d, facts.domain_accounts_30d) == (1, 1)
    assert (facts.domain_peers, facts.revocation) == (0, None)


async def test_a_domain_is_matched_literally(sessions: Sessions) -> None:
    await went_bad(sessions, "a1", "ana@a_b.example", T0)
    await went_bad(sessions, "a2", "bo@axb.example", T0)  # "_" would match any character
    await went_bad(sessions, "a3", "cy@a%b.example", T0)
    async with sessions() as session:
        for domain, expected in (("a_b.example", 1), ("a%b.example", 1), ("A_B.Example", 1)):
            tally = await evidence.count_cases(session, since=T0 - D, domain=domain)
            assert tally == evidence.Tally(expected, expected), domain


async def test_refresh_stores_the_findings_on_the_case(sessions: Sessions) -> None:
    case_id = await went_bad(sessions, "a1", "ana@gmail.com", T0)
    case, account = await load(sessions, case_id)
    async with sessions() as session, session.begin():
        case = await session.merge(case)
        findings = await refresh(session, case=case, account=account, now=T0 + H)
    assert [f.rule for f in findings] == ["basic_auth"]
    case, _ = await load(sessions, case_id)
    assert [Finding.from_json(f) for f in case.diagnosis] == findings


async def sync_error_history(sessions: Sessions, nylas_fake: FakeNylas, nylas: NylasClient) -> int:
    """A sync-error case escalated, acknowledged, retried twice and snoozed."""
    nylas_fake.add_v2_account(
        id="a-1", email="ana@acme-corp.com", provider="eas", upgrade_result="sync-error"
    )
    await event(sessions, "a-1", "running", T0 - D, email="ana@acme-corp.com", provider="eas")
    case_id = await event(sessions, "a-1", "sync-error", T0)
    assert case_id is not None
    policy = Escalation(levels=[EscalationLevel(after=timedelta(minutes=15), mention=["U0ONCALL"])])
    await escalate_due(sessions, policy=policy, now=T0 + M)
    assert await escalate_due(sessions, policy=policy, now=T0 + 16 * M) == 1
    await actions.acknowledge(sessions, case_id=case_id, actor="slack:U0ALICE", now=T0 + 20 * M)
    retried = await actions.retry_sync(
        sessions, case_id=case_id, actor="slack:U0ALICE", now=T0 + 25 * M, nylas=nylas
    )
    assert retried.message.endswith("now sync-error.")
    nylas_fake.fail("POST", r".*/downgrade", status=503, times=1)
    await actions.retry_sync(
        sessions, case_id=case_id, actor="slack:U0BOB", now=T0 + 30 * M, nylas=nylas
    )
    await actions.snooze(
        sessions, case_id=case_id, actor="slack:U0BOB", now=T0 + 35 * M, duration="4h"
    )
    return case_id


async def test_the_ticket_holds_what_nylas_support_asks_for(
    sessions: Sessions, nylas_fake: FakeNylas, nylas: NylasClient
) -> None:
    case_id = await sync_error_history(sessions, nylas_fake, nylas)
    async with sessions() as session, session.begin():
        text = await ticket_for(session, case_id=case_id, now=T0 + 2 * H)
    assert text is not None
    lines = text.splitlines()
    for wanted in (
        "Account ID: a-1",
        "Email: ana@acme-corp.com",
        "Provider: eas",
        "API version: v2",
        "Message ID: not applicable",
        "- Broken since: 2026-11-02T09:00:00Z",
        "- Case opened: 2026-11-02T09:00:00Z",
        "- In state sync-error since: 2026-11-02T09:00:00Z",
        "- Now: 2026-11-02T11:00:00Z",
        "- State recorded: 2026-11-02T09:00:00Z  sync-error (account.sync_error)",
        "Errors our end user sees: (add them here)",
        "Custom code: none",
        "- 2026-11-02T09:16:00Z  reauthbot: Escalated to on-call (level 1)",
        "- 2026-11-02T09:20:00Z  operator U0ALICE (Slack): Acknowledged the case",
        "- 2026-11-02T09:25:00Z  operator U0ALICE (Slack): Retry sync (downgrade, upgrade and "
        "re-read); the account was then sync-error",
        "- 2026-11-02T09:35:00Z  operator U0BOB (Slack): Snoozed the case for 4h",
    ):
        assert wanted in lines, wanted
    failed = [line for line in lines if "U0BOB (Slack): Retry sync failed: " in line]
    assert len(failed) == 1 and failed[0].startswith("- 2026-11-02T09:30:00Z")
    assert any(line.startswith("- 2026-11-02T09:30:00Z  retry failed: ") for line in lines)
    assert "Problem: sync-error (hit an unexpected error while syncing)." in lines
    assert "Support ticket" not in text  # the operator's advice stays in Slack
    # Steps come in the order they were taken.
    steps = lines[lines.index("Troubleshooting steps taken so far:") + 1 :]
    assert [s[2:22] for s in steps if s.startswith("- 2026")] == sorted(
        s[2:22] for s in steps if s.startswith("- 2026")
    )
    # Taking the ticket in a transaction also stored the fresh diagnosis.
    case, _ = await load(sessions, case_id)
    assert [f["rule"] for f in case.diagnosis] == ["support"]


async def test_a_case_that_does_not_exist_has_no_ticket(sessions: Sessions) -> None:
    async with sessions() as session:
        for case_id in (1, 0, -3, 2**40):
            assert await ticket_for(session, case_id=case_id, now=T0) is None
    assert await hand_out(sessions, case_id=5, actor="slack:U1", now=T0) is None


async def test_handing_out_the_ticket_is_audited(
    sessions: Sessions, nylas_fake: FakeNylas, nylas: NylasClient
) -> None:
    case_id = await sync_error_history(sessions, nylas_fake, nylas)
    text = await hand_out(sessions, case_id=case_id, actor="slack:U0CAROL", now=T0 + 2 * H)
    assert text is not None and "Account ID: a-1" in text
    async with sessions() as session:
        last = (await cases.case_events(session, case_id=case_id))[-1]
    assert (last.actor, last.action, last.at) == ("slack:U0CAROL", "support_ticket", T0 + 2 * H)
    # It is not a troubleshooting step: a second ticket does not list the first.
    again = await hand_out(sessions, case_id=case_id, actor="slack:U0CAROL", now=T0 + 3 * H)
    assert again is not None and "ticket" not in again.split("Troubleshooting steps")[1].lower()


def test_a_ticket_with_no_history_says_so_and_names_no_slack_mention() -> None:
    account = Account(
        id="g-1",
        api_version="v3",
        email="ana@acme-corp.com",
        provider="microsoft",
        sync_state="invalid",
        state_since=T0,
        first_seen_at=T0 - D,
        updated_at=T0,
    )
    case = Case(
        id=4,
        account_id="g-1",
        kind="reauth",
        state="invalid",
        opened_at=T0 + M,
        updated_at=T0 + M,
        broken_since=T0,
    )
    findings = diagnose(
        Facts(
            account_id="g-1",
            api_version="v3",
            email="ana@acme-corp.com",
            provider="microsoft",
            kind="reauth",
            state="invalid",
            broken_since=T0,
            now=T0 + H,
            revocation=Revocation("slack:U0ALICE", T0 - H, "delete-grant"),
        )
    )
    text = support_ticket(case, account, [], findings, now=T0 + H)
    lines = text.splitlines()
    assert lines[lines.index("Errors we see:") + 1] == "- none recorded"
    assert lines[lines.index("Troubleshooting steps taken so far:") + 1] == "- none yet"
    assert "- Case opened: 2026-11-02T09:01:00Z" in lines
    assert "Slack user U0ALICE deleted the grant" in text
    assert "<@" not in text
    assert text.endswith("Our reference: reauthbot case #4")
