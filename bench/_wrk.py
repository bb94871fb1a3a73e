"""Driving a server with wrk: a pool of pre-signed requests, the run, and wrk's report.

wrk (https://github.com/wg/wrk, Debian package ``wrk``) is written in C and sends requests
from one thread with an event loop of its own; on a small machine it leaves the servers far
more of the CPU than a Python load generator does. ``wrk_replay.lua`` makes it send each
delivery of a pool file once, in order; the pool is written beforehand, so no signing happens
while wrk runs.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench._common import REPO_ROOT, Child, clean_env

LUA_SCRIPT = Path(__file__).resolve().with_name("wrk_replay.lua")
INSTALL_HINT = "wrk is not installed; install it with: apt-get install -y wrk"
SOCKET_ERRORS = ("connect", "read", "write", "timeout")
PERCENTILES = ("50", "75", "90", "99")

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_TIME = r"([\d.]+)(us|ms|s|m|h)"
_REQUESTS = re.compile(r"^\s*(\d+) requests in " + _TIME + r",", re.M)
_RATE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_LATENCY = re.compile(r"^\s+Latency\s+" + r"\s+".join([_TIME] * 3), re.M)
_PERCENTILE = re.compile(r"^\s+(50|75|90|99)%\s+" + _TIME, re.M)
_NON_2XX = re.compile(r"^\s*Non-2xx or 3xx responses: (\d+)", re.M)
_SOCKET = re.compile(
    r"^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.M
)
_REPLAY = re.compile(r"^replay: sent (\d+) pool (\d+)", re.M)


def wrk_path() -> str | None:
    """Where the wrk binary is, or None when it is not installed."""
    return shutil.which("wrk")


def _ms(number: str, unit: str) -> float:
    return float(number) * _UNIT_MS[unit]


@dataclass
class WrkReport:
    """What wrk printed at the end of one run (``--latency``) and what the Lua script added."""

    requests: int  # answers read, whatever their status
    duration_s: float
    requests_per_s: float
    mean_ms: float
    max_ms: float
    percentiles_ms: dict[str, float]  # "50", "75", "90", "99"
    non_2xx: int  # wrk counts an answer with a status of 400 or more; 3xx would pass as 2xx
    socket_errors: dict[str, int] = field(default_factory=dict)  # only those above 0
    sent: int = 0  # requests handed to wrk by the Lua script
    pool: int = 0  # deliveries in the pool file

    @property
    def ok(self) -> int:
        return self.requests - self.non_2xx

    @property
    def unanswered(self) -> int:
        """Requests sent whose answer wrk did not read: in flight when it stopped, or lost to
        a socket error. The server may have acted on them."""
        return max(0, self.sent - self.requests)

    @property
    def pool_ran_out(self) -> bool:
        return self.sent > self.pool


def parse(text: str) -> WrkReport:
    """Read wrk's closing report, run with ``--latency`` and ``wrk_replay.lua``."""
    requests, rate, latency = _REQUESTS.search(text), _RATE.search(text), _LATENCY.search(text)
    replay = _REPLAY.search(text)
    if not (requests and rate and latency and replay):
        raise ValueError(f"not a report of wrk with wrk_replay.lua:\n{text[-2000:]}")
    non_2xx = _NON_2XX.search(text)
    socket = _SOCKET.search(text)
    errors = dict(zip(SOCKET_ERRORS, map(int, socket.groups()), strict=True)) if socket else {}
    return WrkReport(
        requests=int(requests.group(1)),
        duration_s=_ms(requests.group(2), requests.group(3)) / 1000,
        requests_per_s=float(rate.group(1)),
        mean_ms=_ms(latency.group(1), latency.group(2)),
        max_ms=_ms(latency.group(5), latency.group(6)),
        percentiles_ms={q: _ms(n, unit) for q, n, unit in _PERCENTILE.findall(text)},
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors={k: n for k, n in errors.items() if n},
        sent=int(replay.group(1)),
        pool=int(replay.group(2)),
    )


def write_pool(path: Path, count: int, next_delivery: Callable[[], Any]) -> None:
    """Write ``count`` deliveries for ``wrk_replay.lua``: signature, space, body, a line each.

    ``next_delivery`` returns ``(body, headers)`` as the Python load generator sends them.
    """
    with path.open("wb") as out:
        for _ in range(count):
            raw, headers = next_delivery()
            out.write(headers["X-Nylas-Signature"].encode() + b" " + raw + b"\n")


async def run(
    url: str,
    pool: Path,
    *,
    connections: int,
    seconds: int,
    request_timeout: float,
    log: Path,
    children: list[Child],
) -> tuple[WrkReport, float]:
    """Run wrk (one thread) against url, replaying ``pool``; return its report and CPU seconds.

    wrk writes its report to ``log``. It is listed in ``children``, so it is stopped whatever
    happens; if this is cancelled, it is stopped by its pid at once.
    """
    binary = wrk_path()
    if binary is None:
        raise RuntimeError(INSTALL_HINT)
    argv = [binary, "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--latency"]
    argv += ["--timeout", f"{request_timeout:g}s", "-s", str(LUA_SCRIPT), url, "--", str(pool)]
    child = Child("wrk", argv, cwd=REPO_ROOT, env=clean_env(log.parent), log=log)
    children.append(child)
    # os.wait4 gives the CPU wrk used; it runs in a thread, as it blocks until wrk ends.
    waiting = asyncio.ensure_future(asyncio.to_thread(os.wait4, child.pid, 0))
    try:
        _, status, usage = await asyncio.shield(waiting)
    except asyncio.CancelledError:
        os.kill(child.pid, signal.SIGTERM)
        _, status, _ = await waiting
        child.process.returncode = os.waitstatus_to_exitcode(status)
        raise
    # Reaped by wait4: tell Popen, so that it neither waits for the pid nor signals it.
    child.process.returncode = os.waitstatus_to_exitcode(status)
    text = await asyncio.to_thread(log.read_text, errors="replace")
    if child.process.returncode != 0:
        raise RuntimeError(f"wrk exited with {child.process.returncode}:\n{text[-2000:]}")
    return parse(text), usage.ru_utime + usage.ru_stime
