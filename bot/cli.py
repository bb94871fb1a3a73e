"""The ``reauthbot`` command line.

Every failure an operator can cause (bad configuration, unreachable database, a busy port)
ends with one line on stderr and a non-zero exit code, never a traceback: 2 for configuration
and usage (what argparse also uses), 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import re
import socket
import sys
import uuid
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import httpx

from bot import cli_case, logs, mute_cli, render
from bot.app import build_nylas, create_app, nylas_http, run
from bot.card import case_card, incident_card
from bot.cli_check import cmd_check
from bot.cli_support import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    CommandError,
    UsageError,
    database_error,
    existing_engine,
    masked_url,
    migrated_sessions,
)
from bot.settings import ConfigError, Settings, load_settings
from bot.slack.blocks import alert_blocks
from bot.slack.incidents import incident_blocks
from storage import cases as case_queries
from storage import incidents as incident_queries
from storage import links as link_queries
from storage.engine import create_engine
from storage.migrate import (
    current_revision,
    describe,
    downgrade,
    head_revision,
    revisions,
    upgrade,
)
from storage.models import ApiVersion
from workflows.clock import system_clock
from workflows.nylas import NylasError, samples, webhooks
from workflows.reconcile import ReconcileReport, reconcile
from workflows.routing import make_router

log = logging.getLogger("reauthbot.cli")

# --- commands ---------------------------------------------------------------------------------


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    settings.require_slack()
    # Before anything is built or logged: a busy port is then the only thing said.
    _check_port_free(settings.host, settings.port)
    if not settings.nylas_configured:
        log.warning(
            "Nylas credentials are not set: account polling and account actions are off",
            extra={"api_version": settings.nylas_api_version},
        )
    app = create_app(settings)
    try:
        run(
            app,
            host=settings.host,
            port=settings.port,
            print=lambda text: log.info(
                "listening", extra={"url": f"http://{settings.host}:{settings.port}"}
            ),
        )
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        # Taken since the first look, or the metrics listener's address: name the one refused.
        found = re.search(r"\('([^']*)', (\d+)", str(exc))
        host, port = (found[1], found[2]) if found else (settings.host, settings.port)
        raise _port_in_use(host, port) from None
    log.info("stopped")
    return 0


def _port_in_use(host: str, port: object) -> CommandError:
    message = f"cannot listen on {host}:{port}: address already in use"
    return CommandError(message, exit_code=EXIT_CONFIG)


def _check_port_free(host: str, port: int) -> None:
    """Refuse to start when something already listens on the address serve would take."""
    try:
        probe = socket.create_server((host, port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise _port_in_use(host, port) from None
        return  # anything else is for the server itself to report
    probe.close()


async def cmd_db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    engine = create_engine(settings.database_url)
    try:
        before = await current_revision(engine)
        await upgrade(engine)
    except Exception as exc:
        raise database_error(settings, exc) from None
    finally:
        await engine.dispose()
    if before == head_revision():
        print(f"database already at {head_revision()}")
    else:
        print(f"database upgraded from {before or 'empty'} to {head_revision()}")
    return 0


async def cmd_db_downgrade(settings: Settings, args: argparse.Namespace) -> int:
    """Take the schema back to an earlier revision, for a rollback to the version it belongs to."""
    shipped = revisions()
    if args.revision not in shipped:
        raise UsageError(f"{args.revision!r} is not a revision; they are {', '.join(shipped)}")
    async with existing_engine(settings) as engine:
        try:
            before = await current_revision(engine)
        except Exception as exc:
            raise database_error(settings, exc) from None
        if before is None:
            raise CommandError("the database is empty: there is nothing to downgrade")
        if before not in shipped:
            raise CommandError(
                f"the database is at {before}, which this version of reauthbot does not know; "
                "downgrade it with the version that upgraded it"
            )
        if before == args.revision:
            print(f"database already at {before}")
            return 0
        if shipped.index(args.revision) > shipped.index(before):
            raise UsageError(
                f"{args.revision} is newer than the database's {before}: use `reauthbot db upgrade`"
            )
        undone = shipped[shipped.index(args.revision) + 1 : shipped.index(before) + 1]
        plan = "\n".join(f"  {r}  {describe(r)}" for r in reversed(undone))
        if not args.yes:
            print(
                f"going back from {before} to {args.revision} undoes:\n{plan}\n"
                "What those tables and columns hold is lost. Run again with --yes to do it.",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        try:
            await downgrade(engine, args.revision)
        except Exception as exc:
            raise database_error(settings, exc) from None
    print(f"database downgraded from {before} to {args.revision}; undone:\n{plan}")
    return 0


async def cmd_poll(settings: Settings, args: argparse.Namespace) -> int:
    settings.require_nylas()
    route = make_router(settings.policy.routing.domains, settings.alert_channel)

    def progress(report: ReconcileReport) -> None:
        print(f"... {report.seen} accounts checked", file=sys.stderr, flush=True)

    try:
        async with migrated_sessions(settings) as sessions, nylas_http() as http:
            nylas = build_nylas(settings, http)
            report = await reconcile(
                sessions,
                nylas,
                clock=system_clock,
                route=route,
                progress=progress,
                storms=settings.policy.storms,
            )
    except NylasError as exc:
        raise CommandError(f"reconciliation stopped: {exc}") from None
    print(report.summary())
    return 0


async def cmd_trigger(settings: Settings, args: argparse.Namespace) -> int:
    try:
        version = samples.api_version_of(args.event)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if version == ApiVersion.V2 and (args.email or args.provider):
        raise UsageError("--email and --provider are for v3 grant.* triggers only")
    if args.reauth and args.event != "grant.updated":
        raise UsageError("--reauth is for grant.updated only")
    now = system_clock()
    secret = settings.webhook_secrets().get(version)
    if secret is None:
        variable = "NYLAS_WEBHOOK_SECRET" if version == ApiVersion.V3 else "NYLAS_CLIENT_SECRET"
        raise ConfigError(variable, f"is needed to sign a sample {version} delivery")
    if version not in settings.webhook_versions():
        raise ConfigError(
            "NYLAS_ACCEPT_V2_WEBHOOKS",
            "is false, so the service refuses v2 deliveries in v3 mode; set it to true to send one",
        )
    account = args.account or f"sample-{uuid.uuid4().hex[:12]}"
    if version == ApiVersion.V3:
        # Only what was asked for: an email or provider left out keeps what the service knows.
        payload = samples.v3_notification(
            args.event,
            grant_id=account,
            email=args.email,
            at=now,
            provider=args.provider,
            reauthenticated=args.reauth,
        )
    else:
        payload = samples.v2_delivery(args.event, account_id=account, at=now)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = args.url or f"http://{host}:{settings.port}/nylas/webhook"
    print(_trigger_summary(args, version, account, url), flush=True)
    raw = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if args.gzip:
        raw = webhooks.compress(raw)
        headers["Content-Encoding"] = "gzip"
    headers["X-Nylas-Signature"] = webhooks.sign(secret, raw)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(url, content=raw, headers=headers)
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise CommandError(f"cannot reach {url}: {reason}; is the service running?") from None
    print(f"{response.status_code} {response.text.strip()}")
    return 0 if response.is_success else EXIT_FAILURE


def _trigger_summary(args: argparse.Namespace, version: str, account: str, url: str) -> str:
    """What the sample delivery carries, said before it is sent."""
    new = "" if args.account else " (a new random id)"
    if version == ApiVersion.V2:
        kept = "not sent: v2 deliveries carry only the account id"
        email = provider = kept
    else:
        kept = "not sent: the service keeps what it knows"
        email = args.email or kept
        provider = args.provider or kept
    lines = [
        f"sending {args.event} ({version}{', gzip' if args.gzip else ''}) to {url}",
        f"  account   {account}{new}",
        f"  email     {email}",
        f"  provider  {provider}",
    ]
    if args.event == "grant.updated":
        lines.append(f"  re-authentication  {'yes' if args.reauth else 'no'}")
    return "\n".join(lines)


async def cmd_preview(settings: Settings, args: argparse.Namespace) -> int:
    """Print a case's or an incident's card as the alert channel would show it now."""
    revoke_enabled = settings.policy.permissions.revoke is not None
    outreach = settings.outreach_channel
    async with migrated_sessions(settings) as sessions, sessions() as session:
        if args.incident is not None:
            view = await incident_queries.view(session, incident_id=args.incident)
            if view is None:
                raise CommandError(f"no incident #{args.incident} in {_where(settings)}")
            lines = render.incident_lines(incident_card(view, outreach=outreach))
            slack_blocks = incident_blocks(view, outreach=outreach) if args.blocks else None
        else:
            case = await case_queries.get_case(session, case_id=args.case)
            account = (
                await case_queries.get_account(session, account_id=case.account_id)
                if case is not None
                else None
            )
            if case is None or account is None:
                raise CommandError(f"no case #{args.case} in {_where(settings)}")
            link = await link_queries.latest(session, case_id=args.case)
            options: dict[str, Any] = {
                "revoke_enabled": revoke_enabled,
                "outreach": outreach,
                "link": link,
            }
            lines = render.card_lines(case_card(case, account, **options))
            slack_blocks = alert_blocks(case, account, **options) if args.blocks else None
    if slack_blocks is not None:
        print(json.dumps({"blocks": slack_blocks}, indent=2, ensure_ascii=False))
    else:
        print("\n".join(lines))
    return 0


def case_number(raw: str) -> int:
    """A case or incident number as an operator types it: ``12`` or ``#12``."""
    try:
        number = int(raw.removeprefix("#"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number, e.g. 12") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number from 1 up")
    return number


def _where(settings: Settings) -> str:
    return f"the database at {masked_url(settings)}"


# --- entry point ------------------------------------------------------------------------------


def package_version() -> str:
    """This installation's version, from the package metadata."""
    try:
        return version("reauthbot")
    except PackageNotFoundError:
        return "unknown (not installed)"


class _Parser(argparse.ArgumentParser):
    """Every command and sub-command takes --version, wherever it is typed."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--version", action="version", version=f"reauthbot {package_version()}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="reauthbot",
        description="Slack chat-ops for Nylas accounts that need re-authentication.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the service (migrates the database first)")
    serve.set_defaults(run=cmd_serve)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    db_sub.add_parser("upgrade", help="apply the database migrations").set_defaults(
        run=cmd_db_upgrade
    )
    back = db_sub.add_parser(
        "downgrade",
        help="take the schema back to an earlier revision (to roll back to an older version)",
        description="Undo the migrations after REVISION, dropping their tables and columns. "
        "Without --yes it only says what it would undo.",
    )
    back.add_argument("revision", metavar="REVISION", help="the revision to go back to, e.g. 0011")
    back.add_argument("--yes", action="store_true", help="do it (what is undone is lost)")
    back.set_defaults(run=cmd_db_downgrade)

    cli_case.add_parsers(sub)

    check = sub.add_parser("check", help="validate the configuration and reach the database")
    check.set_defaults(run=cmd_check)

    poll = sub.add_parser("poll", help="run one reconciliation pass against the Nylas API")
    poll.set_defaults(run=cmd_poll)

    trigger = sub.add_parser(
        "trigger",
        help="send a signed sample webhook delivery to a running service",
        description="Send a correctly signed sample Nylas delivery, e.g. "
        "`reauthbot trigger grant.expired --email ana@example.com`.",
    )
    trigger.add_argument("event", metavar="EVENT", help=", ".join(samples.TRIGGERS))
    trigger.add_argument(
        "--email", help="email of a v3 grant (default: none sent; the service keeps its own)"
    )
    trigger.add_argument("--account", help="account or grant id (default: a new random one)")
    trigger.add_argument(
        "--provider", help="provider of a v3 grant (default: none sent; the service keeps its own)"
    )
    trigger.add_argument(
        "--reauth", action="store_true", help="grant.updated: mark it a re-authentication"
    )
    trigger.add_argument("--gzip", action="store_true", help="send it gzip-compressed")
    trigger.add_argument("--url", help="webhook URL (default: this host's PORT)")
    trigger.set_defaults(run=cmd_trigger)

    mute_cli.add_parsers(sub)

    preview = sub.add_parser(
        "preview",
        help="print a case's alert (or an incident's) as the alert channel would show it",
        description="Print the card of a case, or of an incident with --incident, as text: "
        "the same header, facts, advice and actions as its Slack message. Reads the database; "
        "changes nothing.",
    )
    preview.add_argument("case", metavar="CASE", nargs="?", type=case_number, help="case number")
    preview.add_argument(
        "--incident", metavar="N", type=case_number, help="an incident's number instead"
    )
    preview.add_argument("--blocks", action="store_true", help="print the Slack blocks as JSON")
    preview.set_defaults(run=cmd_preview, parser=preview)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "preview" and (args.case is None) == (args.incident is None):
        args.parser.error("give a CASE number or --incident N (one of them)")
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"reauthbot: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logs.configure(fmt=settings.log_format, level=settings.log_level, secrets=settings.secrets())
    try:
        result = args.run(settings, args)
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        return int(result)
    except ConfigError as exc:
        print(f"reauthbot: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except CommandError as exc:
        print(f"reauthbot: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
