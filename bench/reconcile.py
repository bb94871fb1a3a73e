"""Benchmark one reconciliation of 100,000 accounts: wall time and peak memory.

Goals: a pass over 100,000 accounts in under 60 s, with peak memory under 300 MB; and the first
pass, which opens a case for each invalid account, at most 3 times as long as the second, in
the same run (a ratio, which a busy machine stretches less than the times themselves).

The fake Nylas API (``tests.fakes.nylas``) runs as a separate process on a loopback port with
``--accounts`` grants (or v2 accounts), every ``--invalid-every``-th of them invalid. This
process creates a fresh database (SQLite in a temporary directory, or a dedicated PostgreSQL
database with ``--database-url``), builds a ``NylasClient`` over ``httpx`` pointed at the fake,
and runs ``workflows.reconcile.reconcile`` twice:

1. on the empty database: every account is new; snapshots are stored and a case is opened
   for each invalid one;
2. again, with nothing changed at Nylas: a pure comparison.

After pass 1 it checks the ``accounts`` table holds every account and the open cases are
exactly the invalid ones; after pass 2 that nothing was found new, changed or gone.

Memory is this process's resident set: the peak from ``getrusage`` (the whole run, so it can
only grow from pass 1 to pass 2), the baseline before each pass, and the highest value
sampled during each pass.

    .venv/bin/python -m bench.reconcile [--accounts 100000] [--api-version v3|v2] [--json out.json]
    .venv/bin/python -m bench.reconcile --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test

Exit status: 0 when the run was sound, whether or not the goals hold; 1 when something broke
(reconcile raised, or the database does not hold what it should).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import logging
import pstats
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench._common import (
    REPO_ROOT,
    Child,
    add_database_url,
    cancel_on_sigterm,
    clean_env,
    first_line,
    machine,
    machine_line,
    peak_rss_mb,
    rss_mb,
    run_benchmark,
    say,
    verdict,
    write_json,
)
from storage.engine import create_engine, normalize_url, session_factory
from storage.migrate import upgrade
from workflows.clock import system_clock
from workflows.nylas import NylasClient
from workflows.reconcile import ReconcileReport, reconcile

GOAL_SECONDS = 60.0
GOAL_PEAK_MB = 300.0
GOAL_RATIO = 3.0  # pass 1 over pass 2
PROGRESS_EVERY = 10_000
PG_DATABASE = "reauthbot_bench"
# The fake's default credentials (tests/fakes/nylas.py), which the client must present.
FAKE_API_KEY, FAKE_CLIENT_ID, FAKE_CLIENT_SECRET = "nyk_test", "cid", "csecret"


class MemorySampler:
    """Samples this process's RSS in the background, for a per-pass peak (ru_maxrss cannot
    be reset between passes). Reconcile may hold the event loop for a while, so this can miss
    a short spike; the getrusage peak cannot."""

    def __init__(self, every: float = 0.05) -> None:
        self.every = every
        self.high = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.high = max(self.high, rss_mb())
            await asyncio.sleep(self.every)

    def reset(self) -> None:
        self.high = rss_mb()

    def __enter__(self) -> MemorySampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


class Progress:
    """Prints a line every PROGRESS_EVERY accounts; reconcile calls it after each page."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.perf_counter()
        self.next_at = PROGRESS_EVERY

    def __call__(self, report: ReconcileReport) -> None:
        if report.seen < self.next_at and not report.complete:
            return
        while self.next_at <= report.seen:
            self.next_at += PROGRESS_EVERY
        elapsed = time.perf_counter() - self.started
        say(
            f"  {self.label}: {report.seen:7,d} accounts  {elapsed:6.1f}s "
            f"({report.seen / max(elapsed, 1e-9):6,.0f}/s)  new {report.new:,}  "
            f"changed {report.changed:,}  opened {report.opened:,}  "
            f"RSS {rss_mb():.0f} MB (peak {peak_rss_mb():.0f} MB)"
        )


