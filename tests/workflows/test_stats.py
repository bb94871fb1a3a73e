"""The figures of /reauth stats, from cases made by the real lifecycle and operator actions."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import cases
from storage.models import Account
from storage.reports import ChronicAccount, ChronicDomain, Tally
from tests.conftest import Nylas
from workflows import actions
from workflows.events import AccountEvent
from workflows.lifecycle import apply_event
from workflows.links import LinkMaker
from workflows.stats import GONE_STATES, NO_OUTREACH, CaseStats, case_stats

# aiohttp warns once per process that the fake Nylas server keys its request state by a string;
# with warnings as errors, the first request the fake serves would fail with a 500.

Sessions = async_sessionmaker[AsyncSession]
NOW = datetime(2026, 11, 9, 12, 0, tzinfo=UTC)
WEEK, MONTH = timedelta(days=7), timedelta(days=30)
M, H, D = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)

TRIGGERS = {
    ("v2", "running"): "account.running",
    ("v2", "stopped"): "account.stopped",
    ("v2", "invalid"): "account.invalid",
    ("v2", "sync-error"): "account.sync_error",
    ("v3", "invalid"): "grant.expired",
    ("v3", "valid"): "grant.updated",
    ("v3", "deleted"): "grant.deleted",
}


def route(email: str | None) -> str:
    return "C0ALERTS"


def link(account: Account) -> str:
    return f"https://auth.example.test/?login_hint={account.email}"


async def event(
    sessions: Sessions,
    account_id: str,
    state: str,
    at: datetime,
    *,
    version: str = "v2",
    source: str = "webhook",
    **fields: Any,
) -> int | None:
    """Apply one account event as the ingest worker or the reconcile poll would."""
    trigger = "poll" if source == "poll" else TRIGGERS[(version, state)]
    account_event = AccountEvent(
        account_id=account_id,
        api_version=version,
        event_type=trigger,
        state=state,
        occurred_at=at,
        source=source,
        **fields,
    )
    async with sessions() as session, session.begin():
        outcome = await apply_event(session, account_event, now=at, route=route)
    return outcome.case_id


def reauthenticated() -> dict[str, Any]:
    return {"details": {"reauthenticated": True}}


async def stats(sessions: Sessions, window: timedelta = WEEK, **kw: Any) -> CaseStats:
    async with sessions() as session:
        return await case_stats(session, now=NOW, window=window, **kw)


# --- an empty database --------------------------------------------------------------------


async def test_an_empty_database_has_no_figures(sessions: Sessions) -> None:
    assert await stats(sessions) == CaseStats(
        now=NOW,
        window=WEEK,
        open_total=0,
        open_by_kind=(),
        open_by_provider=(),
        open_by_domain=(),
        open_billed=0,
        past_grace=0,
        acknowledged=0,
        mean_time_to_acknowledge=None,
        resolved=0,
        mean_time_to_resolve=None,
        fixed_without_operator=0,
        chronic_accounts=(),
        chronic_domains=(),
        outreach=NO_OUTREACH,
    )
    assert (await stats(sessions)).fixed_without_operator_share is None
    assert NO_OUTREACH.fixed_share is None and NO_OUTREACH.nothing


async def test_refuses_an_empty_window(sessions: Sessions) -> None:
    with pytest.raises(ValueError, match="window"):
        await stats(sessions, window=timedelta(0))


# --- a realistic fortnight and a month ----------------------------------------------------


@pytest.fixture
async def history(sessions: Sessions, nylas: Nylas) -> None:
    """Eleven accounts through a month of incidents; the figures are worked out in the tests.

    Times are relative to NOW; the week's window starts at NOW - 7 d.
    """
    s = sessions
    # a1: three cases this week.
    a1 = {"email": "ana@acme.com", "provider": "gmail", "billing_state": "paid"}
    c1 = await event(s, "a1", "invalid", NOW - 6 * D, **a1)
    assert c1 is not None
    await actions.acknowledge(s, case_id=c1, actor="slack:U1", now=NOW - 6 * D + 30 * M)
    await event(s, "a1", "running", NOW - 6 * D + 2 * H)  # 2 h, acknowledged: not unaided
    await event(s, "a1", "stopped", NOW - 5 * D)
    await event(s, "a1", "invalid", NOW - 5 * D + 20 * M)  # the state changes
    await event(s, "a1", "downloading", NOW - 5 * D + H, source="poll")  # 1 h, unaided
    await event(s, "a1", "invalid", NOW - D)  # still open
    # a2: acknowledged after 10 minutes, still open; not billed.
    a2 = {"email": "bo@Acme.com", "provider": "Gmail", "billing_state": "cancelled"}
    c4 = await event(s, "a2", "sync-error", NOW - 3 * D, **a2)
    assert c4 is not None
    await actions.acknowledge(s, case_id=c4, actor="slack:U2", now=NOW - 3 * D + 10 * M)
    # g3 (v3): re-authenticated after an operator sent the link, then expired and deleted.
    g3 = {"version": "v3", "email": "cy@globex.com", "provider": "google"}
    c5 = await event(s, "g3", "invalid", NOW - 4 * D, **g3)
    assert c5 is not None
    await actions.send_reauth_link(
        s, case_id=c5, actor="slack:U1", now=NOW - 4 * D + 5 * M, maker=LinkMaker(hosted=link)
    )
    await event(s, "g3", "valid", NOW - 4 * D + 3 * H, version="v3", **reauthenticated())  # 3 h
    await event(s, "g3", "invalid", NOW - 2 * D, version="v3")
    await event(s, "g3", "deleted", NOW - 2 * D + H, version="v3")  # 1 h, deleted
    # a4: opened before the week and acknowledged then, recovered this week; then snoozed.
    a4 = {"email": "di@globex.com", "provider": "imap", "billing_state": "paid"}
    c7 = await event(s, "a4", "stopped", NOW - 8 * D - 4 * H, **a4)
    assert c7 is not None
    await actions.acknowledge(s, case_id=c7, actor="slack:U1", now=NOW - 8 * D - 3 * H)
    await event(s, "a4", "running", NOW - D, source="poll")  # 172 h, acknowledged
    c8 = await event(s, "a4", "stopped", NOW - 12 * H)
    assert c8 is not None
    await actions.snooze(s, case_id=c8, actor="slack:U3", now=NOW - 11 * H, duration="24h")
    # a5: resolved by hand, then fixed by an operator's retry.
    a5 = {"email": "ed@initech.com", "provider": "IMAP", "billing_state": "paid"}
    nylas.fake.add_v2_account(id="a5", sync_state="stopped", upgrade_result="running", **a5)
    c9 = await event(s, "a5", "stopped", NOW - 20 * H, **a5)
    assert c9 is not None
    await actions.resolve(s, case_id=c9, actor="slack:U1", now=NOW - 18 * H, note="Fixed by phone")
    c10 = await event(s, "a5", "stopped", NOW - 15 * H)
    assert c10 is not None
    done = await actions.retry_sync(
        s, case_id=c10, actor="slack:U2", now=NOW - 14 * H, nylas=nylas.v2
    )
    assert done.message.endswith("now running.")  # 1 h, resolved by "retry"
    # a6: no email or provider known yet.
    await event(s, "a6", "invalid", NOW - 2 * H)
    # g7 (v3): open for a month.
    await event(
        s, "g7", "invalid", NOW - MONTH, version="v3", email="fe@umbrella.com", provider="microsoft"
    )
    # a8: recovered on its own, before the week.
    await event(s, "a8", "invalid", NOW - 9 * D, email="gil@soylent.com", provider="gmail")
    await event(s, "a8", "running", NOW - 8 * D)  # 24 h, unaided
    # g9 (v3): an operator was refused; the end user re-authenticated alone.
    g9 = await event(
        s, "g9", "invalid", NOW - 6 * H, version="v3", email="gi@initech.com", provider="google"
    )
    assert g9 is not None
    await actions.refuse(s, case_id=g9, action="revoke", actor="slack:U4", now=NOW - 5 * H)
    await event(s, "g9", "valid", NOW - 4 * H, version="v3", **reauthenticated())  # 2 h, unaided
    # a10: stops and recovers every day, seen by polling only.
    a10 = {"email": "hal@hooli.com", "provider": "gmail", "billing_state": "paid"}
    for day in (3, 2, 1):
        await event(s, "a10", "stopped", NOW - day * D, source="poll", **a10)
        await event(s, "a10", "running", NOW - day * D + H, source="poll")  # 1 h, unaided


@pytest.mark.usefixtures("history")
async def test_figures_over_a_week(sessions: Sessions) -> None:
    figures = await stats(sessions, top=3)
    # Open: a1 reauth, a2 support, a4 stopped (snoozed), a6 reauth, g7 reauth.
    assert figures.open_total == 5
    assert figures.open_by_kind == (Tally("reauth", 3), Tally("stopped", 1), Tally("support", 1))
    # gmail: a1 and a2 ("Gmail"); then one each, the unknown provider of a6 cut by top=3.
    assert figures.open_by_provider == (Tally("gmail", 2), Tally("imap", 1), Tally("microsoft", 1))
    assert figures.open_by_domain == (
        Tally("acme.com", 2),
        Tally("globex.com", 1),
        Tally("umbrella.com", 1),
    )
    # a1 and a4 are "paid", and g7 (an invalid v3 grant) is billed until deleted; a2 is cancelled.
    assert figures.open_billed == 3
    # Acknowledged this week: c1 after 30 min, c4 after 10 min (c7's was before the week).
    assert (figures.acknowledged, figures.mean_time_to_acknowledge) == (2, 20 * M)
    # Resolved this week: 2 + 1 + 3 + 1 + 172 + 2 + 1 + 2 + 3 × 1 = 187 h over 11 cases.
    assert (figures.resolved, figures.mean_time_to_resolve) == (11, 17 * H)
    # Unaided: a1's second case, g9, and a10's three.
    assert figures.fixed_without_operator == 5
    assert figures.fixed_without_operator_share == pytest.approx(5 / 11)
    assert figures.chronic_accounts == (
        ChronicAccount("a1", "ana@acme.com", 3),
        ChronicAccount("a10", "hal@hooli.com", 3),
    )
    assert figures.chronic_domains == (
        ChronicDomain("acme.com", 4, 2),
        ChronicDomain("globex.com", 3, 2),
        ChronicDomain("hooli.com", 3, 1),
        ChronicDomain("initech.com", 3, 2),
    )


@pytest.mark.usefixtures("history")
async def test_figures_over_a_month(sessions: Sessions) -> None:
    figures = await stats(sessions, window=MONTH)
    assert figures.window == MONTH and figures.now == NOW
    # The open cases do not depend on the window; the default top keeps all four providers.
    assert figures.open_total == 5
    assert figures.open_by_provider == (
        Tally("gmail", 2),
        Tally("imap", 1),
        Tally("microsoft", 1),
        Tally(None, 1),
    )
    assert figures.open_by_domain[-1] == Tally(None, 1)
    # c7's acknowledgement (after 1 h) joins: (30 + 10 + 60) / 3 min.
    assert figures.mean_time_to_acknowledge == timedelta(minutes=33, seconds=20)
    # a8 joins: 187 + 24 = 211 h over 12 cases, 17 h 35 min; and it recovered unaided.
    assert (figures.resolved, figures.mean_time_to_resolve) == (12, timedelta(hours=17, minutes=35))
    assert figures.fixed_without_operator == 6
    # c7, opened before the week, makes globex.com 4.
    assert figures.chronic_accounts == (
        ChronicAccount("a1", "ana@acme.com", 3),
        ChronicAccount("a10", "hal@hooli.com", 3),
    )
    assert figures.chronic_domains == (
        ChronicDomain("acme.com", 4, 2),
        ChronicDomain("globex.com", 4, 2),
        ChronicDomain("hooli.com", 3, 1),
        ChronicDomain("initech.com", 3, 2),
    )


# --- what "fixed without an operator" means, path by path ---------------------------------

Scenario = Callable[[Sessions, Nylas, int], Awaitable[None]]
T0 = NOW - 2 * D


async def recover(s: Sessions, n: Nylas, case_id: int) -> None:
    await event(s, "a1", "running", T0 + 2 * H)


async def recover_by_poll(s: Sessions, n: Nylas, case_id: int) -> None:
    await event(s, "a1", "running", T0 + 2 * H, source="poll")


async def recover_through_partial(s: Sessions, n: Nylas, case_id: int) -> None:
    await event(s, "a1", "partial", T0 + 2 * H, source="poll")


async def change_state_then_recover(s: Sessions, n: Nylas, case_id: int) -> None:
    await event(s, "a1", "stopped", T0 + H)
    await recover(s, n, case_id)


async def refused_then_recover(s: Sessions, n: Nylas, case_id: int) -> None:
    await actions.refuse(s, case_id=case_id, action="resolve", actor="slack:U9", now=T0 + H)
    await recover(s, n, case_id)


async def notify_failed_then_recover(s: Sessions, n: Nylas, case_id: int) -> None:
    async with s() as session, session.begin():
        await cases.record_event(
            session, actor="system", action="notify_failed", at=T0 + H, case_id=case_id
        )
    await recover(s, n, case_id)


async def acknowledge_then_recover(s: Sessions, n: Nylas, case_id: int) -> None:
    await actions.acknowledge(s, case_id=case_id, actor="slack:U1", now=T0 + H)
    await recover(s, n, case_id)


async def snooze_then_recover(s: Sessions, n: Nylas, case_id: int) -> None:
    await actions.snooze(s, case_id=case_id, actor="slack:U1", now=T0, duration="1h")
    assert await actions.end_snoozes(s, now=T0 + H) == 1
    await recover(s, n, case_id)


async def link_then_recover(s: Sessions, n: Nylas, case_id: int) -> None:
    await actions.send_reauth_link(
        s, case_id=case_id, actor="slack:U1", now=T0 + H, maker=LinkMaker(hosted=link)
    )
    await recover(s, n, case_id)


async def retry_recovers(s: Sessions, n: Nylas, case_id: int) -> None:
    result = await actions.retry_sync(s, case_id=case_id, actor="slack:U1", now=T0 + H, nylas=n.v2)
    assert result.message.endswith("now running.")


async def retry_fails_then_recover(s: Sessions, n: Nylas, case_id: int) -> None:
    n.fake.fail("POST", r"/a/.*/accounts/a1/downgrade", status=400)
    result = await actions.retry_sync(s, case_id=case_id, actor="slack:U1", now=T0 + H, nylas=n.v2)
    assert "failed" in result.message
    await recover(s, n, case_id)


async def revoke_then_reauthenticate(s: Sessions, n: Nylas, case_id: int) -> None:
    result = await actions.revoke(s, case_id=case_id, actor="slack:U1", now=T0 + H, nylas=n.v2)
    assert result.message.startswith("Done: All access tokens revoked")
    await recover(s, n, case_id)


async def resolve_by_hand(s: Sessions, n: Nylas, case_id: int) -> None:
    await actions.resolve(s, case_id=case_id, actor="slack:U1", now=T0 + H, note="done")


async def deleted_in_nylas(s: Sessions, n: Nylas, case_id: int) -> None:
    await event(s, "a1", "deleted", T0 + H, source="poll")  # absent from the listing


V2_SCENARIOS: dict[str, tuple[Scenario, int]] = {
    "recovered": (recover, 1),
    "recovered, seen by polling": (recover_by_poll, 1),
    "recovered to a transient state": (recover_through_partial, 1),
    "state changed, then recovered": (change_state_then_recover, 1),
    "an operator was refused": (refused_then_recover, 1),
    "the alert could not be posted": (notify_failed_then_recover, 1),
    "acknowledged": (acknowledge_then_recover, 0),
    "snoozed": (snooze_then_recover, 0),
    "link sent": (link_then_recover, 0),
    "an operator's retry recovered it": (retry_recovers, 0),
    "an operator's retry failed": (retry_fails_then_recover, 0),
    "tokens revoked, then re-authenticated": (revoke_then_reauthenticate, 0),
    "resolved by hand": (resolve_by_hand, 0),
    "deleted in Nylas": (deleted_in_nylas, 0),
}


@pytest.mark.parametrize(("scenario", "unaided"), V2_SCENARIOS.values(), ids=list(V2_SCENARIOS))
async def test_fixed_without_operator_v2(
    sessions: Sessions, nylas: Nylas, scenario: Scenario, unaided: int
) -> None:
    nylas.fake.add_v2_account(id="a1", email="ana@acme.com", sync_state="stopped")
    case_id = await event(sessions, "a1", "invalid", T0, email="ana@acme.com")
    assert case_id is not None
    await scenario(sessions, nylas, case_id)
    figures = await stats(sessions)
    assert (figures.resolved, figures.fixed_without_operator) == (1, unaided)


@pytest.mark.parametrize(
    ("how", "unaided"),
    [("re-authenticated", 1), ("link sent", 0), ("grant deleted by an operator", 0)],
)
async def test_fixed_without_operator_v3(
    sessions: Sessions, nylas: Nylas, how: str, unaided: int
) -> None:
    nylas.fake.add_grant(id="g1", email="cy@globex.com", grant_status="invalid")
    case_id = await event(sessions, "g1", "invalid", T0, version="v3", email="cy@globex.com")
    assert case_id is not None
    if how == "link sent":
        await actions.send_reauth_link(
            sessions, case_id=case_id, actor="slack:U1", now=T0 + H, maker=LinkMaker(hosted=link)
        )
    if how == "grant deleted by an operator":
        result = await actions.revoke(
            sessions,
            case_id=case_id,
            actor="slack:U1",
            now=T0 + H,
            nylas=nylas.v3,
            confirmation="cy@globex.com",
        )
        assert result.message == "Done: Grant deleted by @U1."
    else:
        await event(sessions, "g1", "valid", T0 + 2 * H, version="v3", **reauthenticated())
    figures = await stats(sessions)
    assert (figures.resolved, figures.fixed_without_operator) == (1, unaided)


def test_only_deleted_is_a_gone_state() -> None:
    assert GONE_STATES == ("deleted",)
