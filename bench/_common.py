"""Helpers shared by the benchmarks: child processes, the machine, memory, numbers, a scratch
database, the command line and output."""

from __future__ import annotations

import asyncio
import gc
import json
import math
import os
import platform
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from storage.engine import normalize_url

REPO_ROOT = Path(__file__).resolve().parent.parent
# Only these are passed on to child processes, so no Slack/Nylas setting of the caller's shell
# (or a .env it points at) can change the mode the service runs in.
_BASE_ENV_KEYS = ("PATH", "LANG", "LC_ALL", "TMPDIR")
_START = time.monotonic()
_progress: IO[str] | None = None  # where say() writes; None: standard output


def progress_to(stream: IO[str]) -> None:
    """Send the progress lines of say() to ``stream`` (e.g. stderr, to keep stdout for the
    results block)."""
    global _progress
    _progress = stream


def cancel_on_sigterm() -> None:
    """Make SIGTERM cancel the running benchmark as Ctrl-C does, so that the child processes
    and temporary files are cleaned up; call it from the benchmark's main coroutine."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Keep the load generator's own garbage collection out of what it measures.

    A full collection of the generator's heap pauses its event loop for 40-60 ms; answers
    that arrive meanwhile are timed late, for the bare server and the service alike. What
    exists beforehand is frozen out of the collector, and it does not run until the end.
    """
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def say(message: str) -> None:
    """Print one progress line, stamped with the seconds since the benchmark started."""
    print(f"[{time.monotonic() - _START:7.1f}s] {message}", file=_progress, flush=True)


