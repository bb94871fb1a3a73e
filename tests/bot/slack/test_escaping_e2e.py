"""Outside text reaching Slack, end to end: an end user's email in the re-auth link reply, a
Nylas error in a thread line. Neither may pose as a link or ping anyone."""

from __future__ import annotations

from typing import Any

from bot.slack import ids
from tests.bot.slack.support import click, click_body, expire, nylas_settings, wait_posts
from tests.bot.slack.test_e2e import answered, thread_lines
from tests.fakes.nylas import FakeNylas
from tests.fakes.slack import FakeSlack

EVIL_EMAIL = "<http://evil.example|click here>@x.test"


async def test_the_link_reply_shows_a_hostile_email_as_text(start: Any, slack: FakeSlack) -> None:
    app = await start(
        nylas_api_key="nyk_x",
        nylas_client_id="cid-42",
        nylas_redirect_uri="https://app.example.com/nylas/callback",
    )
    await expire(app, email=EVIL_EMAIL)
    await wait_posts(slack, 1)
    await click(app, click_body(slack, ids.LINK, "1", "U0ALICE"))
    await answered(slack)
    reply = slack.responses[0]["text"]
    assert "<http" not in reply
    assert "Send this link to &lt;http://evil.example|click here&gt;@x.test" in reply
    assert "https://api.us.nylas.com/v3/connect/auth?client_id=cid-42&amp;" in reply


async def test_a_hostile_nylas_error_in_a_thread_line_is_text(
    start: Any, slack: FakeSlack, nylas_fake: FakeNylas
) -> None:
    nylas_fake.add_grant(id="g-1", email="ana@example.com", grant_status="invalid")
    app = await start(**nylas_settings(nylas_fake, "v3"))
    await expire(app)
    await wait_posts(slack, 1)
    error = {"type": "api_error", "message": "<!channel> see <http://evil.example|the fix>"}
    nylas_fake.fail("GET", r"/v3/grants/g-1", status=400, body={"error": error})
    await click(app, click_body(slack, ids.RETRY, "1", "U0ALICE"))
    await answered(slack)
    assert "<!channel>" not in slack.responses[0]["text"]
    (line,) = await thread_lines(slack, 1)
    assert line.startswith("Retry sync by <@U0ALICE> failed:")
    assert "<!channel>" not in line and "<http" not in line
    assert "&lt;!channel&gt; see &lt;http://evil.example|the fix&gt;" in line
