"""No secret reaches the logs: a full scenario at DEBUG, with every secret set to a value that
cannot be missed, in process (every log record, unscrubbed) and as ``reauthbot serve``.

The scenario: a webhook in, the alert posted, escalation to PagerDuty (which fails first),
clicks, ``/reauth`` commands, the Nylas API refusing the key (and echoing it back) and
failing, the Slack API failing, the Home tab, forged requests, Nylas API v2 (Basic auth with
the client secret) and Socket Mode (the app token).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, urlencode

import httpx
import pytest
from aiohttp.test_utils import TestClient
from slack_sdk.signature import SignatureVerifier
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from bot import logs
from bot.services import SERVICES
from bot.settings import Settings, load_settings
from bot.slack import ids
from storage.migrate import head_revision
from tests.appclient import start_app
from tests.bot.slack.support import CHANNEL, NOW, click_body, click_payload
from tests.bot.slack.test_home import home_opened
from tests.cli import service
from tests.conftest import FrozenClock
from tests.databases import TABLES
from tests.fakes.nylas import FakeNylas
from tests.fakes.pagerduty import FakePagerDuty
from tests.fakes.slack import FakeSlack
from tests.fakes.socket_mode import FakeSocketMode
from tests.waiting import eventually
from workflows.escalation import escalate_due
from workflows.nylas import samples
from workflows.nylas.webhooks import sign

# Every secret holds MARK, which nothing else in these tests contains: any piece of a secret
# long enough to carry it is found, wherever it was cut.
MARK = "LEAKCHECK"
BOT_TOKEN = f"xoxb-9917-{MARK}bot-6f1d2c9a4b7e"
SIGNING_SECRET = f"{MARK}sign-0c5e9b2a7d41f3e8"
APP_TOKEN = f"xapp-1-A0APP-1-{MARK}app-8d2f6a1c"
API_KEY = f"nyk_v0_{MARK}key_3e7a9c5b1d"
CLIENT_SECRET = f"{MARK}client-4b8e2d6f0a"
WEBHOOK_SECRET = f"{MARK}hook-7c1a5e9d3b"
ROUTING_KEY = f"{MARK}pd00routing00key0042"
DB_PASSWORD = f"{MARK}dbpass-2f6b9e"
SECRETS = {
    "SLACK_BOT_TOKEN": BOT_TOKEN,
    "SLACK_SIGNING_SECRET": SIGNING_SECRET,
    "SLACK_APP_TOKEN": APP_TOKEN,
    "NYLAS_API_KEY": API_KEY,
    "NYLAS_CLIENT_SECRET": CLIENT_SECRET,
    "NYLAS_WEBHOOK_SECRET": WEBHOOK_SECRET,
    "PAGERDUTY_ROUTING_KEY": ROUTING_KEY,
    "database password": DB_PASSWORD,
}
CLIENT_ID = "client-id-public-1"
POLICY = """
[escalation]
[[escalation.levels]]
after = "15m"
pagerduty = true

[permissions]
revoke = ["U0ALICE"]
"""


def signed(body: str, timestamp: int | None = None) -> dict[str, str]:
    """Headers as Slack signs a request, with this test's signing secret."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    signature = SignatureVerifier(SIGNING_SECRET).generate_signature(timestamp=ts, body=body)
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature,
    }


def forms_of(secret: str) -> dict[str, str]:
    """The secret and what it obviously turns into on the way to a log line."""
    found = {"as is": secret, "url-encoded": quote(secret, safe=""), "form": quote_plus(secret)}
    for label, raw in (("", secret), (" + ':' (v2 Basic auth)", f"{secret}:")):
        encoded = base64.b64encode(raw.encode()).decode()
        found[f"base64{label}"] = encoded.rstrip("=")
        found[f"urlsafe base64{label}"] = (
            base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
        )
    # Its tail, for a secret cut at the front ("…4b7e").
    found["last 10 characters"] = secret[-10:]
    return found


