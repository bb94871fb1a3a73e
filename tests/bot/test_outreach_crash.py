"""A crash in the middle of emailing the end user never sends the email twice."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import update
from sqlmodel import col, select

from storage.engine import create_engine, session_factory
from storage.models import OUTREACH_CHANNEL, Case, OutboxMessage
from tests.bot.slack.support import SIGNING_SECRET, click_body, signed
from tests.cli import service
from tests.conftest import NYLAS_API_KEY, NYLAS_CLIENT_ID, WEBHOOK_SECRET
from tests.fakes.nylas import FakeNylas
from tests.fakes.slack import FakeSlack
from tests.waiting import eventually
from workflows.nylas import samples
from workflows.nylas.webhooks import sign

SEND = r"/v3/grants/g-support/messages/send"


async def test_an_email_cut_off_by_sigkill_is_not_sent_again(
    tmp_path: Path, blank_url: str, nylas_fake: FakeNylas
) -> None:
    nylas_fake.add_grant(id="g-support", email="support@acme.example", grant_status="valid")
    nylas_fake.delay(SEND, 60)  # Nylas takes the email and the service dies waiting
    policy = tmp_path / "policy.toml"
    policy.write_text('[outreach]\nchannel = "nylas"\ngrant_id = "g-support"\n')
    log = tmp_path / "serve.log"
    async with FakeSlack(bot_token="xoxb-crash") as slack:
        env = {
            "DATABASE_URL": blank_url,
            "NYLAS_API_URL": nylas_fake.url,
            "NYLAS_API_KEY": NYLAS_API_KEY,
            "NYLAS_CLIENT_ID": NYLAS_CLIENT_ID,
            "NYLAS_REDIRECT_URI": "https://app.example.com/callback",
            "NYLAS_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "REAUTHBOT_PUBLIC_URL": "https://reauthbot.example.com",
            "REAUTHBOT_CONFIG": str(policy),
            "SLACK_BOT_TOKEN": "xoxb-crash",
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_ALERT_CHANNEL": "C0ALERTS",
            "SLACK_API_URL": slack.url,
        }
        raw = json.dumps(
            samples.v3_notification(
                "grant.expired", grant_id="g-1", email="ana@example.com", at=datetime.now(UTC)
            )
        ).encode()
        async with service(tmp_path, log, env) as base, httpx.AsyncClient() as http:
            answer = await http.post(
                f"{base}/nylas/webhook",
                content=raw,
                headers={"X-Nylas-Signature": sign(WEBHOOK_SECRET, raw)},
            )
            assert answer.status_code == 200

            async def posted() -> bool:
                return bool(slack.calls_to("chat.postMessage"))

            await eventually(posted, within=15)
            body = click_body(slack, "case_send_link", "1", "U0ALICE")
            clicked = await http.post(f"{base}/slack/events", content=body, headers=signed(body))
            assert clicked.status_code == 200

            async def sending() -> bool:
                return bool(nylas_fake.calls_to("POST", SEND))

            await eventually(sending, within=15)
            # SIGKILL on leaving the block, with the email's answer still on its way.

        engine = create_engine(blank_url)
        sessions = session_factory(engine)
        try:
            outreach = select(OutboxMessage).where(col(OutboxMessage.channel) == OUTREACH_CHANNEL)
            async with sessions() as session, session.begin():
                (message,) = (await session.exec(outreach)).all()
                assert (message.status, message.last_error) == ("pending", "in_flight")
                # Time passes: the dead process's lease on the message runs out.
                await session.exec(
                    update(OutboxMessage)
                    .where(col(OutboxMessage.id) == message.id)
                    .values(lease_until=datetime.now(UTC) - timedelta(seconds=1))
                )
            nylas_fake._delays.clear()
            async with service(tmp_path, log, env):

                async def given_up() -> bool:
                    async with sessions() as session:
                        found = (await session.exec(outreach)).one()
                    return found.status == "failed"

                await eventually(given_up, within=15)
            async with sessions() as session:
                found = (await session.exec(outreach)).one()
                case = (await session.exec(select(Case))).one()
            assert found.last_error == "outreach_uncertain"
            assert case.last_error == "outreach failed: outreach_uncertain"
            assert len(nylas_fake.calls_to("POST", SEND)) == 1
        finally:
            await engine.dispose()
