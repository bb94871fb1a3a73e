"""``reauthbot poll`` and ``reauthbot trigger``, run as real processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from tests.bot.test_cli import assert_one_line_error
from tests.bot.test_serve import serving, wait_ready
from tests.cli import clean_env, run
from tests.conftest import NYLAS_API_KEY
from tests.fakes.nylas import FakeNylas
from tests.ports import free_port


async def run_async(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI without blocking the loop that serves the fake Nylas API."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=tmp_path,
        env=clean_env(tmp_path, **env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return subprocess.CompletedProcess(args, process.returncode, out.decode(), err.decode())


def test_trigger_needs_the_signing_secret(tmp_path: Path) -> None:
    assert_one_line_error(run(tmp_path, "trigger", "grant.expired"), 2, "NYLAS_WEBHOOK_SECRET")
    assert_one_line_error(run(tmp_path, "trigger", "account.invalid"), 2, "NYLAS_CLIENT_SECRET")


def test_trigger_options_that_do_not_apply_are_usage_errors(tmp_path: Path) -> None:
    env = {"NYLAS_WEBHOOK_SECRET": "s", "NYLAS_CLIENT_SECRET": "c"}
    v2 = run(tmp_path, "trigger", "account.invalid", "--email", "a@example.com", **env)
    assert_one_line_error(v2, 2, "--email and --provider are for v3 grant.* triggers only")
    reauth = run(tmp_path, "trigger", "grant.expired", "--reauth", **env)
    assert_one_line_error(reauth, 2, "--reauth is for grant.updated only")


def test_trigger_unknown_event_lists_the_known_ones(tmp_path: Path) -> None:
    result = run(tmp_path, "trigger", "grant.exploded", NYLAS_WEBHOOK_SECRET="s")
    assert_one_line_error(
        result, 2, "unknown trigger 'grant.exploded'", "grant.expired", "account.sync_error"
    )


def test_trigger_with_nothing_listening(tmp_path: Path) -> None:
    result = run(
        tmp_path, "trigger", "grant.expired", NYLAS_WEBHOOK_SECRET="s", PORT=str(free_port())
    )
    assert_one_line_error(result, 1, "cannot reach http://127.0.0.1:", "is the service running?")


def test_newcomer_sees_a_case_open_and_close_without_nylas(tmp_path: Path) -> None:
    env = {"NYLAS_WEBHOOK_SECRET": "dev-secret", "NYLAS_CLIENT_SECRET": "dev-client-secret"}
    with serving(tmp_path, **env) as served:
        wait_ready(served)
        port = served.base.rsplit(":", 1)[1]
        sent = run(
            tmp_path,
            "trigger",
            "grant.expired",
            "--email",
            "ana@example.com",
            "--account",
            "g-1",
            "--gzip",
            PORT=port,
            **env,
        )
        assert sent.returncode == 0, sent.stderr
        assert '200 {"status": "accepted", "stored": 1, "duplicates": 0}' in sent.stdout
        # A v3 service takes no v2 delivery unless told to (NYLAS_ACCEPT_V2_WEBHOOKS).
        v2 = run(tmp_path, "trigger", "account.stopped", "--account", "a-9", PORT=port, **env)
        assert_one_line_error(v2, 2, "NYLAS_ACCEPT_V2_WEBHOOKS")

        def open_cases() -> list[dict[str, object]]:
            return list(json.loads(run(tmp_path, "cases", "--json").stdout))

        for _ in range(100):
            if len(open_cases()) == 1:
                break
        assert [(c["account"], c["kind"]) for c in open_cases()] == [("g-1", "reauth")]
        # No --email: nothing is made up, and the account keeps the email it has.
        reauth = run(
            tmp_path, "trigger", "grant.updated", "--reauth", "--account", "g-1", PORT=port, **env
        )
        assert reauth.returncode == 0
        summary = [" ".join(line.split()) for line in reauth.stdout.splitlines()]
        assert summary[:5] == [
            f"sending grant.updated (v3) to http://127.0.0.1:{port}/nylas/webhook",
            "account g-1",
            "email not sent: the service keeps what it knows",
            "provider not sent: the service keeps what it knows",
            "re-authentication yes",
        ]
        assert "ana@example.com" not in reauth.stdout
        for _ in range(100):
            if not open_cases():
                break
        assert open_cases() == []
        shown = run(tmp_path, "case", "show", "1")
        assert shown.stdout.startswith("Resolved: ana@example.com\n"), shown.stderr
        assert "Resolution: The end user re-authenticated." in shown.stdout
    log = served.output()
    assert "alert: Needs re-authentication: ana@example.com" in log
    assert "Resolved: The end user re-authenticated." in log


def nylas_env(fake: FakeNylas, url: str) -> dict[str, str]:
    return {"DATABASE_URL": url, "NYLAS_API_URL": fake.url, "NYLAS_API_KEY": NYLAS_API_KEY}


async def test_poll_reports_what_it_found(
    tmp_path: Path, blank_url: str, nylas_fake: FakeNylas
) -> None:
    nylas_fake.add_many_grants(1200, grant_statuses=["valid"] * 99 + ["invalid"])
    env = nylas_env(nylas_fake, blank_url)
    assert (await run_async(tmp_path, "db", "upgrade", **env)).returncode == 0
    result = await run_async(tmp_path, "poll", **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "1200 accounts checked: 1200 new, 0 changed, 0 gone; 12 cases opened, 0 resolved"
    )
    assert "... 500 accounts checked" in result.stderr
    cases_out = await run_async(tmp_path, "cases", "--json", **env)
    assert len(json.loads(cases_out.stdout)) == 12


async def test_poll_with_nylas_down_is_one_line(
    tmp_path: Path, blank_url: str, nylas_fake: FakeNylas
) -> None:
    nylas_fake.fail("GET", r"/v3/grants", status=401, times=None)
    env = nylas_env(nylas_fake, blank_url)
    await run_async(tmp_path, "db", "upgrade", **env)
    result = await run_async(tmp_path, "poll", **env)
    assert_one_line_error(result, 1, "reconciliation stopped:", "GET /v3/grants")
    assert NYLAS_API_KEY not in result.stderr


def test_poll_needs_credentials_and_a_migrated_database(tmp_path: Path, blank_url: str) -> None:
    assert_one_line_error(run(tmp_path, "poll", DATABASE_URL=blank_url), 2, "NYLAS_API_KEY")
    result = run(tmp_path, "poll", DATABASE_URL=blank_url, NYLAS_API_KEY="k")
    assert_one_line_error(result, 1, "reauthbot db upgrade")


async def test_check_lists_the_webhook_destinations(
    tmp_path: Path, migrated_url: str, nylas_fake: FakeNylas
) -> None:
    nylas_fake.add_webhook(id="wh-1", status="failing")
    nylas_fake.add_webhook(
        id="wh-2", webhook_url="https://m.example.com/h", trigger_types=["message.created"]
    )
    result = await run_async(
        tmp_path, "check", REAUTHBOT_POLL_INTERVAL="10m", **nylas_env(nylas_fake, migrated_url)
    )
    assert result.returncode == 0, result.stderr
    lines = [line.split(None, 1) for line in result.stdout.splitlines()]
    assert [" ".join(v.split()) for k, v in lines if k.startswith("wh-")] == [
        "failing, https://reauthbot.example.com/nylas/webhook (watched)",
        "active, https://m.example.com/h (not watched: no account triggers)",
    ]
    assert "webhook destination watch on, every 10 min: 2 found" in " ".join(result.stdout.split())


async def test_check_says_when_the_destinations_cannot_be_listed(
    tmp_path: Path, migrated_url: str, nylas_fake: FakeNylas
) -> None:
    nylas_fake.fail("GET", "/v3/webhooks", status=401)
    result = await run_async(tmp_path, "check", **nylas_env(nylas_fake, migrated_url))
    assert result.returncode == 1
    (line,) = [line for line in result.stdout.splitlines() if "webhook destination" in line]
    assert "cannot list destinations:" in line and "GET /v3/webhooks" in line
    assert NYLAS_API_KEY not in result.stdout + result.stderr


def test_check_without_nylas_credentials_says_the_watch_is_off(
    tmp_path: Path, migrated_url: str
) -> None:
    result = run(tmp_path, "check", DATABASE_URL=migrated_url)
    assert result.returncode == 0, result.stderr
    assert "webhook destination watch off (no Nylas credentials)" in " ".join(result.stdout.split())
