"""Benchmark the fault scenarios, long: real minutes of crashes and outages, then the checks.

The test suite runs each scenario in seconds (``tests/faults/``); here each lasts minutes, at
the scale and pace of production, and says how long recovery took. Every scenario starts
``reauthbot serve`` (``tests.cli.service``) against the fakes of ``tests/fakes/`` running in
this process, on a fresh SQLite database in a temporary directory, or with ``--database-url``
a PostgreSQL database of its own (created for the scenario and dropped after it).

- ``sigkill`` (``bench.faults_sigkill``): a storm of a few thousand signed webhooks; the
  service is SIGKILLed three times and restarted on the same database.
- ``slack-outage`` (``bench.faults_slack_outage``): Slack answers 5xx for minutes, then 429
  with Retry-After for minutes, while cases open and change.
- ``nylas-down`` (``bench.faults_nylas_down``): Nylas fails, part-way then wholly, then stops
  answering, during reconciliation passes, operator actions and v2 webhooks.
- ``database-down`` (``bench.faults_database_down``, PostgreSQL only): the database refuses
  connections, then stops answering, while webhooks keep arriving.

Each scenario checks what must hold (nothing lost, nothing twice, nothing concluded from what
could not be read, the operator told) and reports its figures. Progress goes to stderr; a
results block per scenario, as soon as it ends, goes to stdout.

    .venv/bin/python -m bench.faults                      # every scenario, long (about 30 min)
    .venv/bin/python -m bench.faults --quick              # each in well under a minute
    .venv/bin/python -m bench.faults --scenario sigkill slack-outage
    .venv/bin/python -m bench.faults --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test

Exit status: 0 when every check of every scenario that ran held; 1 when one failed or a
scenario could not run to its end; 130 when interrupted. ``database-down`` without
``--database-url`` is skipped (and said so), unless asked for by name, which is an error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import (
    faults_database_down,
    faults_nylas_down,
    faults_sigkill,
    faults_slack_outage,
)
from bench._common import (
    Child,
    add_database_url,
    cancel_on_sigterm,
    changed_files,
    command_line,
    machine,
    machine_cpu,
    machine_line,
    progress_to,
    run_benchmark,
    say,
    scratch_database,
    verdict,
    write_json,
)
from bench._faults import Context, LoopLag, Outcome

MODULES: tuple[ModuleType, ...] = (
    faults_sigkill,
    faults_slack_outage,
    faults_nylas_down,
    faults_database_down,
)
SCENARIOS = {m.NAME: m for m in MODULES}
PG_DATABASE = "reauthbot_bench_faults"
RULE = "=" * 78


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.faults",
        description="Run the fault scenarios for minutes each (SIGKILL in a storm, Slack, "
        "Nylas and the database away), check that nothing is lost or done twice, and time "
        "the recovery.",
    )
    parser.add_argument(
        "--scenario",
        action="extend",
        nargs="+",
        choices=list(SCENARIOS),
        metavar="NAME",
        help=f"run only these ({', '.join(SCENARIOS)}); default: all, in that order",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: each scenario in well under a minute (shorter outages, fewer "
        "deliveries; nylas-down without its no-answer phase)",
    )
    parser.add_argument(
        "--outage",
        type=float,
        metavar="SECONDS",
        help="the length of every outage phase, instead of the profile's",
    )
    add_database_url(parser, PG_DATABASE, lifetime="after each scenario (database-down needs it)")
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return parser


async def benchmark(args: argparse.Namespace, tmp: Path, children: list[Child]) -> dict[str, Any]:
    cancel_on_sigterm()
    outcomes = []
    for name in args.scenario:
        module = SCENARIOS[name]
        workdir = tmp / name
        workdir.mkdir()
        if module.NEEDS_POSTGRES and not args.database_url:
            outcome = Outcome(name, "-", skipped="needs --database-url (a PostgreSQL server)")
            say(f"== {name}: skipped, {outcome.skipped}")
        else:
            outcome = await run_one(module, args, workdir)
        print("\n".join(block(outcome, args)), flush=True)
        outcomes.append(outcome)
    return {"scenarios": [o.as_dict() for o in outcomes]}


async def run_one(module: ModuleType, args: argparse.Namespace, workdir: Path) -> Outcome:
    say(f"== {module.NAME}: {module.SUMMARY}")
    began, cpu0 = time.perf_counter(), machine_cpu()
    async with scratch_database(
        args.database_url, workdir, name=PG_DATABASE, sqlite_file="faults.db"
    ) as db:
        ctx = Context(quick=args.quick, db=db, tmp=workdir, outage=args.outage)
        lag = LoopLag()
        try:
            async with lag:
                outcome: Outcome = await module.run(ctx)
        except Exception as exc:
            say(f"{module.NAME} could not run to its end:\n{traceback.format_exc()}")
            tail = "\n".join(log_lines_tail(ctx.log))
            if tail:
                say(f"--- service log tail ---\n{tail}")
            outcome = Outcome(module.NAME, db.label)
            outcome.expect_that(
                "the scenario ran to its end", False, f"{type(exc).__name__}: {exc}", "yes"
            )
    wall = time.perf_counter() - began
    busy = (machine_cpu() - cpu0) / max(wall * len(os.sched_getaffinity(0)), 1e-9)
    outcome.figures["wall_s"] = round(wall, 1)
    outcome.figures["machine_busy_share"] = round(busy, 2)
    outcome.figures["benchmark_loop_lag_max_s"] = round(lag.worst, 2)
    outcome.lines.append(
        f"took {wall:.0f} s; the machine's CPUs were {busy:.0%} busy meanwhile (every process: "
        "the service, this benchmark and its fakes, the database server, anything else); this "
        f"process's event loop (fakes, sender, checks) ran at most {lag.worst:.2f} s late"
    )
    say(f"== {module.NAME}: " + ("sound" if outcome.sound else "BROKEN") + f" ({wall:.0f} s)")
    return outcome


def log_lines_tail(log: Path, lines: int = 30) -> list[str]:
    if not log.exists():
        return []
    return log.read_text(errors="replace").splitlines()[-lines:]


def block(outcome: Outcome, args: argparse.Namespace) -> list[str]:
    """The results block of one scenario."""
    module = SCENARIOS[outcome.scenario]
    out = [
        "",
        RULE,
        f"RESULTS: {outcome.scenario}{' (quick)' if args.quick else ''}: {module.SUMMARY}; "
        f"on {outcome.database}",
        machine_line(args.machine),
        "command: " + args.command,
        *(["uncommitted: " + ", ".join(args.changed)] if args.changed else []),
        RULE,
    ]
    if outcome.skipped:
        return [*out, f"skipped: {outcome.skipped}", RULE]
    out += outcome.lines
    out.append("checks:")
    out += [
        f"  {verdict(c.ok)}  {c.what}: {c.got}" + ("" if c.ok else f" (want {c.want})")
        for c in outcome.checks
    ]
    out += [f"note: {note}" for note in outcome.notes]
    out += ["run: " + ("sound" if outcome.sound else "BROKEN"), RULE]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    asked = bool(args.scenario)
    args.scenario = list(dict.fromkeys(args.scenario or SCENARIOS))
    needing = [n for n in args.scenario if SCENARIOS[n].NEEDS_POSTGRES]
    if asked and needing and not args.database_url:
        raise SystemExit(f"--scenario {needing[0]} needs --database-url (a PostgreSQL server)")
    if args.outage is not None and args.outage <= 0:
        raise SystemExit("--outage must be a positive number of seconds")
    progress_to(sys.stderr)
    # Taken before the run: the service runs the code in the tree as it is when it starts.
    args.machine, args.changed = machine(), changed_files()
    args.command = command_line("bench.faults", argv)
    result = run_benchmark(benchmark, args)
    if isinstance(result, int):
        return result
    result |= {"machine": args.machine, "uncommitted_files": args.changed}
    result["command"] = args.command
    result["quick"] = args.quick
    summary = ", ".join(
        f"{s['scenario']} " + ("skipped" if s["skipped"] else "sound" if s["sound"] else "BROKEN")
        for s in result["scenarios"]
    )
    print(f"\nfaults: {summary}", flush=True)
    write_json(args.json, result)
    return 0 if all(s["sound"] or s["skipped"] for s in result["scenarios"]) else 1


if __name__ == "__main__":
    sys.exit(main())