def leaks(text: str) -> list[str]:
    found = [f"{MARK!r} (a piece of some secret)"] if MARK in text else []
    for name, secret in SECRETS.items():
        found += [f"{name} {how}" for how, form in forms_of(secret).items() if form in text]
    return found


def render(records: list[logging.LogRecord]) -> str:
    """Every record in both of the service's formats, without its scrubbing: what the code
    hands to logging, message, fields and traceback alike."""
    plain, as_json = logs.PlainFormatter(()), logs.JsonFormatter(())
    return "\n".join(f"{plain.format(r)}\n{as_json.format(r)}" for r in records)


# --- the scenario, in process ------------------------------------------------------------------


class Scene:
    """The fakes, and signed requests to an app."""

    def __init__(self, slack: FakeSlack, nylas: FakeNylas, pagerduty: FakePagerDuty) -> None:
        self.slack, self.nylas, self.pagerduty = slack, nylas, pagerduty
        self.answers = 0

    def settings(self, policy: Path, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "slack_bot_token": BOT_TOKEN,
            "slack_signing_secret": SIGNING_SECRET,
            "slack_alert_channel": CHANNEL,
            "slack_api_url": self.slack.url,
            "nylas_api_url": self.nylas.url,
            "nylas_api_key": API_KEY,
            "nylas_client_id": CLIENT_ID,
            "nylas_client_secret": CLIENT_SECRET,
            "nylas_webhook_secret": WEBHOOK_SECRET,
            "nylas_redirect_uri": "https://app.example/callback",
            "pagerduty_routing_key": ROUTING_KEY,
            "pagerduty_api_url": self.pagerduty.url,
            # Not used (the tests hand the app their engine), but known to the log scrubber.
            "database_url": f"postgresql+asyncpg://reauthbot:{DB_PASSWORD}@127.0.0.1:9/none",
            "config_file": policy,
            "log_level": "DEBUG",
        }
        return load_settings(_env_file=None, **(values | overrides))

    async def webhook(self, app: TestClient, payload: dict[str, Any], secret: str) -> int:
        raw = json.dumps(payload).encode()
        headers = {"X-Nylas-Signature": sign(secret, raw)}
        return (await app.post("/nylas/webhook", data=raw, headers=headers)).status

    async def slack_request(
        self, app: TestClient, body: str, *, json_body: bool = False, forged: bool = False
    ) -> int:
        headers = signed(body)
        if json_body:
            headers["Content-Type"] = "application/json"
        if forged:
            headers["X-Slack-Signature"] = "v0=" + "0" * 64
        return (await app.post(ids.EVENTS_PATH, data=body, headers=headers)).status

    async def command(self, app: TestClient, line: str, user: str = "U0ALICE") -> None:
        """Type ``/reauth line``; wait for the private answer."""
        self.answers += 1
        n = f"cmd{self.answers}"
        body = urlencode(
            {
                "team_id": "T0TEST",
                "api_app_id": "A0APP",
                "channel_id": CHANNEL,
                "user_id": user,
                "command": ids.COMMAND,
                "text": line,
                "response_url": self.slack.response_url(n),
                "trigger_id": "1.2.x",
            }
        )
        assert await self.slack_request(app, body) == 200

        async def answered() -> bool:
            return bool(self.slack.responses_to(n))

        await eventually(answered, within=15)

    async def click(self, app: TestClient, action: str, value: str, user: str) -> int:
        """Click a button of the first alert; return the number of its response_url."""
        self.answers += 1
        body = click_body(self.slack, action, value, user, n=self.answers)
        assert await self.slack_request(app, body) == 200
        return self.answers


def nylas_echo(secret: str) -> dict[str, Any]:
    """An error body that repeats the credential back, as some APIs do."""
    return {
        "request_id": "req-1",
        "error": {"type": "unauthorized", "message": f"Invalid credentials: Bearer {secret}"},
    }


async def wait_for(what: Any, within: float = 15) -> None:
    async def holds() -> bool:
        return bool(what())

    await eventually(holds, within=within)


