"""``reauthbot check``, ``--version``, a busy port and commands that must not create a
database, run as real processes against fake Slack and Nylas servers."""

from __future__ import annotations

import socket
from importlib.metadata import version
from pathlib import Path

import pytest

from storage.migrate import head_revision
from tests.bot.test_cli import assert_one_line_error
from tests.bot.test_cli_nylas import run_async
from tests.cli import run
from tests.conftest import NYLAS_API_KEY, NYLAS_CLIENT_ID, NYLAS_CLIENT_SECRET
from tests.fakes.nylas import FakeNylas
from tests.fakes.slack import FakeSlack
from tests.ports import free_port

HEAD = head_revision()
BOT_TOKEN = "xoxb-check-token"


def report(stdout: str) -> dict[str, str]:
    """The check's lines as name -> value, with the alignment spaces collapsed."""
    lines = {}
    for line in stdout.splitlines():
        name, _, value = line.strip().partition("  ")
        lines[name] = " ".join(value.split())
    return lines


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.name != "reauthbot.log")


def test_check_creates_no_sqlite_database_or_directory(tmp_path: Path) -> None:
    target = tmp_path / "nonexistent" / "dir" / "x.db"
    result = run(tmp_path, "check", DATABASE_URL=f"sqlite+aiosqlite:///{target}")
    assert result.returncode == 1, result.stdout
    lines = report(result.stdout)
    assert lines["database"] == f"sqlite+aiosqlite:///{target}"
    assert lines["status"] == (
        f"no database at {target} (run `reauthbot db upgrade` or `reauthbot serve` first)"
    )
    assert files_under(tmp_path) == []


def test_check_on_an_empty_postgresql_database_says_to_upgrade(
    tmp_path: Path, blank_url: str
) -> None:
    if not blank_url.startswith("postgresql"):
        pytest.skip("an empty PostgreSQL database exists; an SQLite one is a missing file")
    result = run(tmp_path, "check", DATABASE_URL=blank_url)
    assert result.returncode == 0, result.stdout
    assert report(result.stdout)["status"] == "reachable, schema empty: run db upgrade"


def test_check_masks_the_database_password(tmp_path: Path) -> None:
    url = f"postgresql+asyncpg://nobody:hunter22@127.0.0.1:{free_port()}/none"
    result = run(tmp_path, "check", DATABASE_URL=url)
    assert result.returncode == 1
    lines = report(result.stdout)
    assert lines["database"].startswith("postgresql+asyncpg://nobody:***@127.0.0.1:")
    assert lines["status"].startswith("cannot connect:")
    assert "hunter22" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "command", [["cases"], ["case", "show", "1"], ["case", "ack", "1"], ["poll"]]
)
def test_commands_never_create_the_default_database(tmp_path: Path, command: list[str]) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run(elsewhere, *command, NYLAS_API_KEY="k")
    assert_one_line_error(
        result,
        1,
        f"no database at {elsewhere / 'reauthbot.db'}",
        "run `reauthbot db upgrade` or `reauthbot serve` first",
    )
    assert files_under(elsewhere) == []


async def test_check_names_the_configuration_and_verifies_the_credentials(
    tmp_path: Path, migrated_url: str, nylas_fake: FakeNylas
) -> None:
    (tmp_path / "policy.toml").write_text(
        '[routing.domains]\n"acme.com" = "C0ACME"\n"globex.com" = "C0GLOBEX"\n'
    )
    async with FakeSlack(bot_token=BOT_TOKEN) as slack:
        result = await run_async(
            tmp_path,
            "check",
            DATABASE_URL=migrated_url,
            SLACK_BOT_TOKEN=BOT_TOKEN,
            SLACK_SIGNING_SECRET="signing",
            SLACK_ALERT_CHANNEL="C0ALERTS",
            SLACK_API_URL=slack.url,
            NYLAS_API_URL=nylas_fake.url,
            NYLAS_API_KEY=NYLAS_API_KEY,
            REAUTHBOT_CONFIG="policy.toml",
        )
        assert len(slack.calls_to("auth.test")) == 1
    assert result.returncode == 0, result.stdout + result.stderr
    lines = report(result.stdout)
    assert lines["mode"] == "HTTP (Slack sends to /slack/events on port 3000)"
    assert lines["alert channel"] == "C0ALERTS"
    assert lines["routing"] == "2 domains to their own channels"
    assert (lines["acme.com"], lines["globex.com"]) == ("C0ACME", "C0GLOBEX")
    assert lines["SLACK_BOT_TOKEN"] == "set"
    assert lines["SLACK_SIGNING_SECRET"] == "set"
    assert lines["SLACK_APP_TOKEN"] == "not set"
    assert lines["NYLAS_API_KEY"] == "set"
    assert lines["NYLAS_WEBHOOK_SECRET"] == "not set"
    assert lines["status"] == f"reachable, schema {HEAD}"
    assert lines["slack"] == "token accepted: bot reauthbot in workspace reauthbot test"
    assert lines["nylas credentials"] == "accepted"
    (listing,) = nylas_fake.calls_to("GET", r"^/v3/grants$")
    assert listing.query == {"limit": "1", "offset": "0"}
    for secret in (BOT_TOKEN, "signing", NYLAS_API_KEY):
        assert secret not in result.stdout + result.stderr


