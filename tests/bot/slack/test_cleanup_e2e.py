"""The month-end billing clean-up end to end: the scheduled job posts it, an operator deletes.

The service runs against the fake Slack and the fake Nylas; webhooks, clicks, modal
submissions and the slash command are signed as Nylas and Slack sign them, and the clock is
injected: the cases break on 2 November 2026, and the clean-up of November opens on the 26th.
"""

from __future__ import annotations

import itertools
import json
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient
from sqlmodel import col, select

from bot.runtime import RUNTIME
from bot.slack import ids
from storage.models import Case, CaseEvent, CaseStatus, CleanupRun
from tests.bot.slack.support import (
    CHANNEL,
    NOW,
    Sessions,
    click,
    click_body,
    nylas_settings,
    signed,
)
from tests.bot.slack.test_e2e import modal_recorded, opened_view
from tests.conftest import WEBHOOK_SECRET, FrozenClock
from tests.fakes.nylas import FakeNylas
from tests.fakes.slack import FakeSlack
from tests.waiting import eventually
from workflows.cleanup import RESOLUTION
from workflows.nylas import samples
from workflows.nylas.webhooks import sign

BOSS, ALICE = "U0BOSS", "U0ALICE"
POLICY = (
    f'[permissions]\nrevoke = ["{BOSS}"]\n[billing]\nprice_per_account = 2\n'
    "[storms]\nthreshold = 50\n"  # five cases of one domain are not a storm here
)
MONTH = "2026-11"
EVE = datetime(2026, 11, 25, 23, 0, tzinfo=UTC)  # the day before the window
OPENS = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)  # five days before December (UTC)
OLD = ("g-1", "g-2", "g-3", "g-4")  # broken on 2 November: past the 14-day grace


async def expire(app: TestClient, grant_id: str, at: datetime) -> None:
    raw = json.dumps(
        samples.v3_notification(
            "grant.expired", grant_id=grant_id, email=f"{grant_id}@example.com", at=at
        )
    ).encode()
    response = await app.post(
        "/nylas/webhook", data=raw, headers={"X-Nylas-Signature": sign(WEBHOOK_SECRET, raw)}
    )
    assert response.status == 200


async def run_job(app: TestClient) -> None:
    """Run the scheduled job as the scheduler would (same wrapper, same clock)."""
    scheduler = app.server.app[RUNTIME].scheduler
    assert scheduler is not None
    job = scheduler.get_job("cleanup")
    assert job is not None
    await job.func()


def cleanup_posts(slack: FakeSlack) -> list[dict[str, Any]]:
    return [
        call.params
        for call in slack.calls_to("chat.postMessage")
        if ids.CLEANUP_DELETE in json.dumps(call.params.get("blocks"))
    ]


def submission(typed: str, *, view_id: str, user: str = BOSS, month: str = MONTH) -> str:
    payload = {
        "type": "view_submission",
        "user": {"id": user},
        "team": {"id": "T0TEST"},
        "api_app_id": "A0APP",
        "view": {
            "id": view_id,
            "type": "modal",
            "callback_id": ids.CLEANUP_MODAL,
            "private_metadata": month,
            "hash": "h",
            "state": {
                "values": {
                    ids.CONFIRM_BLOCK: {
                        ids.CONFIRM_INPUT: {"type": "plain_text_input", "value": typed}
                    }
                }
            },
        },
    }
    return urlencode({"payload": json.dumps(payload)})


async def submit(app: TestClient, body: str) -> dict[str, Any]:
    response = await app.post(ids.EVENTS_PATH, data=body, headers=signed(body))
    assert response.status == 200
    text = await response.text()
    return json.loads(text) if text else {}


async def stats_text(app: TestClient, slack: FakeSlack) -> str:
    body = urlencode(
        {
            "team_id": "T0TEST",
            "api_app_id": "A0APP",
            "channel_id": CHANNEL,
            "user_id": ALICE,
            "command": ids.COMMAND,
            "text": "stats",
            "response_url": slack.response_url("stats"),
            "trigger_id": "1.2.x",
        }
    )
    response = await app.post(ids.EVENTS_PATH, data=body, headers=signed(body))
    assert response.status == 200

    async def answered() -> bool:
        return bool(slack.responses_to("stats"))

    await eventually(answered, within=10)
    return json.dumps(slack.responses_to("stats")[-1])


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(NOW)


