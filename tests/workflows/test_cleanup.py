"""The month-end billing clean-up: when it is offered, what it lists, and what it costs.

Cases are opened by the real lifecycle on both engines; the clock is whatever the test says.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.models import Case, CaseEvent, CaseStatus, CleanupRun, OutboxKind, OutboxMessage
from tests.conftest import Nylas
from workflows import cleanup
from workflows.cleanup import in_window, month_end, queue_cleanup
from workflows.events import AccountEvent
from workflows.lifecycle import apply_event
from workflows.policy import Billing, Cleanup
from workflows.stats import case_stats

Sessions = async_sessionmaker[AsyncSession]
D = timedelta(days=1)
JAN_27 = datetime(2027, 1, 27, 0, 0, tzinfo=UTC)  # five days before February
TRIGGERS = {
    ("v3", "invalid"): "grant.expired",
    ("v3", "valid"): "grant.updated",
    ("v2", "stopped"): "account.stopped",
    ("v2", "invalid"): "account.invalid",
    ("v2", "sync-error"): "account.sync_error",
}


async def broken(
    sessions: Sessions,
    account_id: str,
    at: datetime,
    *,
    version: str = "v3",
    state: str = "invalid",
    **fields: Any,
) -> None:
    """The account breaks at ``at``, as a webhook tells it."""
    event = AccountEvent(
        account_id=account_id,
        api_version=version,
        event_type=TRIGGERS[(version, state)],
        state=state,
        occurred_at=at,
        source="webhook",
        email=fields.pop("email", f"{account_id}@example.com"),
        **fields,
    )
    async with sessions() as session, session.begin():
        await apply_event(session, event, now=at, route=lambda _: "C0ALERTS")


async def offer(sessions: Sessions, now: datetime, price: str | None = None) -> bool:
    billing = Billing.model_validate({"price_per_account": price})
    return await queue_cleanup(
        sessions, now=now, channel="C0ALERTS", cleanup=Cleanup(), billing=billing
    )


async def notices(sessions: Sessions) -> list[dict[str, Any]]:
    async with sessions() as session:
        rows = (await session.exec(select(OutboxMessage))).all()
    return [m.payload for m in rows if m.kind == OutboxKind.NOTICE]


@pytest.mark.parametrize(
    ("before", "first"),
    [
        # 31 days: the window opens on the 27th.
        (datetime(2027, 1, 26, 23, 59, tzinfo=UTC), datetime(2027, 1, 27, 0, 0, tzinfo=UTC)),
        # February of a common year (28 days): the 24th.
        (datetime(2027, 2, 23, 23, 59, tzinfo=UTC), datetime(2027, 2, 24, 0, 0, tzinfo=UTC)),
        # February of a leap year (29 days): the 25th.
        (datetime(2028, 2, 24, 23, 59, tzinfo=UTC), datetime(2028, 2, 25, 0, 0, tzinfo=UTC)),
        # 30 days, and the year's end.
        (datetime(2026, 11, 25, 23, 59, tzinfo=UTC), datetime(2026, 11, 26, 0, 0, tzinfo=UTC)),
        (datetime(2026, 12, 26, 23, 59, tzinfo=UTC), datetime(2026, 12, 27, 0, 0, tzinfo=UTC)),
    ],
)
def test_the_window_is_the_last_five_days_of_the_month_in_utc(
    before: datetime, first: datetime
) -> None:
    assert not in_window(before) and in_window(first)
    assert in_window(month_end(first) - timedelta(microseconds=1))
    assert not in_window(month_end(first))  # the next month has started
    # The same instant in another zone is the same answer: the month is UTC's.
    assert in_window(first.astimezone(cleanup_zone())) and not in_window(
        before.astimezone(cleanup_zone())
    )


def cleanup_zone() -> Any:
    from datetime import timezone

    return timezone(timedelta(hours=-8))


@pytest.mark.parametrize(
    "now",
    [
        datetime(2027, 2, 24, 9, 0, tzinfo=UTC),  # common year
        datetime(2028, 2, 25, 9, 0, tzinfo=UTC),  # leap year
        datetime(2027, 1, 27, 9, 0, tzinfo=UTC),  # 31 days
    ],
)
async def test_offered_five_days_before_the_month_ends_and_only_once(
    sessions: Sessions, now: datetime
) -> None:
    await broken(sessions, "g-old", now - 20 * D)
    assert not await offer(sessions, now - 1 * D)  # the day before the window: nothing
    assert await notices(sessions) == []

    assert await offer(sessions, now)
    assert not await offer(sessions, now + timedelta(hours=1))  # the job runs again
    assert not await offer(sessions, month_end(now) - timedelta(minutes=1))
    (posted,) = await notices(sessions)
    assert posted["month"] == now.strftime("%Y-%m") and posted["count"] == 1
    async with sessions() as session:
        (run,) = (await session.exec(select(CleanupRun))).all()
    assert run.month == now.strftime("%Y-%m") and run.started_at is None


async def test_lists_only_billed_accounts_broken_past_the_grace_period(
    sessions: Sessions,
) -> None:
    now = JAN_27
    await broken(sessions, "g-old", now - 30 * D)
    await broken(sessions, "g-older", now - 40 * D)
    await broken(sessions, "g-new", now - 13 * D)  # within the 14 days
    await broken(sessions, "a-stopped", now - 20 * D, version="v2", state="stopped",
                 billing_state="paid")  # fmt: skip
    # Nylas no longer bills it: it was downgraded.
    await broken(sessions, "a-cancelled", now - 20 * D, version="v2", state="invalid",
                 billing_state="cancelled")  # fmt: skip
    # A matter for Nylas Support, not a churned end user.
    await broken(sessions, "a-support", now - 20 * D, version="v2", state="sync-error",
                 billing_state="paid")  # fmt: skip
    await broken(sessions, "g-fixed", now - 30 * D)
    async with sessions() as session, session.begin():
        fixed = AccountEvent(
            account_id="g-fixed",
            api_version="v3",
            event_type="grant.updated",
            state="valid",
            occurred_at=now - 2 * D,
            source="webhook",
            details={"reauthenticated": True},
        )
        await apply_event(session, fixed, now=now - 2 * D, route=lambda _: "C0ALERTS")

    assert await offer(sessions, now, price="1.50")
    (posted,) = await notices(sessions)
    assert [row["account"] for row in posted["accounts"]] == ["g-older", "g-old", "a-stopped"]
    assert posted["count"] == 3 and posted["more"] == 0
    assert posted["cost"] == "4.50 USD"
    assert posted["grace"] == "14 d"
    assert cleanup.notice_text(posted) == (
        "Billing clean-up: 3 broken accounts past the 14 d grace period will be billed again "
        "next month (4.50 USD at risk)."
    )


async def test_no_price_no_cost_and_a_long_list_is_cut(sessions: Sessions) -> None:
    for n in range(cleanup.MAX_LISTED + 3):
        await broken(sessions, f"g-{n:02}", JAN_27 - (60 - n) * D)
    assert await offer(sessions, JAN_27)
    (posted,) = await notices(sessions)
    assert posted["cost"] is None and "at risk" not in cleanup.notice_text(posted)
    assert len(posted["accounts"]) == cleanup.MAX_LISTED and posted["more"] == 3
    async with sessions() as session:
        run = await session.get(CleanupRun, "2027-01")
    assert run is not None and len(run.case_ids) == cleanup.MAX_LISTED + 3


async def test_nothing_past_the_grace_period_posts_nothing_yet(sessions: Sessions) -> None:
    await broken(sessions, "g-new", JAN_27 - 11 * D)
    assert not await offer(sessions, JAN_27)
    # Four days later it is past the grace period, and the month has not ended.
    assert await offer(sessions, JAN_27 + 4 * D)
    assert [p["count"] for p in await notices(sessions)] == [1]


async def test_stats_count_the_accounts_at_risk(sessions: Sessions) -> None:
    await broken(sessions, "g-old", JAN_27 - 30 * D)
    await broken(sessions, "g-new", JAN_27 - 3 * D)
    async with sessions() as session:
        report = await case_stats(session, now=JAN_27, window=7 * D)
        shorter = await case_stats(
            session, now=JAN_27, window=7 * D, cleanup=Cleanup(grace=timedelta(days=2))
        )
    assert (report.open_billed, report.past_grace, shorter.past_grace) == (2, 1, 2)
    assert Billing(price_per_account=Decimal("0.125")).cost(report.past_grace) == Decimal("0.125")
    assert cleanup.cost_words(Billing(price_per_account=Decimal("0.125")), 3) == "0.375 USD"


# --- deleting, against the fake Nylas -------------------------------------------------------


async def confirmed(sessions: Sessions, now: datetime, typed: str) -> cleanup.Deletion:
    assert await offer(sessions, now)
    started = await cleanup.confirm(
        sessions, month=now.strftime("%Y-%m"), actor="slack:U0BOSS", now=now, typed=typed
    )
    assert isinstance(started, cleanup.Deletion)
    return started


class Waits(list[float]):
    """Records the pauses between deletions instead of sleeping through them."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


