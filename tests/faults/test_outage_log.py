"""An outage is a few lines in the log of ``reauthbot serve``, not a traceback per attempt.

The real service runs in a subprocess, logging JSON at INFO, while what it depends on fails:
PostgreSQL refuses connections (a TCP proxy, cut), the fake Slack answers 503, the fake Nylas
answers 503. Every retrying part keeps failing for seconds; the log must hold one line that
names what failed, with the reason, the count and the next retry, and no traceback; once the
dependency is back, one line says so with the number of failures and how long it lasted.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import make_url

from tests import databases
from tests.builders import signed_expiry
from tests.cli import clean_env
from tests.conftest import NYLAS_CLIENT_ID, NYLAS_CLIENT_SECRET, WEBHOOK_SECRET
from tests.fakes.nylas import FakeNylas
from tests.fakes.slack import FakeSlack
from tests.fakes.tcp_proxy import TcpProxy
from tests.ports import free_port
from tests.waiting import eventually
from workflows.nylas import samples
from workflows.nylas.webhooks import sign

TOKEN = "xoxb-outage-log-token"
# Long enough for every loop to fail many times: the workers retry every second.
OUTAGE_SECONDS = 6.0


@dataclass
class Served:
    base: str
    log: Path

    def records(self) -> list[dict[str, Any]]:
        text = self.log.read_text(errors="replace")
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def episode_lines(self, episode: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("episode") == episode]

    async def logged(self, pattern: str, *, within: float = 30) -> dict[str, Any]:
        """Wait for a line whose message matches ``pattern``; return it."""
        found: list[dict[str, Any]] = []

        async def written() -> bool:
            found[:] = [r for r in self.records() if re.search(pattern, r["message"])]
            await asyncio.sleep(0.1)
            return bool(found)

        await eventually(written, within=within)
        return found[0]


@asynccontextmanager
async def serving(tmp_path: Path, **env: str) -> AsyncIterator[Served]:
    """``reauthbot serve`` without waiting for it to be ready (its database may be down)."""
    port = free_port()
    log = tmp_path / "serve.log"
    values = {"HOST": "127.0.0.1", "PORT": str(port), "REAUTHBOT_LOG_FORMAT": "json", **env}
    with log.open("w") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            "serve",
            cwd=tmp_path,
            env=clean_env(tmp_path, **values),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    served = Served(f"http://127.0.0.1:{port}", log)
    try:
        await served.logged(r"^listening$")
        yield served
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()


async def ready(served: Served, *, within: float = 30) -> None:
    async with httpx.AsyncClient(base_url=served.base, timeout=5) as http:

        async def answers() -> bool:
            await asyncio.sleep(0.1)
            return (await http.get("/readyz")).status_code == 200

        await eventually(answers, within=within)


def assert_one_episode_line(served: Served, episode: str, starts: str) -> dict[str, Any]:
    """One line opened the episode, with its reason, count and next retry; no tracebacks."""
    records = served.records()
    lines = [r for r in records if r.get("episode") == episode]
    assert len(lines) == 1, lines
    (line,) = lines
    assert line["level"] in ("warning", "error")
    assert line["message"].startswith(starts), line
    assert line["failures"] == 1 and line["error"] and line["loop"], line
    assert "next retry at " in line["message"], line
    assert datetime.fromisoformat(line["retry_at"]) > datetime.fromisoformat(line["time"])
    assert not [r for r in records if "exception" in r], records
    assert "Traceback" not in served.log.read_text()
    return line


def failures_of(recovered: dict[str, Any]) -> int:
    return int(recovered["failures"])


# --- the database --------------------------------------------------------------------------


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    """A fresh PostgreSQL database; the service migrates it once it can reach it."""
    url = databases.new_database_url("postgresql", tmp_path)
    yield url
    databases.drop_database(url)


@pytest.mark.skipif(not databases.PG_URL, reason="TEST_DATABASE_URL is not set")
async def test_a_database_down_from_the_start_is_one_line_then_one_line_when_back(
    tmp_path: Path, pg_url: str
) -> None:
    server = make_url(pg_url)
    async with TcpProxy(server.host or "127.0.0.1", server.port or 5432) as proxy:
        through = server.set(host=proxy.host, port=proxy.port)
        proxy.cut()
        env = {
            "DATABASE_URL": through.render_as_string(hide_password=False),
            "NYLAS_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
        async with (
            serving(tmp_path, **env) as served,
            httpx.AsyncClient(base_url=served.base, timeout=10) as http,
        ):
            # Webhooks (refused with 503), readiness probes and scrapes meanwhile.
            for n in range(int(OUTAGE_SECONDS)):
                raw, signature = signed_expiry(n, WEBHOOK_SECRET)
                answer = await http.post("/nylas/webhook", content=raw, headers=signature)
                assert answer.status_code == 503
                assert (await http.get("/readyz")).status_code == 503
                assert (await http.get("/metrics")).status_code == 200
                await asyncio.sleep(1)

            line = assert_one_episode_line(served, "database", "database unreachable: ")
            assert line["level"] == "error"
            # The proxy resets each connection: the driver's own words, on one line.
            assert line["error"].startswith("ConnectionResetError: "), line

            proxy.restore()
            await ready(served)
            back = await served.logged(r"^database reachable again after \d+ failures over")
            assert back["level"] == "info" and back["episode"] == "database"
            # The migration retry, the workers, the webhook, readiness and the scrape:
            # every attempt was counted, none was written.
            assert failures_of(back) >= 2 * OUTAGE_SECONDS, back
            assert back["down_for"] >= OUTAGE_SECONDS - 1, back
            assert len(served.episode_lines("database")) == 2


# --- Slack ---------------------------------------------------------------------------------


async def test_slack_answering_5xx_is_one_line_then_one_line_when_back(tmp_path: Path) -> None:
    async with FakeSlack(bot_token=TOKEN) as slack:
        slack.fail("chat.postMessage", status=503, times=None)
        env = {
            "SLACK_BOT_TOKEN": TOKEN,
            "SLACK_SIGNING_SECRET": "outage-log-signing-secret",
            "SLACK_ALERT_CHANNEL": "C0ALERTS",
            "SLACK_API_URL": slack.url,
            "NYLAS_WEBHOOK_SECRET": WEBHOOK_SECRET,
        }
        async with (
            serving(tmp_path, **env) as served,
            httpx.AsyncClient(base_url=served.base, timeout=10) as http,
        ):
            await ready(served)
            for n in range(4):  # four alerts to post, each retried with backoff
                raw, signature = signed_expiry(n, WEBHOOK_SECRET, domain=f"example{n}.com")
                answer = await http.post("/nylas/webhook", content=raw, headers=signature)
                assert answer.status_code == 200
            await asyncio.sleep(OUTAGE_SECONDS)
            assert len(slack.calls_to("chat.postMessage")) >= 6  # it kept trying

            line = assert_one_episode_line(served, "slack", "Slack not accepting messages: ")
            assert line["level"] == "warning" and "503" in line["error"]
            # No line per message retried either.
            assert not [r for r in served.records() if r["message"].startswith("message ")]

            slack.recover()
            back = await served.logged(r"^Slack accepting messages again after \d+ failures")
            # Posts are sent one at a time, each tried twice by the Slack SDK: over 4 s.
            assert back["level"] == "info" and failures_of(back) >= 4
            assert len(served.episode_lines("slack")) == 2


# --- Nylas ---------------------------------------------------------------------------------


async def test_nylas_down_is_one_line_then_one_line_when_back(tmp_path: Path) -> None:
    async with FakeNylas(client_id=NYLAS_CLIENT_ID, client_secret=NYLAS_CLIENT_SECRET) as nylas:
        accounts = [f"a-{n}" for n in range(5)]
        for account in accounts:
            nylas.add_v2_account(id=account, email=f"{account}@example.org", sync_state="invalid")
        nylas.fail("*", r"/.*", status=503, times=None)
        env = {
            "NYLAS_API_VERSION": "v2",
            "NYLAS_API_URL": nylas.url,
            "NYLAS_CLIENT_ID": NYLAS_CLIENT_ID,
            "NYLAS_CLIENT_SECRET": NYLAS_CLIENT_SECRET,
        }
        async with (
            serving(tmp_path, **env) as served,
            httpx.AsyncClient(base_url=served.base, timeout=10) as http,
        ):
            await ready(served)
            # v2 webhooks carry only the account id: each must be read back from Nylas.
            for account in accounts:
                at = datetime.now(UTC)
                delivery = samples.v2_delivery("account.invalid", account_id=account, at=at)
                raw = json.dumps(delivery).encode()
                signature = {"X-Nylas-Signature": sign(NYLAS_CLIENT_SECRET, raw)}
                answer = await http.post("/nylas/webhook", content=raw, headers=signature)
                assert answer.status_code == 200
            # The client tries each request a few times, over seconds, before it fails.
            await served.logged(r"^Nylas requests failing: ", within=30)
            await asyncio.sleep(OUTAGE_SECONDS)

            line = assert_one_episode_line(served, "nylas", "Nylas requests failing: ")
            assert line["level"] == "warning" and "503" in line["error"]
            # The reconciliation at start and every delivery waiting: no line for each.
            assert not [r for r in served.records() if r["message"].startswith("delivery ")]

            nylas.recover()
            # A waiting delivery is retried 5 s, then 10 s after its first try.
            back = await served.logged(r"^Nylas answering again after \d+ failures", within=40)
            # The reconciliation and the webhook check at start, and a delivery at least.
            assert back["level"] == "info" and failures_of(back) >= 3
            assert len(served.episode_lines("nylas")) == 2
