"""``reauthbot cases`` and ``reauthbot case show|ack|resolve|snooze CASE``: an operator's
view of the cases, and the actions the Slack buttons offer, from a terminal.

The actions go through the same workflows as the buttons (``workflows.actions``): the same
audit rows, with the actor ``cli:<login>`` (or ``--as NAME``), and the same queued update of
the case's Slack message, which the running service sends. Whoever can run the command can
open the database, so Slack's permission policy does not apply here.
"""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Sequence
from typing import Any

from bot.cli_support import CommandError, UsageError, migrated_sessions
from bot.render import alert_text, inline, when
from bot.settings import Settings
from storage import actors
from storage import cases as case_queries
from storage.models import Account, Case, CaseKind, CaseStatus, domain_of
from workflows import actions
from workflows.clock import system_clock
from workflows.snoozes import SNOOZE_CHOICES
from workflows.subject import ActionOutcome, ActionResult

COLUMNS = ["case", "account", "email", "kind", "state", "incident", "opened", "status"]
# An actor is stored in 128 characters; "cli:" takes four.
_MAX_NAME = 100


def _matches(args: argparse.Namespace, case: Case, account: Account) -> bool:
    if args.kind and case.kind != args.kind:
        return False
    if args.status and case.status != args.status:
        return False
    if args.incident is not None and case.incident_id != args.incident:
        return False
    if args.domain and domain_of(account.email) != args.domain.lower():
        return False
    return not (args.provider and (account.provider or "").lower() != args.provider.lower())


async def cmd_cases(settings: Settings, args: argparse.Namespace) -> int:
    async with migrated_sessions(settings) as sessions, sessions() as session:
        rows = await case_queries.list_open_cases(session)
    records = [
        {
            "case": case.id,
            "account": account.id,
            "email": account.email,
            "state": case.state,
            "kind": case.kind,
            "incident": case.incident_id,
            "opened": when(case.opened_at),
            "status": case.status,
        }
        for case, account in rows
        if _matches(args, case, account)
    ]
    if args.json:
        print(json.dumps(records, indent=2, ensure_ascii=False))
    elif not records:
        print("no open cases" + (" match" if _filtered(args) else ""))
    else:
        print(format_table(COLUMNS, records))
    return 0


def _filtered(args: argparse.Namespace) -> bool:
    return any((args.kind, args.status, args.incident is not None, args.domain, args.provider))


def format_table(columns: Sequence[str], records: Sequence[dict[str, Any]]) -> str:
    """Align columns to their widest value; nothing is ever truncated."""
    cells = [[("-" if r[c] is None else inline(str(r[c]))) for c in columns] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    rows = [[c.upper() for c in columns], *cells]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def login() -> str:
    """The operating-system user running the command."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name in the environment nor the password database
        return "unknown"


def operator(args: argparse.Namespace) -> str:
    """The actor of the person at the terminal: ``cli:<login>``, or ``cli:<--as NAME>``."""
    name = args.actor if args.actor is not None else login()
    if not name or len(name) > _MAX_NAME or not name.isprintable() or name != name.strip():
        raise UsageError(f"--as takes a name of 1 to {_MAX_NAME} printable characters")
    return actors.cli(name)


async def cmd_case_show(settings: Settings, args: argparse.Namespace) -> int:
    async with migrated_sessions(settings) as sessions, sessions() as session:
        case = await case_queries.get_case(session, case_id=args.case)
        account = None
        if case is not None:
            account = await case_queries.get_account(session, account_id=case.account_id)
    if case is None or account is None:
        raise CommandError(f"case #{args.case} does not exist")
    print(alert_text(case, account))
    print(f"kind {case.kind}; incident {'#' + str(case.incident_id) if case.incident_id else '-'}")
    if case.acknowledged_by:
        print(f"acknowledged by {inline(case.acknowledged_by)} at {when(case.acknowledged_at)}")
    if case.status == CaseStatus.SNOOZED:
        print(f"snoozed until {when(case.snoozed_until)}")
    if case.resolved_by:
        print(f"resolved by {inline(case.resolved_by)} at {when(case.resolved_at)}")
    return 0


async def _act(settings: Settings, args: argparse.Namespace, action: str) -> int:
    actor = operator(args)
    now = system_clock()
    async with migrated_sessions(settings) as sessions:
        if action == "ack":
            done = await actions.acknowledge(sessions, case_id=args.case, actor=actor, now=now)
        elif action == "snooze":
            done = await actions.snooze(
                sessions, case_id=args.case, actor=actor, now=now, duration=args.duration
            )
        else:
            done = await actions.resolve(
                sessions, case_id=args.case, actor=actor, now=now, note=args.note or ""
            )
    return _told(done)


def _told(done: ActionResult) -> int:
    """Say what the action did: done or already done on stdout, anything else as an error."""
    if done.outcome in (ActionOutcome.DONE, ActionOutcome.ALREADY):
        print(inline(str(done.message)))
        return 0
    raise CommandError(inline(done.message))


async def cmd_case_ack(settings: Settings, args: argparse.Namespace) -> int:
    return await _act(settings, args, "ack")


async def cmd_case_snooze(settings: Settings, args: argparse.Namespace) -> int:
    return await _act(settings, args, "snooze")


async def cmd_case_resolve(settings: Settings, args: argparse.Namespace) -> int:
    return await _act(settings, args, "resolve")


def add_parsers(sub: Any) -> None:
    """Add ``cases`` and ``case …`` to the command line."""
    cases = sub.add_parser(
        "cases",
        help="list open cases",
        description="List the open cases, oldest first; the filters combine.",
    )
    cases.add_argument("--json", action="store_true", help="print JSON for scripts")
    cases.add_argument("--kind", choices=list(CaseKind), help="only cases of this kind")
    cases.add_argument(
        "--status",
        choices=[s for s in CaseStatus if s != CaseStatus.RESOLVED],
        help="only cases in this status",
    )
    cases.add_argument("--incident", type=int, metavar="ID", help="only cases of this incident")
    cases.add_argument("--domain", help="only accounts whose email is at this domain")
    cases.add_argument("--provider", help="only accounts of this provider (google, microsoft…)")
    cases.set_defaults(run=cmd_cases)

    case = sub.add_parser(
        "case",
        help="show or act on one case, as the Slack buttons do",
        description="Act on a case as the Slack buttons do: the same audit (actor "
        "cli:<login>) and the same update of its Slack message, sent by the running service.",
    )
    actions_sub = case.add_subparsers(dest="case_command", required=True, metavar="ACTION")

    def action(name: str, help: str, run: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions_sub.add_parser(name, help=help)
        parser.add_argument("case", type=int, metavar="CASE", help="the case number")
        if name != "show":
            parser.add_argument(
                "--as", dest="actor", metavar="NAME", help="who acts (default: your login name)"
            )
        parser.set_defaults(run=run)
        return parser

    action("show", "print the case", cmd_case_show)
    action("ack", "acknowledge the case: escalation stops", cmd_case_ack)
    snooze = action("snooze", "silence the case and its escalation for a while", cmd_case_snooze)
    snooze.add_argument(
        "--for", dest="duration", required=True, choices=list(SNOOZE_CHOICES), help="how long"
    )
    resolve = action("resolve", "close the case by hand", cmd_case_resolve)
    resolve.add_argument("--note", help="why it is resolved (kept as its resolution)")