async def test_v2_accounts_are_deleted_through_the_management_api(
    sessions: Sessions, nylas: Nylas
) -> None:
    nylas.fake.add_v2_account(id="a-1", email="ann@example.com", sync_state="invalid")
    nylas.fake.add_v2_account(id="a-2", email="bob@example.com", sync_state="stopped")
    nylas.fake.add_v2_account(  # downgraded since the message: Nylas no longer bills it
        id="a-3", email="cy@example.com", sync_state="stopped", billing_state="cancelled"
    )
    for account, state in (("a-1", "invalid"), ("a-2", "stopped"), ("a-3", "stopped")):
        await broken(sessions, account, JAN_27 - 20 * D, version="v2", state=state,
                     billing_state="paid")  # fmt: skip
    deletion = await confirmed(sessions, JAN_27, "3")
    waits = Waits()
    clock = lambda: JAN_27 + timedelta(hours=1)  # noqa: E731
    tally = await cleanup.run_deletion(sessions, nylas.v2, deletion, clock=clock, sleep=waits)

    assert tally == {cleanup.DELETED: 2, cleanup.NOT_BILLED_NOW: 1}
    assert waits == [0.5, 0.5]  # paced: one between each two accounts
    deletes = nylas.fake.calls_to("DELETE", r"/a/.*")
    assert [c.path.rsplit("/", 1)[1] for c in deletes] == ["a-1", "a-2"]
    assert set(nylas.fake.v2_accounts) == {"a-3"}