@asynccontextmanager
async def database(args: argparse.Namespace, tmp: Path) -> AsyncIterator[tuple[AsyncEngine, str]]:
    """A fresh, migrated database; a PostgreSQL one is created here and dropped at the end."""
    if not args.database_url:
        url: str | URL = f"sqlite+aiosqlite:///{tmp / 'bench.db'}"
        engine = create_engine(url)
        try:
            await upgrade(engine)
            yield engine, "SQLite (temporary file)"
        finally:
            await engine.dispose()
        return
    admin_url = normalize_url(args.database_url)
    if admin_url.get_backend_name() != "postgresql":
        raise SystemExit("--database-url must name a PostgreSQL server (SQLite is the default)")

    async def admin(sql: str) -> None:
        admin_engine = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
        try:
            async with admin_engine.connect() as conn:
                await conn.execute(text(sql))
        finally:
            await admin_engine.dispose()

    # The name is the benchmark's own, so a copy left by an interrupted run is dropped.
    await admin(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
    await admin(f'CREATE DATABASE "{PG_DATABASE}"')
    where = admin_url.set(database=PG_DATABASE)
    say(f"created database {where.render_as_string(hide_password=True)}")
    engine = create_engine(where)
    try:
        await upgrade(engine)
        yield engine, f"PostgreSQL ({where.render_as_string(hide_password=True)})"
    finally:
        await engine.dispose()
        await admin(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
        say(f"dropped database {PG_DATABASE}")


async def counts(engine: AsyncEngine) -> dict[str, int]:
    queries = {
        "accounts": "SELECT count(*) FROM accounts",
        "open_cases": "SELECT count(*) FROM cases WHERE status != 'resolved'",
        "cases": "SELECT count(*) FROM cases",
        "outbox": "SELECT count(*) FROM outbox",
    }
    found = {}
    async with engine.connect() as conn:
        for name, sql in queries.items():
            found[name] = int((await conn.execute(text(sql))).scalar_one())
    return found


async def one_pass(
    label: str,
    engine: AsyncEngine,
    nylas: NylasClient,
    sampler: MemorySampler,
    profile_to: Path | None,
) -> dict[str, Any]:
    sessions = session_factory(engine)
    baseline = rss_mb()
    sampler.reset()
    say(f"{label}: starting, RSS {baseline:.0f} MB")
    profiler = cProfile.Profile() if profile_to else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    report = await reconcile(
        sessions,
        nylas,
        clock=system_clock,
        route=lambda email: "log",
        progress=Progress(label),
    )
    if profiler:
        profiler.disable()
        assert profile_to is not None
        profiler.dump_stats(profile_to)
    elapsed = time.perf_counter() - started
    return {
        "seconds": round(elapsed, 2),
        "accounts_per_s": round(report.seen / elapsed),
        "rss_before_mb": round(baseline, 1),
        "rss_sampled_peak_mb": round(max(sampler.high, rss_mb()), 1),
        "process_peak_rss_mb": round(peak_rss_mb(), 1),
        "report": asdict(report),
    }


async def benchmark(args: argparse.Namespace, tmp: Path, children: list[Child]) -> dict[str, Any]:
    cancel_on_sigterm()
    population = "--grants" if args.api_version == "v3" else "--v2-accounts"
    say(f"starting the fake Nylas ({args.api_version}, {args.accounts:,} accounts)")
    fake = Child(
        "fake Nylas",
        [
            sys.executable,
            "-m",
            "tests.fakes.nylas",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            population,
            str(args.accounts),
            "--invalid-every",
            str(args.invalid_every),
        ],
        cwd=REPO_ROOT,  # tests is not installed; it is found from the repository root
        env=clean_env(tmp),
        log=tmp / "fake-nylas.log",
    )
    children.append(fake)
    base_url = await asyncio.to_thread(first_line, fake)
    say(f"fake Nylas at {base_url} (pid {fake.pid}, RSS {fake.rss_mb():.0f} MB)")
    invalid = args.accounts // args.invalid_every if args.invalid_every else 0
    result: dict[str, Any] = {"expected_invalid": invalid, "passes": {}, "checks": []}
    async with (
        database(args, tmp) as (engine, where),
        httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0)) as http,
    ):
        result["database"] = where
        say(f"database: {where}")
        nylas = NylasClient(
            http,
            api_version=args.api_version,
            base_url=base_url,
            api_key=FAKE_API_KEY,
            client_id=FAKE_CLIENT_ID,
            client_secret=FAKE_CLIENT_SECRET,
        )
        profile = Path(args.profile) if args.profile else None
        if profile:
            profile.mkdir(parents=True, exist_ok=True)
        with MemorySampler() as sampler:
            for n, label in ((1, "pass 1 (empty database)"), (2, "pass 2 (no changes)")):
                figures = await one_pass(
                    label, engine, nylas, sampler, profile / f"pass{n}.prof" if profile else None
                )
                figures["label"] = label
                figures["tables"] = await counts(engine)
                result["passes"][f"pass{n}"] = figures
                report, tables = figures["report"], figures["tables"]
                say(
                    f"{label}: {figures['seconds']:.1f}s, {report['seen']:,} seen, "
                    f"{report['new']:,} new, {report['changed']:,} changed, "
                    f"{report['opened']:,} opened; tables {tables}"
                )
                result["checks"] += check(n, report, tables, args.accounts, invalid)
    return result


def check(
    n: int, report: dict[str, Any], tables: dict[str, int], accounts: int, invalid: int
) -> list[dict[str, Any]]:
    """What the database must hold after each pass."""
    expected: list[tuple[str, Any, Any]] = [
        (f"pass {n}: accounts seen", report["seen"], accounts),
        (f"pass {n}: listing complete", report["complete"], True),
        (f"pass {n}: accounts rows", tables["accounts"], accounts),
        (f"pass {n}: open cases = invalid accounts", tables["open_cases"], invalid),
    ]
    if n == 1:
        expected += [
            ("pass 1: new", report["new"], accounts),
            ("pass 1: cases opened", report["opened"], invalid),
        ]
    else:
        expected += [
            (f"pass {n}: new + changed + missing", report["new"] + report["changed"], 0),
            (f"pass {n}: gone", report["missing"], 0),
            (f"pass {n}: cases opened", report["opened"], 0),
        ]
    return [{"what": w, "got": got, "want": want, "ok": got == want} for w, got, want in expected]