async def test_check_refused_slack_token_fails(tmp_path: Path, migrated_url: str) -> None:
    async with FakeSlack(bot_token="xoxb-the-real-one") as slack:
        result = await run_async(
            tmp_path,
            "check",
            DATABASE_URL=migrated_url,
            SLACK_BOT_TOKEN="xoxb-made-up",
            SLACK_APP_TOKEN="xapp-1-made-up",
            SLACK_ALERT_CHANNEL="C0ALERTS",
            SLACK_API_URL=slack.url,
        )
    assert result.returncode == 1, result.stdout
    lines = report(result.stdout)
    assert lines["mode"].startswith("Socket Mode")
    assert lines["SLACK_SIGNING_SECRET"] == "not set"
    assert lines["slack"] == "refused the bot token: invalid_auth"
    assert "xoxb-made-up" not in result.stdout + result.stderr


async def test_check_refused_nylas_key_fails(
    tmp_path: Path, migrated_url: str, nylas_fake: FakeNylas
) -> None:
    result = await run_async(
        tmp_path,
        "check",
        DATABASE_URL=migrated_url,
        NYLAS_API_URL=nylas_fake.url,
        NYLAS_API_KEY="nyk_made_up",
    )
    assert result.returncode == 1, result.stdout
    line = report(result.stdout)["nylas credentials"]
    assert line.startswith("refused:") and "GET /v3/grants" in line
    assert "nyk_made_up" not in result.stdout + result.stderr
    assert nylas_fake.calls_to("GET", "/v3/webhooks") == []


@pytest.mark.parametrize("secret", [NYLAS_CLIENT_SECRET, "made-up-secret"])
async def test_check_verifies_v2_application_credentials(
    tmp_path: Path, migrated_url: str, nylas_fake: FakeNylas, secret: str
) -> None:
    nylas_fake.add_v2_account(id="a-1", email="ana@example.com")
    result = await run_async(
        tmp_path,
        "check",
        DATABASE_URL=migrated_url,
        NYLAS_API_VERSION="v2",
        NYLAS_API_URL=nylas_fake.url,
        NYLAS_CLIENT_ID=NYLAS_CLIENT_ID,
        NYLAS_CLIENT_SECRET=secret,
    )
    line = report(result.stdout)["nylas credentials"]
    calls = nylas_fake.calls_to("GET", rf"^/a/{NYLAS_CLIENT_ID}/accounts$")
    assert [c.query for c in calls] == [{"limit": "1", "offset": "0"}]
    if secret == NYLAS_CLIENT_SECRET:
        assert (result.returncode, line) == (0, "accepted"), result.stdout
    else:
        assert result.returncode == 1
        assert line.startswith("refused:")


@pytest.mark.parametrize("args", [["--version"], ["cases", "--version"], ["db", "--version"]])
def test_version_everywhere(tmp_path: Path, args: list[str]) -> None:
    result = run(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"reauthbot {version('reauthbot')}"
    assert files_under(tmp_path) == []


def test_a_busy_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(tmp_path, "serve", HOST="127.0.0.1", PORT=str(port))
    assert result.stderr.strip() == (
        f"reauthbot: cannot listen on 127.0.0.1:{port}: address already in use"
    )
    assert result.returncode == 2
    assert not (tmp_path / "reauthbot.db").exists()


def test_check_says_when_slack_and_nylas_cannot_be_reached(
    tmp_path: Path, migrated_url: str
) -> None:
    result = run(
        tmp_path,
        "check",
        DATABASE_URL=migrated_url,
        SLACK_BOT_TOKEN=BOT_TOKEN,
        SLACK_APP_TOKEN="xapp-1-check",
        SLACK_ALERT_CHANNEL="C0ALERTS",
        SLACK_API_URL=f"http://127.0.0.1:{free_port()}/api/",
        NYLAS_API_URL=f"http://127.0.0.1:{free_port()}",
        NYLAS_API_KEY=NYLAS_API_KEY,
    )
    assert result.returncode == 1, result.stdout
    lines = report(result.stdout)
    assert lines["slack"].startswith("cannot reach http://127.0.0.1:")
    assert lines["nylas credentials"].startswith("not verified: Could not reach Nylas")
    assert "Traceback" not in result.stderr