async def alert_of(engine: AsyncEngine, case_id: int) -> bool:
    async with engine.connect() as conn:
        row = await conn.execute(text(f"SELECT slack_ts FROM cases WHERE id = {case_id}"))
        found = row.scalar_one_or_none()
    return found is not None


@pytest.fixture
async def scene() -> AsyncIterator[Scene]:
    async with (
        FakeSlack(bot_token=BOT_TOKEN) as slack,
        FakeNylas(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, api_key=API_KEY) as nylas,
        FakePagerDuty(routing_key=ROUTING_KEY) as pagerduty,
    ):
        yield Scene(slack, nylas, pagerduty)


async def http_mode_v3(scene: Scene, engine: AsyncEngine, policy: Path) -> None:
    slack, nylas, pagerduty = scene.slack, scene.nylas, scene.pagerduty
    clock = FrozenClock(NOW)
    nylas.add_grant(id="g-1", email="ana@example.com", grant_status="invalid")
    settings = scene.settings(policy)
    app = await start_app(settings, engine=engine, clock=clock, scheduled_jobs=False, migrate=False)
    try:
        # A webhook in (and a forged one), the alert out.
        expired = samples.v3_notification(
            "grant.expired", grant_id="g-1", email="ana@example.com", at=NOW
        )
        assert await scene.webhook(app, expired, WEBHOOK_SECRET) == 200
        assert await scene.webhook(app, expired, "not-the-secret") == 401
        await eventually(lambda: alert_of(engine, 1), within=15)

        # Nobody acknowledges: PagerDuty is paged, and fails first (once echoing the key).
        pagerduty.fail(500)
        pagerduty.fail(
            400, body={"status": "invalid event", "message": f"bad routing_key {ROUTING_KEY}"}
        )
        clock.advance(minutes=16)
        services = app.server.app[SERVICES]
        await escalate_due(services.sessions, policy=settings.policy.escalation, now=clock())
        await wait_for(lambda: len(pagerduty.events) >= 2)

        # Nylas refuses the key (repeating it back), then fails once and recovers.
        nylas.fail("GET", r"/v3/grants/g-1", status=401, body=nylas_echo(API_KEY))
        await scene.command(app, "retry 1")
        nylas.fail("GET", r"/v3/grants/g-1", status=500)
        await scene.command(app, "retry 1")
        assert len(nylas.calls_to("GET", r"/v3/grants/g-1")) >= 3

        # Slack fails the alert's update and the thread line; an operator acknowledges.
        slack.fail("chat.update", error="invalid_auth", times=2)
        slack.fail("chat.postMessage", status=500, times=2)
        await scene.click(app, ids.ACK, "1", "U0ALICE")
        await wait_for(lambda: slack.calls_to("chat.update"))
        n = await scene.click(app, ids.SUPPORT_TICKET, "1", "U0BOB")
        await wait_for(lambda: slack.responses_to(n))

        for line in ("show 1", "list", "link 1", "revoke 1", "stats", "oncall", "help", "nope"):
            await scene.command(app, line)
        await scene.command(app, "ack 1", user="U0MALLORY")

        # The Home tab; forged and malformed Slack requests.
        home = home_opened("U0ALICE")
        assert await scene.slack_request(app, home, json_body=True) == 200
        await wait_for(lambda: "U0ALICE" in slack.home_tabs)
        assert await scene.slack_request(app, home, json_body=True, forged=True) == 401
        # Naming neither team nor app, an empty payload is refused before its shape matters.
        assert await scene.slack_request(app, "payload=%7B%7D") == 403
        await wait_for(lambda: len(slack.calls_to("chat.postMessage")) >= 2)
    finally:
        await app.close()