def report_block(result: dict[str, Any], args: argparse.Namespace) -> None:
    p1, p2 = result["passes"]["pass1"], result["passes"]["pass2"]
    out = [
        "",
        "=" * 78,
        f"RESULTS: reconcile, {args.accounts:,} {args.api_version} accounts "
        f"(1 in {args.invalid_every} invalid) on {result['database']}",
        machine_line(result["machine"]),
        "=" * 78,
        f"  {'':34}{'pass 1 (empty db)':>20}{'pass 2 (no change)':>20}",
    ]
    rows = [
        ("wall time (s)", "seconds", ".1f"),
        ("accounts/s", "accounts_per_s", ",.0f"),
        ("RSS before the pass (MB)", "rss_before_mb", ".0f"),
        ("highest RSS sampled in pass (MB)", "rss_sampled_peak_mb", ".0f"),
        ("process peak RSS so far (MB)", "process_peak_rss_mb", ".0f"),
    ]
    for label, key, fmt in rows:
        out.append(f"  {label:34}{format(p1[key], fmt):>20}{format(p2[key], fmt):>20}")
    for key in ("new", "changed", "missing", "opened", "resolved"):
        out.append(f"  {key:34}{p1['report'][key]:>20,}{p2['report'][key]:>20,}")
    out.append(
        f"  {'accounts rows / open cases':34}"
        f"{'{accounts:,} / {open_cases:,}'.format(**p1['tables']):>20}"
        f"{'{accounts:,} / {open_cases:,}'.format(**p2['tables']):>20}"
    )
    goals = result["goals"]
    out += [
        "",
        "goals (each pass):",
        f"  under {GOAL_SECONDS:g} s: {verdict(goals['time_ok'])} "
        f"(pass 1 {p1['seconds']:.1f} s, pass 2 {p2['seconds']:.1f} s)",
        f"  pass 1 at most {GOAL_RATIO:g} x pass 2: {verdict(goals['ratio_ok'])} "
        f"({goals['ratio']:.1f} x)",
        f"  peak RSS under {GOAL_PEAK_MB:g} MB: {verdict(goals['memory_ok'])} "
        f"(process peak {goals['peak_rss_mb']:.0f} MB)",
        "checks: " + ("all OK" if result["sound"] else "FAILED"),
    ]
    out += [
        f"  - {c['what']}: got {c['got']}, want {c['want']}"
        for c in result["checks"]
        if not c["ok"]
    ]
    out.append("=" * 78)
    print("\n".join(out), flush=True)


def print_profiles(directory: str, top: int = 25) -> None:
    for n in (1, 2):
        path = Path(directory) / f"pass{n}.prof"
        print(f"--- pass {n} profile, top {top} by own time ({path}) ---")
        pstats.Stats(str(path)).sort_stats("tottime").print_stats(top)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.reconcile",
        description="Time two reconciliation passes (empty database, then no changes) over "
        "the fake Nylas API and report the peak memory of this process.",
    )
    parser.add_argument("--accounts", type=int, default=100_000, help="accounts (100000)")
    parser.add_argument("--api-version", choices=("v3", "v2"), default="v3", help="(v3)")
    parser.add_argument(
        "--invalid-every", type=int, default=100, help="every Nth account is invalid (100)"
    )
    add_database_url(parser, PG_DATABASE)
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="profile each pass with cProfile into DIR/pass1.prof and DIR/pass2.prof and print "
        "the top functions (the times are then slower than normal)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.accounts < 1 or args.invalid_every < 0:
        raise SystemExit("--accounts must be positive and --invalid-every not negative")
    # Reconcile logs every case it opens at INFO; a thousand lines would drown the progress.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = run_benchmark(benchmark, args)
    if isinstance(result, int):
        return result
    info = machine()
    passes = result["passes"].values()
    # ru_maxrss is updated lazily by the kernel and can lag a sampled value by a little.
    peak = max(max(p["process_peak_rss_mb"], p["rss_sampled_peak_mb"]) for p in passes)
    result["machine"] = info
    result["settings"] = {
        "accounts": args.accounts,
        "api_version": args.api_version,
        "invalid_every": args.invalid_every,
    }
    first, second = (result["passes"][f"pass{n}"]["seconds"] for n in (1, 2))
    ratio = first / second if second else float("inf")
    result["goals"] = {
        "time_ok": all(p["seconds"] < GOAL_SECONDS for p in passes),
        "ratio": round(ratio, 2),
        "ratio_ok": ratio <= GOAL_RATIO,
        "memory_ok": peak < GOAL_PEAK_MB,
        "peak_rss_mb": peak,
    }
    result["sound"] = all(c["ok"] for c in result["checks"])
    report_block(result, args)
    write_json(args.json, result)
    if args.profile:
        print_profiles(args.profile)
    return 0 if result["sound"] else 1


if __name__ == "__main__":
    sys.exit(main())