async def test_a_failure_leaves_the_account_and_its_case_and_the_rest_goes_on(
    sessions: Sessions, nylas: Nylas
) -> None:
    for grant in ("g-1", "g-2"):
        nylas.fake.add_grant(id=grant, email=f"{grant}@example.com", grant_status="invalid")
        await broken(sessions, grant, JAN_27 - 20 * D)
    nylas.fake.fail("DELETE", r"/v3/grants/g-1", status=503)  # the client here does not retry
    deletion = await confirmed(sessions, JAN_27, "2")
    tally = await cleanup.run_deletion(sessions, nylas.v3, deletion, clock=lambda: JAN_27,
                                       sleep=Waits())  # fmt: skip

    assert tally == {cleanup.FAILED: 1, cleanup.DELETED: 1}
    assert set(nylas.fake.grants) == {"g-1"}
    async with sessions() as session:
        rows = (await session.exec(select(Case).order_by(col(Case.id)))).all()
        failed = (
            await session.exec(select(CaseEvent).where(col(CaseEvent.action) == "cleanup_failed"))
        ).all()
        run = await session.get(CleanupRun, "2027-01")
    assert [(c.account_id, c.status == CaseStatus.RESOLVED, c.busy_with) for c in rows] == [
        ("g-1", False, None),  # still open, and free for another action
        ("g-2", True, None),
    ]
    (line,) = failed
    assert line.account_id == "g-1" and line.details["step"] == "delete"
    assert run is not None and run.finished_at == JAN_27 and run.tally == dict(tally)


async def test_a_confirmation_is_taken_once(sessions: Sessions) -> None:
    await broken(sessions, "g-1", JAN_27 - 20 * D)
    assert await offer(sessions, JAN_27)
    wrong = await cleanup.confirm(
        sessions, month="2027-01", actor="slack:U0BOSS", now=JAN_27, typed="one"
    )
    assert not isinstance(wrong, cleanup.Deletion) and wrong.outcome == "refused"
    first = await cleanup.confirm(
        sessions, month="2027-01", actor="slack:U0BOSS", now=JAN_27, typed="1"
    )
    again = await cleanup.confirm(
        sessions, month="2027-01", actor="slack:U0SUE", now=JAN_27, typed="1"
    )
    assert isinstance(first, cleanup.Deletion) and len(first.case_ids) == 1
    assert not isinstance(again, cleanup.Deletion) and "started by @U0BOSS" in again.message
    never = await cleanup.confirm(
        sessions, month="2026-12", actor="slack:U0BOSS", now=JAN_27, typed="1"
    )
    assert not isinstance(never, cleanup.Deletion) and never.outcome == "missing"