def clean_env(home: Path, **values: str) -> dict[str, str]:
    env = {k: os.environ[k] for k in _BASE_ENV_KEYS if k in os.environ}
    env["HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(values)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET with the stdlib (used outside the measured load, where blocking is fine)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


class Child:
    """A child process whose output goes to a file (a pipe nobody reads would fill and block)."""

    def __init__(
        self, name: str, argv: Sequence[str], *, cwd: Path, env: dict[str, str], log: Path
    ) -> None:
        self.name = name
        self.log = log
        with log.open("w") as out:
            self.process = subprocess.Popen(
                list(argv), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cpu_seconds(self) -> float:
        """User + system CPU time the process has used so far (all its threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])  # utime, stime
        return ticks / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        return _status_kb(Path(f"/proc/{self.pid}/status"), "VmRSS") / 1024

    def wait_ready(self, url: str, *, within: float = 60.0) -> None:
        """Poll url until it answers 200; fail early if the process dies."""
        deadline = time.monotonic() + within
        last = "no answer"
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited early:\n{self.tail()}")
            try:
                status, body = http_get(url, timeout=2)
                if status == 200:
                    return
                last = f"{status} {body[:200]}"
            except OSError as exc:
                last = str(exc)
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {within:.0f}s ({last}):\n{self.tail()}")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, then SIGKILL if it does not stop in time; return the exit code."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def first_line(child: Child, *, within: float = 120.0) -> str:
    """Wait for the first line a child writes (e.g. the fake Nylas prints its URL)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not child.alive():
            raise RuntimeError(f"{child.name} exited early:\n{child.tail()}")
        text = child.log.read_text(errors="replace")
        if "\n" in text:
            return text.split("\n", 1)[0].strip()
        time.sleep(0.1)
    raise RuntimeError(f"{child.name} printed nothing within {within:.0f}s")


def _status_kb(path: Path, key: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def rss_mb() -> float:
    """Current resident memory of this process."""
    return _status_kb(Path("/proc/self/status"), "VmRSS") / 1024


def peak_rss_mb() -> float:
    """Peak resident memory of this process since it started (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine() -> dict[str, Any]:
    """What the figures were measured on, so they can be compared with later runs."""
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    try:
        revision = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        revision = ""
    return {
        "nproc": usable,
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": revision or "unknown",
    }


def machine_cpu() -> float:
    """CPU seconds used by every process of the machine so far (user, nice, system...)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    busy = sum(int(fields[i]) for i in (0, 1, 2, 5, 6))  # user, nice, system, irq, softirq
    return busy / os.sysconf("SC_CLK_TCK")


def changed_files() -> list[str]:
    """Files of the working tree that differ from the commit (git status), if git answers."""
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line[3:] for line in out.splitlines() if line.strip()]


def command_line(module: str, argv: Sequence[str]) -> str:
    """The command ``python -m module argv...`` as run from the repository root."""
    python = Path(sys.executable)
    inside = python.is_relative_to(REPO_ROOT)
    shown = str(python.relative_to(REPO_ROOT)) if inside else str(python)
    return shlex.join([shown, "-m", module, *argv])


def machine_line(info: dict[str, Any]) -> str:
    return (
        f"machine: {info['nproc']} CPUs ({info['cpu_model']}), Python {info['python']}, "
        f"{info['platform']}, reauthbot {info['git']}"
    )


@dataclass
class Db:
    service_url: str  # DATABASE_URL for the service
    probe_url: str  # read-only where possible
    label: str
    autovacuum: bool | None = None  # PostgreSQL's setting (None: SQLite)


@asynccontextmanager
async def scratch_database(
    database_url: str | None, tmp: Path, *, name: str, sqlite_file: str
) -> AsyncIterator[Db]:
    """SQLite ``sqlite_file`` in ``tmp``; or, with ``database_url`` (a PostgreSQL server), a
    database ``name`` of the benchmark's own there, dropped at the end."""
    if not database_url:
        path = tmp / sqlite_file
        yield Db(
            service_url=f"sqlite+aiosqlite:///{path}",
            probe_url=f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true",
            label="SQLite (temporary file)",
        )
        return
    admin_url = normalize_url(database_url)
    if admin_url.get_backend_name() != "postgresql":
        raise SystemExit("--database-url must name a PostgreSQL server (SQLite is the default)")

    async def admin(sql: str) -> Any:
        """Run one statement on the server's own database; return the first value, if any."""
        engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                result = await conn.execute(text(sql))
                return result.scalar() if result.returns_rows else None
        finally:
            await engine.dispose()

    # The name is the benchmark's own, so a copy left by an interrupted run is dropped.
    await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin(f'CREATE DATABASE "{name}"')
    autovacuum = await admin("SHOW autovacuum") == "on"
    where = admin_url.set(database=name)
    shown = where.render_as_string(hide_password=True)
    say(f"created database {shown}")
    url = where.render_as_string(hide_password=False)
    try:
        yield Db(url, url, f"PostgreSQL ({shown})", autovacuum=autovacuum)
    finally:
        await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        say(f"dropped database {name}")


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (0 when empty)."""
    if not ordered:
        return 0.0
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def run_verdict(broken: Sequence[str]) -> list[str]:
    """The closing lines of a results block: sound, or BROKEN and why."""
    return ["run: " + ("BROKEN" if broken else "sound"), *(f"  - {line}" for line in broken)]


def add_database_url(parser: Any, database: str, *, lifetime: str = "at the end") -> None:
    """The ``--database-url`` option: a PostgreSQL server instead of SQLite."""
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="a PostgreSQL server to use instead of SQLite, e.g. "
        "postgresql+asyncpg://postgres@127.0.0.1:5432/test; a database "
        f"{database!r} is created there and dropped {lifetime}",
    )


def write_json(path: str | None, data: dict[str, Any], out: IO[str] = sys.stdout) -> None:
    if not path:
        return
    Path(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    print(f"figures written to {path}", file=out, flush=True)


Benchmark = Callable[[Any, Path, list[Child]], Coroutine[Any, Any, dict[str, Any]]]


def run_benchmark(benchmark: Benchmark, args: Any) -> dict[str, Any] | int:
    """Run ``benchmark`` in a temporary directory and always stop the processes it started.

    Returns its result, or the exit code to use when it was interrupted (130) or broke (1).
    """
    say(machine_line(machine()))
    tmp = Path(tempfile.mkdtemp(prefix="reauthbot-bench-"))
    children: list[Child] = []
    try:
        return asyncio.run(benchmark(args, tmp, children))
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("interrupted; stopped")
        return 130
    except Exception as exc:
        say(f"benchmark failed: {type(exc).__name__}: {exc}")
        for child in children:
            say(f"--- {child.name} log tail ---\n{child.tail()}")
        return 1
    finally:
        for child in children:
            code = child.stop()
            if code not in (0, -15, None):
                say(f"{child.name} exited with {code}:\n{child.tail()}")
        # Each was stopped by its pid and waited for; a pid still in /proc is one that was not.
        left = [f"{c.name} (pid {c.pid})" for c in children if Path(f"/proc/{c.pid}").exists()]
        if left:
            say("still running after the stop: " + ", ".join(left))
        if getattr(args, "keep", False):
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
