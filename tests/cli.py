"""Run the real ``reauthbot`` command in a subprocess with a clean environment."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from tests.ports import free_port

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


@asynccontextmanager
async def service(tmp_path: Path, log: Path, env: dict[str, str]) -> AsyncIterator[str]:
    """Run ``reauthbot serve`` until ready; yield its base URL; SIGKILL it on the way out."""
    port = free_port()
    with log.open("a") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            "serve",
            cwd=tmp_path,
            env=clean_env(tmp_path, HOST="127.0.0.1", PORT=str(port), **env),
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=2) as http, asyncio.timeout(30):
            while True:
                try:
                    if (await http.get(f"{base}/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        yield base
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
            await process.wait()