async def http_mode_v2(scene: Scene, engine: AsyncEngine, policy: Path) -> None:
    """Nylas API v2: requests carry base64("client_secret:"); webhooks are signed with it."""
    nylas = scene.nylas
    settings = scene.settings(policy, nylas_api_version="v2")
    nylas.add_v2_account(id="a-1", email="bo@example.org", sync_state="stopped")
    nylas.add_v2_account(id="a-2", email="cy@example.org", sync_state="stopped")
    nylas.fail("GET", r"/a/.*/accounts/a-1", status=401, body=nylas_echo(CLIENT_SECRET))
    nylas.fail("POST", r"/a/.*/accounts/a-2/downgrade", status=500, times=None)
    app = await start_app(settings, engine=engine, scheduled_jobs=False, migrate=False)
    try:
        for account in ("a-1", "a-2"):
            delta = samples.v2_delivery("account.stopped", account_id=account, at=NOW)
            assert await scene.webhook(app, delta, CLIENT_SECRET) == 200
        await eventually(lambda: alert_of(engine, 2), within=15)
        await wait_for(lambda: nylas.calls_to("GET", r"/a/.*/accounts/a-1"))  # refused
        n = await scene.click(app, ids.RETRY, "2", "U0ALICE")
        await wait_for(lambda: nylas.calls_to("POST", r"/a/.*/accounts/a-2/downgrade"))
        await wait_for(lambda: scene.slack.responses_to(n))
    finally:
        await app.close()


async def socket_mode(scene: Scene, engine: AsyncEngine, policy: Path) -> None:
    """Socket Mode: the app token opens the connection; a click arrives over it."""
    settings = scene.settings(policy, slack_app_token=APP_TOKEN, slack_signing_secret=None)
    async with FakeSocketMode(scene.slack, app_token=APP_TOKEN) as socket:
        app = await start_app(settings, engine=engine, scheduled_jobs=False, migrate=False)
        try:
            await socket.wait_connected()
            payload = click_payload(scene.slack, ids.ACK, "1", "U0BOB", n=99)
            await socket.send_envelope("interactive", payload)
            await wait_for(lambda: scene.slack.responses_to(99))
        finally:
            await app.close()