async def started(
    start: Any, slack: FakeSlack, nylas_fake: FakeNylas, clock: FrozenClock
) -> TestClient:
    for grant in (*OLD, "g-new"):
        nylas_fake.add_grant(id=grant, email=f"{grant}@example.com", grant_status="invalid")
    app: TestClient = await start(POLICY, clock=clock, **nylas_settings(nylas_fake, "v3"))
    for grant in OLD:
        await expire(app, grant, NOW)
    clock.now = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)
    await expire(app, "g-new", clock.now)  # within the grace period on the 26th

    async def alerted() -> bool:
        return len(slack.calls_to("chat.postMessage")) >= 5

    await eventually(alerted, within=10)
    return app


async def posted_once(app: TestClient, slack: FakeSlack, clock: FrozenClock) -> dict[str, Any]:
    clock.now = EVE
    await run_job(app)
    clock.now = OPENS
    await run_job(app)

    async def posted() -> bool:
        return len(cleanup_posts(slack)) == 1

    await eventually(posted, within=10)
    clock.now = OPENS.replace(hour=10)
    await run_job(app)  # an hour later: already offered this month
    (post,) = cleanup_posts(slack)
    return post


async def test_the_month_end_message_lists_what_would_be_billed_and_its_cost(
    start: Any, slack: FakeSlack, nylas_fake: FakeNylas, clock: FrozenClock
) -> None:
    app = await started(start, slack, nylas_fake, clock)
    clock.now = EVE
    await run_job(app)
    assert cleanup_posts(slack) == []  # not before the last five days of the month

    post = await posted_once(app, slack, clock)
    shown = json.dumps(post["blocks"])
    for grant in OLD:
        assert f"{grant}@example.com" in shown
    assert "g-new" not in shown
    assert "*Cost at risk:* 8.00 USD a month" in shown
    (actions,) = [b for b in post["blocks"] if b["type"] == "actions"]
    (button,) = actions["elements"]
    assert button["action_id"] == ids.CLEANUP_DELETE and button["value"] == MONTH
    assert button["text"]["text"] == "Delete 4 accounts"
    assert "4 broken accounts past the 14 d grace period" in post["text"]

    # No case's own alert offers the deletion, before or after the clean-up message.
    for call in slack.calls_to("chat.postMessage") + slack.calls_to("chat.update"):
        if call.params is not post:
            assert ids.CLEANUP_DELETE not in json.dumps(call.params.get("blocks"))

    report = await stats_text(app, slack)
    assert "Broken past the 14 d grace period: 4, cost at risk 8.00 USD a month" in report


async def test_a_click_without_the_revoke_permission_changes_nothing(
    start: Any, slack: FakeSlack, nylas_fake: FakeNylas, clock: FrozenClock, sessions: Sessions
) -> None:
    app = await started(start, slack, nylas_fake, clock)
    await posted_once(app, slack, clock)
    assert await click(app, click_body(slack, ids.CLEANUP_DELETE, MONTH, ALICE)) == 200

    async def answered() -> bool:
        return bool(slack.responses_to(1))

    await eventually(answered, within=10)
    (reply,) = slack.responses_to(1)
    assert reply["response_type"] == "ephemeral"
    assert reply["text"] == "You are not allowed to delete accounts."
    assert slack.calls_to("views.open") == []
    # A submission forged without the modal is refused too.
    answer = await submit(app, submission("4", view_id="V0FORGED", user=ALICE))
    assert answer["response_action"] == "errors"
    assert nylas_fake.calls_to("DELETE", r"/v3/grants/.*") == []
    async with sessions() as session:
        refused = (
            await session.exec(select(CaseEvent).where(col(CaseEvent.action) == "refused"))
        ).all()
        run = await session.get(CleanupRun, MONTH)
    assert [(e.actor, e.details["month"]) for e in refused] == [(f"slack:{ALICE}", MONTH)]
    assert run is not None and run.started_at is None


