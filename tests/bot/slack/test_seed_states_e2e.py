"""The Nylas sync-state guide read right, end to end: signed webhooks, clicks and commands.

Send-only accounts stay initializing; a downgraded account is stopped on purpose; a new account
may stay partial for a week; and revoking reads the account first.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from aiohttp.test_utils import TestClient
from sqlmodel import col, select

from bot.slack import ids
from storage import cases
from storage.models import Account, Case, CaseEvent, SlackView
from tests.bot.slack.support import (
    CHANNEL,
    NOW,
    Sessions,
    case_events,
    click,
    click_body,
    expire,
    nylas_settings,
    signed,
    wait_posts,
)
from tests.bot.slack.test_commands import Operator, shown
from tests.bot.slack.test_stuck_e2e import initializing, run_stuck_job
from tests.conftest import NYLAS_CLIENT_SECRET, FrozenClock
from tests.fakes.nylas import FakeNylas
from tests.fakes.slack import FakeSlack
from tests.waiting import eventually
from workflows.events import AccountEvent
from workflows.lifecycle import apply_event
from workflows.nylas import samples
from workflows.nylas.webhooks import sign

LEAD = "U0LEAD"
ADMIN = "U0ADMIN"


async def all_cases(sessions: Sessions) -> list[Case]:
    async with sessions() as session:
        return list((await session.exec(select(Case).order_by(col(Case.id)))).all())


async def account_of(sessions: Sessions, account_id: str) -> Account:
    async with sessions() as session:
        account = await cases.get_account(session, account_id=account_id)
    assert account is not None
    return account


async def webhook_v2(app: TestClient, trigger: str, account_id: str, at: Any = NOW) -> None:
    raw = json.dumps(samples.v2_delivery(trigger, account_id=account_id, at=at)).encode()
    response = await app.post(
        "/nylas/webhook", data=raw, headers={"X-Nylas-Signature": sign(NYLAS_CLIENT_SECRET, raw)}
    )
    assert response.status == 200


async def told(slack: FakeSlack, n: int) -> str:
    async def answered() -> bool:
        return bool(slack.responses_to(n))

    await eventually(answered, within=10)
    (answer,) = slack.responses_to(n)
    return str(answer["text"])


def buttons(blocks: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        e["action_id"]: e for b in blocks if b["type"] == "actions" for e in b.get("elements", [])
    }


# --- send-only accounts stay initializing ------------------------------------------------------


async def test_expected_send_only_keeps_the_account_quiet_and_show_can_undo_it(
    start: Any, slack: FakeSlack, sessions: Sessions
) -> None:
    clock = FrozenClock(NOW)
    app = await start(f'[permissions]\nresolve = ["{LEAD}"]\n', clock=clock)
    await initializing(sessions, "acc-1", "ana@example.com")
    clock.advance(hours=2)
    await run_stuck_job(app)
    await wait_posts(slack, 1)
    alert = slack.calls_to("chat.postMessage")[0].params["blocks"]
    expected = buttons(alert)[ids.SEND_ONLY]
    assert (expected["text"]["text"], expected["value"]) == ("Expected (send-only)", "1")

    # Someone who may not resolve cases is refused, and nothing changes.
    await click(app, click_body(slack, ids.SEND_ONLY, "1", "U0MALLORY", n=1))
    assert await told(slack, 1) == "You are not allowed to resolve cases."
    assert not (await account_of(sessions, "acc-1")).send_only
    assert [c.status for c in await all_cases(sessions)] == ["open"]

    await click(app, click_body(slack, ids.SEND_ONLY, "1", LEAD, n=2))
    assert "marked send-only" in await told(slack, 2)
    assert (await account_of(sessions, "acc-1")).send_only
    (case,) = await all_cases(sessions)
    assert case.status == "resolved" and case.resolved_by == f"slack:{LEAD}"
    assert (case.resolution or "").startswith("Expected: the account only sends")
    events = await case_events(sessions)
    assert ("slack:U0MALLORY", "refused") in events
    assert (f"slack:{LEAD}", "marked_send_only") in events

    # Later sweeps, even after it left initializing and came back, open nothing.
    clock.advance(days=1)
    await initializing_again(sessions, clock)
    clock.advance(days=10)
    await run_stuck_job(app)
    assert len(await all_cases(sessions)) == 1

    # /reauth show offers to take the mark back; undoing it is audited and alerts again.
    op = Operator(app, slack)
    card = await op.type("show ana@example.com", user=LEAD)
    undo = buttons(card["blocks"])[ids.UNDO_SEND_ONLY]
    assert (undo["text"]["text"], undo["value"]) == ("Undo send-only", "1")
    assert "is marked send-only" in shown(card)
    await click(app, click_body(slack, ids.UNDO_SEND_ONLY, "1", "U0MALLORY", n=3))
    assert await told(slack, 3) == "You are not allowed to resolve cases."
    assert (await account_of(sessions, "acc-1")).send_only
    await click(app, click_body(slack, ids.UNDO_SEND_ONLY, "1", LEAD, n=4))
    assert "no longer marked send-only" in await told(slack, 4)
    assert not (await account_of(sessions, "acc-1")).send_only
    assert (f"slack:{LEAD}", "unmarked_send_only") in await case_events(sessions)
    await run_stuck_job(app)
    assert [(c.kind, c.state, c.status) for c in await all_cases(sessions)][-1] == (
        "stuck",
        "initializing",
        "open",
    )


async def initializing_again(sessions: Sessions, clock: FrozenClock) -> None:
    for state in ("running", "initializing"):
        clock.advance(minutes=1)
        event = AccountEvent(
            account_id="acc-1",
            api_version="v2",
            event_type="poll",
            state=state,
            occurred_at=clock(),
            source="poll",
        )
        async with sessions() as session, session.begin():
            await apply_event(session, event, now=clock(), route=lambda _: CHANNEL)


async def test_initializing_off_opens_nothing(
    start: Any, slack: FakeSlack, sessions: Sessions
) -> None:
    clock = FrozenClock(NOW)
    app = await start('[stuck]\ninitializing = "off"\n', clock=clock)
    await initializing(sessions, "acc-1", "ana@example.com")
    clock.advance(days=30)
    await run_stuck_job(app)
    await run_stuck_job(app)
    assert await all_cases(sessions) == []
    assert slack.calls_to("chat.postMessage") == []


# --- stopped on purpose ------------------------------------------------------------------------


async def test_a_downgraded_stopped_account_opens_no_case(
    start: Any, slack: FakeSlack, sessions: Sessions, nylas_fake: FakeNylas
) -> None:
    nylas_fake.add_v2_account(
        id="a-1", email="bo@example.org", sync_state="stopped", billing_state="cancelled"
    )
    app = await start(**nylas_settings(nylas_fake, "v2"))
    await webhook_v2(app, "account.stopped", "a-1")

    async def recorded() -> bool:
        return ("nylas", "stopped_on_purpose") in await case_events(sessions)

    await eventually(recorded, within=10)
    assert await all_cases(sessions) == []
    assert (await account_of(sessions, "a-1")).billing_state == "cancelled"
    assert slack.calls_to("chat.postMessage") == []


async def test_an_open_stopped_case_is_resolved_once_the_account_was_downgraded(
    start: Any, slack: FakeSlack, sessions: Sessions, nylas_fake: FakeNylas
) -> None:
    nylas_fake.add_v2_account(id="a-1", email="bo@example.org", sync_state="stopped")
    app = await start(**nylas_settings(nylas_fake, "v2"))
    await webhook_v2(app, "account.stopped", "a-1")
    await wait_posts(slack, 1)

    nylas_fake.v2_accounts["a-1"]["billing_state"] = "deleted"  # downgraded in the Dashboard
    await webhook_v2(app, "account.stopped", "a-1", NOW + timedelta(minutes=5))

    async def resolved() -> bool:
        return [c.status for c in await all_cases(sessions)] == ["resolved"]

    await eventually(resolved, within=10)
    (case,) = await all_cases(sessions)
    assert case.resolution == (
        "Stopped on purpose: the account was downgraded (billing state deleted), "
        "so Nylas neither syncs nor bills it."
    )


async def test_retry_on_an_account_no_longer_billed_asks_first(
    start: Any, slack: FakeSlack, sessions: Sessions, nylas_fake: FakeNylas
) -> None:
    nylas_fake.add_v2_account(
        id="a-1", email="bo@example.org", sync_state="stopped", billing_state="cancelled"
    )
    app = await start(**nylas_settings(nylas_fake, "v2"))
    # A case opened before its billing state was known (the account could not be read then).
    event = AccountEvent(
        account_id="a-1",
        api_version="v2",
        event_type="account.stopped",
        state="stopped",
        occurred_at=NOW,
        source="webhook",
        email="bo@example.org",
        details={"enriched": False},
    )
    async with sessions() as session, session.begin():
        await apply_event(session, event, now=NOW, route=lambda _: CHANNEL)
    async with sessions() as session, session.begin():
        account = await session.get(Account, "a-1")
        assert account is not None
        account.billing_state = "cancelled"  # learnt later, without a new state
        session.add(account)
    await wait_posts(slack, 1)

    op = Operator(app, slack)
    answer = await op.type("retry 1", user="U0ALICE")
    assert answer["text"] == "Retry case #1?"
    assert "Nylas starts billing it again" in shown(answer)
    retry = buttons(answer["blocks"])[ids.RETRY]
    assert retry["value"] == "1"
    assert "billing state is cancelled" in retry["confirm"]["text"]["text"]
    assert "Nylas starts billing it again" in retry["confirm"]["text"]["text"]
    assert nylas_fake.calls == []  # asked, not acted
    card = await op.type("show 1", user="U0ALICE")
    assert "confirm" in buttons(card["blocks"])[ids.RETRY]

    # Pressing the confirmed button retries.
    await click(app, click_body(slack, ids.RETRY, "1", "U0ALICE", n=9))
    assert (await told(slack, 9)).startswith("Retried case #1")
    assert [c.path.rsplit("/", 1)[1] for c in nylas_fake.calls_to("POST", r".*")] == [
        "downgrade",
        "upgrade",
    ]


# --- a new account may stay partial for a week -------------------------------------------------


async def test_a_new_account_may_stay_partial_for_a_week_an_old_one_a_day(
    start: Any, slack: FakeSlack, sessions: Sessions, nylas_fake: FakeNylas
) -> None:
    clock = FrozenClock(NOW)
    nylas_fake.add_v2_account(id="old", email="old@example.org", sync_state="partial")
    nylas_fake.add_v2_account(id="reconnected", email="re@example.org", sync_state="partial")
    nylas_fake.add_v2_account(id="new", email="new@example.org", sync_state="partial")
    async with sessions() as session, session.begin():
        for account_id in ("old", "reconnected"):
            long_ago = NOW - timedelta(days=90)
            session.add(
                Account(
                    id=account_id,
                    api_version="v2",
                    sync_state="running",
                    state_at=long_ago,
                    state_since=long_ago,
                    first_seen_at=long_ago,
                    updated_at=long_ago,
                )
            )
    app = await start(**nylas_settings(nylas_fake, "v2"), clock=clock)
    await webhook_v2(app, "account.running", "old")
    await webhook_v2(app, "account.connected", "reconnected")  # re-authenticated just now
    await webhook_v2(app, "account.connected", "new")

    async def applied() -> bool:
        accounts = [await account_of(sessions, a) for a in ("old", "reconnected")]
        return all(a.sync_state == "partial" for a in accounts) and await known("new")

    async def known(account_id: str) -> bool:
        async with sessions() as session:
            return await cases.get_account(session, account_id=account_id) is not None

    await eventually(applied, within=10)
    assert (await account_of(sessions, "reconnected")).connected_at == NOW
    assert (await account_of(sessions, "old")).connected_at is None

    clock.advance(hours=25)
    await run_stuck_job(app)
    assert [(c.account_id, c.state) for c in await all_cases(sessions)] == [("old", "partial")]

    clock.advance(days=5, hours=22)  # not quite a week since they connected
    await run_stuck_job(app)
    assert len(await all_cases(sessions)) == 1
    clock.advance(hours=2)
    await run_stuck_job(app)
    assert sorted(c.account_id for c in await all_cases(sessions)) == ["new", "old", "reconnected"]
    await wait_posts(slack, 3)


# --- revoke reads the account first ------------------------------------------------------------


async def test_revoke_after_a_silent_reauthentication_revokes_nothing(
    start: Any, slack: FakeSlack, sessions: Sessions, nylas_fake: FakeNylas
) -> None:
    clock = FrozenClock(NOW + timedelta(minutes=5))
    nylas_fake.add_v2_account(id="a-1", email="bo@example.org", sync_state="stopped")
    app = await start(
        f'[permissions]\nrevoke = ["{ADMIN}"]\n', **nylas_settings(nylas_fake, "v2"), clock=clock
    )
    await webhook_v2(app, "account.stopped", "a-1")
    await wait_posts(slack, 1)
    nylas_fake.set_sync_state("a-1", "running")  # re-authenticated; the webhook never came

    await click(app, click_body(slack, ids.REVOKE, "1", ADMIN))
    answer = await told(slack, 1)
    assert answer == (
        "Nothing was revoked: the account of case #1 is running again, so the end user "
        "re-authenticated meanwhile and revoking would undo it."
    )
    assert nylas_fake.calls_to("POST", r".*/revoke-all") == []
    assert nylas_fake.revocations == []

    async def resolved() -> bool:
        return [c.status for c in await all_cases(sessions)] == ["resolved"]

    await eventually(resolved, within=10)
    (case,) = await all_cases(sessions)
    assert "recovered" in (case.resolution or "") and case.busy_until is None
    events = await case_events(sessions)
    assert (f"slack:{ADMIN}", "revoke_skipped") in events
    assert (f"slack:{ADMIN}", "revoked") not in events


async def test_revoke_when_nylas_cannot_be_asked_revokes_nothing(
    start: Any, slack: FakeSlack, sessions: Sessions, nylas_fake: FakeNylas
) -> None:
    nylas_fake.add_v2_account(id="a-1", email="bo@example.org", sync_state="stopped")
    app = await start(f'[permissions]\nrevoke = ["{ADMIN}"]\n', **nylas_settings(nylas_fake, "v2"))
    await webhook_v2(app, "account.stopped", "a-1")
    await wait_posts(slack, 1)
    nylas_fake.fail("GET", r"/a/.*/accounts/a-1", status=503, times=None)

    await click(app, click_body(slack, ids.REVOKE, "1", ADMIN))
    answer = await told(slack, 1)
    assert answer.startswith("Nothing was revoked for case #1: Nylas could not be asked")
    assert nylas_fake.calls_to("POST", r".*/revoke-all") == []
    (case,) = await all_cases(sessions)
    assert case.status == "open" and case.busy_until is None
    async with sessions() as session:
        failed = (
            await session.exec(select(CaseEvent).where(col(CaseEvent.action) == "revoke_failed"))
        ).one()
    assert failed.details["step"] == "re-read"


async def test_v3_grant_valid_again_is_not_deleted(
    start: Any, slack: FakeSlack, sessions: Sessions, nylas_fake: FakeNylas
) -> None:
    clock = FrozenClock(NOW + timedelta(minutes=5))
    nylas_fake.add_grant(id="g-1", email="ana@example.com", grant_status="invalid")
    app = await start(
        f'[permissions]\nrevoke = ["{ADMIN}"]\n', **nylas_settings(nylas_fake, "v3"), clock=clock
    )
    await expire(app)
    await wait_posts(slack, 1)
    nylas_fake.set_grant_status("g-1", "valid")
    await click(app, click_body(slack, ids.REVOKE, "1", ADMIN))

    async def opened() -> bool:
        # Opened, and its id recorded by the app (after Slack answered views.open).
        async with sessions() as session:
            recorded = (await session.exec(select(SlackView))).all()
        return bool(slack.calls_to("views.open")) and bool(recorded)

    await eventually(opened)
    # The modal the app opened, as Slack submits it (its id, and the app's own ids).
    (view_id,) = [k for k, v in slack.open_views.items() if v["callback_id"] == ids.REVOKE_MODAL]
    payload = {
        "type": "view_submission",
        "user": {"id": ADMIN},
        "team": {"id": "T0TEST"},
        "api_app_id": "A0APP",
        "view": {
            "id": view_id,
            "type": "modal",
            "callback_id": ids.REVOKE_MODAL,
            "private_metadata": "1",
            "state": {
                "values": {ids.CONFIRM_BLOCK: {ids.CONFIRM_INPUT: {"value": "ana@example.com"}}}
            },
        },
    }
    body = urlencode({"payload": json.dumps(payload)})
    answer = await (await app.post(ids.EVENTS_PATH, data=body, headers=signed(body))).json()
    assert answer["response_action"] == "update"
    assert "Nothing was revoked" in json.dumps(answer["view"])
    assert nylas_fake.calls_to("DELETE", r".*") == [] and "g-1" in nylas_fake.grants
    (case,) = await all_cases(sessions)
    assert case.status == "resolved"
