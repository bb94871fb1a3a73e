"""A duplicate account end to end: a second grant for one mailbox, flagged, then deleted."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from aiohttp.test_utils import TestClient

from bot.slack import ids
from storage import cases
from storage.models import CaseKind, CaseStatus
from tests.bot.slack.support import (
    CHANNEL,
    NOW,
    Sessions,
    case_events,
    click,
    click_body,
    nylas_settings,
    wait_posts,
)
from tests.conftest import WEBHOOK_SECRET
from tests.fakes.nylas import FakeNylas
from tests.fakes.slack import FakeSlack
from tests.waiting import eventually
from workflows.nylas import samples
from workflows.nylas.webhooks import sign

POLICY = '[permissions]\nrevoke = ["U0ADMIN"]\n'


async def created(app: TestClient, grant_id: str, minutes: int) -> None:
    raw = json.dumps(
        samples.v3_notification(
            "grant.created",
            grant_id=grant_id,
            email="dana@acme.com",
            at=NOW + timedelta(minutes=minutes),
        )
    ).encode()
    response = await app.post(
        "/nylas/webhook", data=raw, headers={"X-Nylas-Signature": sign(WEBHOOK_SECRET, raw)}
    )
    assert response.status == 200


def button(slack: FakeSlack, action_id: str) -> dict[str, Any]:
    blocks = slack.calls_to("chat.postMessage")[0].params["blocks"]
    return next(
        e
        for b in blocks
        if b["type"] == "actions"
        for e in b["elements"]
        if e["action_id"] == action_id
    )


async def test_a_second_grant_is_flagged_and_the_old_one_deleted_from_slack(
    start: Any, slack: FakeSlack, sessions: Sessions, nylas_fake: FakeNylas
) -> None:
    nylas_fake.add_grant(id="g-old", email="dana@acme.com")
    nylas_fake.add_grant(id="g-new", email="dana@acme.com")
    app = await start(POLICY, **nylas_settings(nylas_fake, "v3"))

    await created(app, "g-old", 0)
    await created(app, "g-new", 30)
    await wait_posts(slack, 1)

    post = slack.calls_to("chat.postMessage")[0].params
    text = json.dumps(post["blocks"])
    assert "Duplicate account: billed twice" in text
    assert "g-old" in text and "g-new" in text
    delete = button(slack, ids.DELETE_OLD)
    assert delete["style"] == "danger" and delete["confirm"]["style"] == "danger"
    assert "g-new" in delete["confirm"]["text"]["text"]
    assert not any(
        e["action_id"] == ids.REVOKE
        for b in post["blocks"]
        if b["type"] == "actions"
        for e in b["elements"]
    )
    async with sessions() as session:
        case = await cases.get_case(session, case_id=1)
    assert case is not None
    assert (case.account_id, case.kind, case.related_account_id) == (
        "g-old",
        CaseKind.DUPLICATE,
        "g-new",
    )

    # Someone without the revoke permission is refused; Nylas is not called.
    assert await click(app, click_body(slack, ids.DELETE_OLD, "1", "U0MALLORY", n=1)) == 200

    async def refused() -> bool:
        return bool(slack.responses_to(1))

    await eventually(refused)
    assert slack.responses_to(1)[0]["text"] == "You are not allowed to revoke cases."
    assert nylas_fake.calls_to("DELETE", r".*") == []

    assert await click(app, click_body(slack, ids.DELETE_OLD, "1", "U0ADMIN", n=2)) == 200

    async def resolved() -> bool:
        async with sessions() as session:
            found = await cases.get_case(session, case_id=1)
        return found is not None and found.status == CaseStatus.RESOLVED

    await eventually(resolved)
    assert [c.path for c in nylas_fake.calls_to("DELETE", r".*")] == ["/v3/grants/g-old"]
    assert "g-old" not in nylas_fake.grants and "g-new" in nylas_fake.grants

    async def told() -> bool:
        return bool(slack.responses_to(2))

    await eventually(told)
    assert "Old account g-old deleted by <@U0ADMIN>" in slack.responses_to(2)[0]["text"]
    events = await case_events(sessions)
    assert ("slack:U0MALLORY", "refused") in events
    assert ("slack:U0ADMIN", "deleted_duplicate") in events

    async def shows_resolved() -> bool:
        ts = min(ts for channel, ts in slack.messages if channel == CHANNEL)
        return "Resolved" in json.dumps(slack.messages[(CHANNEL, ts)]["blocks"])

    await eventually(shows_resolved)


async def test_delete_old_account_is_off_unless_someone_may_revoke(
    start: Any, slack: FakeSlack, nylas_fake: FakeNylas
) -> None:
    app = await start(**nylas_settings(nylas_fake, "v3"))
    await created(app, "g-old", 0)
    await created(app, "g-new", 30)
    await wait_posts(slack, 1)
    assert button(slack, ids.DELETE_OLD)["text"]["text"] == "Delete old account (off)"

    await click(app, click_body(slack, ids.DELETE_OLD, "1", "U0ADMIN"))

    async def told() -> bool:
        return bool(slack.responses)

    await eventually(told)
    assert "turned off" in slack.responses[0]["text"]
    assert nylas_fake.calls_to("DELETE", r".*") == []
