"""``reauthbot serve`` as a real process: starts, becomes ready, stops cleanly on signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from storage.migrate import head_revision
from tests.cli import clean_env
from tests.ports import free_port

SECRETS = {
    "SLACK_BOT_TOKEN": "xoxb-1111-2222-SECRETBOTTOKEN",
    "SLACK_SIGNING_SECRET": "signing-SECRET-5f2b",
    "SLACK_ALERT_CHANNEL": "C0ALERTS",
    "NYLAS_API_KEY": "nyk_v0_SECRETAPIKEY",
    "NYLAS_CLIENT_SECRET": "client-SECRET-9a9a",
    "NYLAS_WEBHOOK_SECRET": "webhook-SECRET-7c7c",
    "PAGERDUTY_ROUTING_KEY": "pd-SECRET-routing",
}

HEAD = head_revision()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@dataclass
class Served:
    process: subprocess.Popen[str]
    base: str
    log: Path

    def output(self) -> str:
        return self.log.read_text()


@contextmanager
def serving(tmp_path: Path, **env: str) -> Iterator[Served]:
    port = free_port()
    log = tmp_path / "serve.log"
    # A file, not a pipe: a pipe nobody reads fills up and blocks the service mid-log.
    with log.open("w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "bot", "serve"],
            cwd=tmp_path,
            env=clean_env(tmp_path, HOST="127.0.0.1", PORT=str(port), **env),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
        )
    served = Served(process, f"http://127.0.0.1:{port}", log)
    try:
        yield served
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_ready(served: Served, within: float = 30) -> dict[str, str]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if served.process.poll() is not None:
            pytest.fail(f"serve exited early:\n{served.output()}")
        try:
            status, body = get(f"{served.base}/readyz")
        except OSError:
            time.sleep(0.1)
            continue
        if status == 200:
            return dict(json.loads(body))
        time.sleep(0.1)
    pytest.fail("serve did not become ready")


def stop(served: Served, sig: signal.Signals) -> str:
    served.process.send_signal(sig)
    served.process.wait(timeout=20)
    output = served.output()
    assert served.process.returncode == 0, output
    return output


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_on_a_fresh_directory(tmp_path: Path, sig: signal.Signals) -> None:
    with serving(tmp_path) as served:
        assert wait_ready(served) == {"status": "ready", "schema": HEAD}
        assert (tmp_path / "reauthbot.db").is_file()
        assert get(f"{served.base}/healthz")[0] == 200
        assert "reauthbot_info" in get(f"{served.base}/metrics")[1]
        output = stop(served, sig)
    assert "LOCAL MODE" in output
    assert "Alerts are written to this log instead of Slack" in output
    for line in ("workers stopped", "database closed", "reauthbot.cli stopped"):
        assert line in output
    assert "Traceback" not in output


def test_serve_migrates_a_new_database_on_each_engine(tmp_path: Path, blank_url: str) -> None:
    with serving(tmp_path, DATABASE_URL=blank_url) as served:
        wait_ready(served)
        stop(served, signal.SIGTERM)


def test_logs_never_contain_secrets(tmp_path: Path) -> None:
    env = {"REAUTHBOT_LOG_FORMAT": "json", "REAUTHBOT_LOG_LEVEL": "debug", **SECRETS}
    with serving(tmp_path, **env) as served:
        wait_ready(served)
        get(f"{served.base}/metrics")
        output = stop(served, signal.SIGTERM)
    records = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    # How many lines the jobs log before the signal (Nylas retries…) depends on timing; the
    # lines from start to stop, down to debug level, are always there.
    messages = [record["message"] for record in records]
    assert "listening" in messages and "stopped" in messages, output
    assert any(record["level"] == "debug" for record in records), output
    assert {"time", "level", "logger", "message"} <= set(records[0])
    for name, secret in SECRETS.items():
        if "SECRET" in secret:
            assert secret not in output, f"{name} leaked into the log"