async def test_a_full_scenario_logs_no_secret(
    scene: Scene,
    engine: AsyncEngine,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    # The service's own handler and formatter, as `serve` sets them up, next to caplog's.
    written = io.StringIO()
    handler = logging.StreamHandler(written)
    handler.setFormatter(logs.PlainFormatter(scene.settings(policy).secrets()))
    root = logging.getLogger()
    root.addHandler(handler)
    caplog.set_level(logging.DEBUG)
    try:
        await http_mode_v3(scene, engine, policy)
        await http_mode_v2(scene, engine, policy)
        await socket_mode(scene, engine, policy)
    finally:
        root.removeHandler(handler)

    records = caplog.records
    # DEBUG from the libraries too (slack_sdk logs every Web API request it sends). Bolt logs
    # as reauthbot.bolt; its request verifier (slack_bolt.*) never sees a request now, since
    # the service refuses a badly signed one before Bolt parses it. The server keeps no access
    # log, in the tests as in `reauthbot serve`.
    names = {r.name.split(".")[0] for r in records}
    assert {"reauthbot", "slack_sdk", "httpx"} <= names, names
    assert not any(r.name == "aiohttp.access" for r in records)
    assert any(r.name == "reauthbot.bolt" for r in records)
    raw = render(records)
    # The failures did happen and were logged: Nylas' echo of the key arrived, redacted.
    assert "[redacted]" in raw
    assert any(r.levelno >= logging.ERROR and r.name.startswith("reauthbot") for r in records)
    assert leaks(raw) == [], "log records carry secrets (before the service's scrubbing)"
    assert leaks(written.getvalue()) == []
    out, err = capfd.readouterr()
    assert leaks(out + err) == []
    # Nor does any secret reach what operators see: Slack messages and answers, the database.
    told = [call.params for call in scene.slack.calls if call.method != "apps.connections.open"]
    assert leaks(json.dumps([told, scene.slack.responses], default=str)) == []
    async with engine.connect() as conn:
        stored = {t: (await conn.execute(text(f"SELECT * FROM {t}"))).all() for t in TABLES}
    assert leaks(json.dumps(stored, default=str)) == []


# --- the real command ------------------------------------------------------------------------


@pytest.fixture
def database_url(db_backend: str, blank_url: str) -> str:
    """A fresh database; on PostgreSQL reached with a password in the URL (the test server
    trusts local connections, so any password works)."""
    if db_backend != "postgresql":
        return blank_url
    return make_url(blank_url).set(password=DB_PASSWORD).render_as_string(hide_password=False)


async def test_reauthbot_serve_logs_no_secret(
    scene: Scene, tmp_path: Path, database_url: str
) -> None:
    slack, nylas = scene.slack, scene.nylas
    (tmp_path / "policy.toml").write_text(POLICY)
    env = {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_ALERT_CHANNEL": CHANNEL,
        "SLACK_API_URL": slack.url,
        "NYLAS_API_URL": nylas.url,
        "NYLAS_API_KEY": API_KEY,
        "NYLAS_CLIENT_ID": CLIENT_ID,
        "NYLAS_CLIENT_SECRET": CLIENT_SECRET,
        "NYLAS_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "NYLAS_REDIRECT_URI": "https://app.example/callback",
        "PAGERDUTY_ROUTING_KEY": ROUTING_KEY,
        "PAGERDUTY_API_URL": scene.pagerduty.url,
        "DATABASE_URL": database_url,
        "REAUTHBOT_CONFIG": str(tmp_path / "policy.toml"),
        "REAUTHBOT_LOG_LEVEL": "DEBUG",
    }
    nylas.add_grant(id="g-1", email="ana@example.com", grant_status="invalid")
    # The reconciliation at start is refused, with the key repeated back.
    nylas.fail("GET", r"/v3/grants", status=401, body=nylas_echo(API_KEY))
    log = tmp_path / "serve.log"
    async with service(tmp_path, log, env) as base, httpx.AsyncClient(base_url=base) as http:
        expired = samples.v3_notification(
            "grant.expired", grant_id="g-1", email="ana@example.com", at=NOW
        )
        raw = json.dumps(expired).encode()
        sent = await http.post(
            "/nylas/webhook", content=raw, headers={"X-Nylas-Signature": sign(WEBHOOK_SECRET, raw)}
        )
        assert sent.status_code == 200
        await wait_for(lambda: slack.calls_to("chat.postMessage"))
        assert (await http.get("/readyz")).json() == {"status": "ready", "schema": head_revision()}

        async def slack_post(body: str, **headers: str) -> int:
            answer = await http.post(ids.EVENTS_PATH, content=body, headers=signed(body) | headers)
            return answer.status_code

        nylas.fail("GET", r"/v3/grants/g-1", status=401, body=nylas_echo(API_KEY))
        slack.fail("chat.update", error="invalid_auth", times=1)
        for n, line in enumerate(["retry 1", "show 1", "link 1", "nope"]):
            form = {"command": ids.COMMAND, "text": line, "user_id": "U0ALICE"}
            form |= {
                "team_id": "T0TEST",
                "api_app_id": "A0APP",
                "response_url": slack.response_url(f"s{n}"),
            }
            assert await slack_post(urlencode(form)) == 200
            await wait_for(lambda n=n: slack.responses_to(f"s{n}"))
        body = click_body(slack, ids.ACK, "1", "U0ALICE", n=9)
        assert await slack_post(body) == 200
        await wait_for(lambda: len(slack.calls_to("chat.update")) >= 2)
        assert await slack_post(body, **{"X-Slack-Signature": "v0=" + "0" * 64}) == 401
        assert (
            await slack_post(body, **{"X-Slack-Request-Timestamp": str(int(time.time()) - 900)})
            == 401
        )
    output = log.read_text()
    assert "reauthbot.cli listening" in output and "DEBUG" in output, output[-2000:]
    # The refused reconciliation opens an episode of Nylas failing: one line, with the reason.
    assert re.search(r'Nylas requests failing: NylasAuthError: .*loop="reconcile job"', output), (
        output[-3000:]
    )
    assert leaks(output) == [], output[-3000:]
