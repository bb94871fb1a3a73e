"""Run the real ``reauthbot`` command in a subprocess with a clean environment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

BASE_ENV_KEYS = ("PATH", "LANG", "LC_ALL", "SYSTEMROOT", "TMPDIR")


def clean_env(tmp_path: Path, **values: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in BASE_ENV_KEYS if k in os.environ}
    env["HOME"] = str(tmp_path)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(values)
    return env


def run(
    tmp_path: Path, *args: str, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        cwd=tmp_path,
        env=clean_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