async def test_typing_the_count_deletes_each_account_paced_and_rechecked(
    start: Any, slack: FakeSlack, nylas_fake: FakeNylas, clock: FrozenClock, sessions: Sessions
) -> None:
    app = await started(start, slack, nylas_fake, clock)
    await posted_once(app, slack, clock)
    assert await click(app, click_body(slack, ids.CLEANUP_DELETE, MONTH, BOSS)) == 200

    async def opened() -> bool:
        return await modal_recorded(slack, sessions)

    await eventually(opened, within=10)
    view = slack.calls_to("views.open")[0].params["view"]
    assert view["callback_id"] == ids.CLEANUP_MODAL and view["private_metadata"] == MONTH
    view_id = opened_view(slack, ids.CLEANUP_MODAL)

    # A wrong count deletes nothing, and the modal stays open for another try.
    answer = await submit(app, submission("40", view_id=view_id))
    assert answer["response_action"] == "errors"
    assert "Type 4" in answer["errors"][ids.CONFIRM_BLOCK]
    assert nylas_fake.calls_to("DELETE", r"/v3/grants/.*") == []

    nylas_fake.set_grant_status("g-2", "valid")  # its end user re-authenticated meanwhile
    nylas_fake.fail("DELETE", r"/v3/grants/g-3", status=404)  # deleted by someone else
    nylas_fake.fail("DELETE", r"/v3/grants/g-4", status=429, headers={"Retry-After": "1"})
    answer = await submit(app, submission(" 4 ", view_id=view_id))
    answered_at = time.monotonic()
    assert answer["response_action"] == "update"

    async def finished() -> bool:
        async with sessions() as session:
            run = await session.get(CleanupRun, MONTH)
        return run is not None and run.finished_at is not None

    await eventually(finished, within=20)
    deletes = nylas_fake.calls_to("DELETE", r"/v3/grants/.*")
    # g-2 syncs again: kept. g-4 is asked again after the Retry-After second.
    assert [c.path for c in deletes] == [
        "/v3/grants/g-1",
        "/v3/grants/g-3",
        "/v3/grants/g-4",
        "/v3/grants/g-4",
    ]
    assert deletes[3].at - deletes[2].at >= 1.0
    # Slack had its answer long before: the deletions run after the modal is acknowledged.
    assert answered_at < deletes[-1].at
    # Each account was read again just before its deletion, one case at a time, paced.
    reads = [c for c in nylas_fake.calls_to("GET", r"/v3/grants/g-\d") if c.at >= deletes[0].at - 1]
    assert [c.path for c in reads] == [f"/v3/grants/{g}" for g in OLD]
    assert all(b.at - a.at >= 0.45 for a, b in itertools.pairwise(reads))
    assert "g-1" not in nylas_fake.grants and "g-4" not in nylas_fake.grants
    assert "g-2" in nylas_fake.grants and "g-new" in nylas_fake.grants

    async with sessions() as session:
        run = await session.get(CleanupRun, MONTH)
        rows = (await session.exec(select(Case).order_by(col(Case.id)))).all()
        audit = (await session.exec(select(CaseEvent).order_by(col(CaseEvent.id)))).all()
    assert run is not None and run.started_by == f"slack:{BOSS}"
    assert run.tally == {"deleted": 2, "already gone": 1, "kept: syncing again": 1}
    by_account = {case.account_id: case for case in rows}
    for grant in ("g-1", "g-4"):
        case = by_account[grant]
        assert (case.status, case.resolution, case.resolved_by) == (
            CaseStatus.RESOLVED,
            RESOLUTION,
            f"slack:{BOSS}",
        )
    assert by_account["g-2"].status == CaseStatus.RESOLVED  # recovered, not deleted
    assert by_account["g-3"].status == CaseStatus.RESOLVED  # gone
    assert by_account["g-new"].status != CaseStatus.RESOLVED  # never listed
    deleted = [e.account_id for e in audit if e.action == "deleted_for_billing"]
    assert deleted == ["g-1", "g-4"]
    assert all(e.actor == f"slack:{BOSS}" for e in audit if e.action == "deleted_for_billing")
    skipped = {
        e.account_id: e.details.get("reason") for e in audit if e.action == "cleanup_skipped"
    }
    assert skipped == {
        "g-2": "the account syncs again",
        "g-3": "the account no longer exists in Nylas",
    }
    assert [e.action for e in audit if e.action.startswith("cleanup_")][:1] == ["cleanup_started"]
    assert audit[-1].action == "cleanup_finished" or "cleanup_finished" in [e.action for e in audit]

    async def told() -> bool:
        updates = [
            c.params
            for c in slack.calls_to("chat.update")
            if "Clean-up done" in json.dumps(c.params)
        ]
        return bool(updates)

    await eventually(told, within=10)
    final = [
        c.params for c in slack.calls_to("chat.update") if "Clean-up done" in json.dumps(c.params)
    ][-1]
    shown = json.dumps(final["blocks"])
    assert "2 deleted, 1 already gone, 1 kept: syncing again" in shown
    assert ids.CLEANUP_DELETE not in shown  # the button is gone once confirmed

    # A second confirmation of the same month deletes nothing more.
    assert await click(app, click_body(slack, ids.CLEANUP_DELETE, MONTH, BOSS, n=2)) == 200

    async def refused() -> bool:
        return bool(slack.responses_to(2))

    await eventually(refused, within=10)
    assert "started already" in slack.responses_to(2)[0]["text"]
    assert len(nylas_fake.calls_to("DELETE", r"/v3/grants/.*")) == 4
