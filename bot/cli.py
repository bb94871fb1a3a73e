"""The ``reauthbot`` command line.

Every failure an operator can cause (bad configuration, unreachable database) ends with one
line on stderr and a non-zero exit code, never a traceback: 2 for configuration, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from bot import logs, render
from bot.app import build_nylas, create_app, nylas_http, run
from bot.card import case_card, incident_card
from bot.render import when
from bot.settings import ConfigError, Settings, load_settings
from bot.slack.blocks import alert_blocks
from bot.slack.incidents import incident_blocks
from storage import cases as case_queries
from storage import incidents as incident_queries
from storage import links as link_queries
from storage.engine import create_engine, normalize_url, session_factory
from storage.migrate import current_revision, head_revision, upgrade
from storage.models import ApiVersion
from workflows.clock import how_long, system_clock
from workflows.nylas import NylasError, WebhookDestination, samples, webhooks
from workflows.reconcile import ReconcileReport, reconcile
from workflows.routing import make_router
from workflows.webhook_watch import watches

log = logging.getLogger("reauthbot.cli")

EXIT_FAILURE = 1
EXIT_CONFIG = 2


class CommandError(Exception):
    """A command could not do its work; the message is one line for the operator."""


def _database_error(settings: Settings, exc: BaseException) -> CommandError:
    where = normalize_url(settings.database_url).render_as_string(hide_password=True)
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CommandError(f"cannot use the database at {where}: {reason}")


@asynccontextmanager
async def migrated_sessions(settings: Settings) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """Open the database for a command; any database failure becomes one CommandError line."""
    engine = create_engine(settings.database_url)
    try:
        if await current_revision(engine) != head_revision():
            raise CommandError("the database is not migrated; run `reauthbot db upgrade` first")
        yield session_factory(engine)
    except (CommandError, NylasError):
        raise
    except Exception as exc:
        raise _database_error(settings, exc) from None
    finally:
        await engine.dispose()


# --- commands ---------------------------------------------------------------------------------


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    settings.require_slack()
    if not settings.nylas_configured:
        log.warning(
            "Nylas credentials are not set: account polling and account actions are off",
            extra={"api_version": settings.nylas_api_version},
        )
    app = create_app(settings)
    run(
        app,
        host=settings.host,
        port=settings.port,
        print=lambda text: log.info(
            "listening", extra={"url": f"http://{settings.host}:{settings.port}"}
        ),
    )
    log.info("stopped")
    return 0


async def cmd_db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    engine = create_engine(settings.database_url)
    try:
        before = await current_revision(engine)
        await upgrade(engine)
    except Exception as exc:
        raise _database_error(settings, exc) from None
    finally:
        await engine.dispose()
    if before == head_revision():
        print(f"database already at {head_revision()}")
    else:
        print(f"database upgraded from {before or 'empty'} to {head_revision()}")
    return 0


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
            "opened": when(case.opened_at),
            "status": case.status,
        }
        for case, account in rows
    ]
    if args.json:
        print(json.dumps(records, indent=2, ensure_ascii=False))
    elif not records:
        print("no open cases")
    else:
        columns = ["case", "account", "email", "state", "opened", "status"]
        print(format_table(columns, records))
    return 0


def format_table(columns: Sequence[str], records: Sequence[dict[str, Any]]) -> str:
    """Align columns to their widest value; nothing is ever truncated."""
    cells = [[("-" if r[c] is None else str(r[c])) for c in columns] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    rows = [[c.upper() for c in columns], *cells]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


async def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    settings.require_slack()
    report = [
        ("mode", "local (alerts go to the log)" if settings.local_mode else "Slack"),
        ("nylas", f"{settings.nylas_api_version} at {settings.nylas_base_url}"),
    ]
    if settings.nylas_configured:
        report.append(("nylas credentials", "set"))
    else:
        report.append(("nylas credentials", "missing: polling and account actions are off"))
    if settings.config_file is not None:
        report.append(("policy", f"{settings.config_file} is valid"))
    nylas_error = None
    if settings.nylas_configured:
        try:
            async with nylas_http() as http:
                destinations = await build_nylas(settings, http).list_webhook_destinations()
        except NylasError as exc:
            nylas_error = str(exc)
            report.append(("webhook destination watch", f"cannot list destinations: {exc}"))
        else:
            report.extend(_watch_report(settings, destinations))
    else:
        report.append(("webhook destination watch", "off (no Nylas credentials)"))
    engine = create_engine(settings.database_url)
    try:
        revision = await current_revision(engine)
    except Exception as exc:
        raise _database_error(settings, exc) from None
    finally:
        await engine.dispose()
    if revision == head_revision():
        report.append(("database", f"reachable, schema {revision}"))
    else:
        report.append(("database", f"reachable, schema {revision or 'empty'}: run db upgrade"))
    width = max(len(name) for name, _ in report)
    for name, value in report:
        print(f"{name.ljust(width)}  {value}")
    return 0 if nylas_error is None else EXIT_FAILURE


def _watch_report(
    settings: Settings, destinations: Sequence[WebhookDestination]
) -> list[tuple[str, str]]:
    """One line for the watch, then one per destination: its status and whether it is watched."""
    every = how_long(settings.poll_interval)
    lines = [("webhook destination watch", f"on, every {every}: {len(destinations)} found")]
    for destination in destinations:
        watched = "watched" if watches(destination) else "not watched: no account triggers"
        lines.append(
            (f"  {destination.id}", f"{destination.status}, {destination.url} ({watched})")
        )
    return lines


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
        raise CommandError(str(exc)) from None
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
    raw = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json"}
    if args.gzip:
        raw = webhooks.compress(raw)
        headers["Content-Encoding"] = "gzip"
    headers["X-Nylas-Signature"] = webhooks.sign(secret, raw)
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = args.url or f"http://{host}:{settings.port}/nylas/webhook"
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            response = await http.post(url, content=raw, headers=headers)
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise CommandError(f"cannot reach {url}: {reason}; is the service running?") from None
    print(f"sent {args.event} for {version} account {account} to {url}")
    print(f"{response.status_code} {response.text.strip()}")
    return 0 if response.is_success else EXIT_FAILURE


async def cmd_preview(settings: Settings, args: argparse.Namespace) -> int:
    """Print a case's or an incident's card as the alert channel would show it now."""
    _require_existing_database(settings)
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
    url = normalize_url(settings.database_url)
    return f"the database at {url.render_as_string(hide_password=True)}"


def _require_existing_database(settings: Settings) -> None:
    """Refuse to read an SQLite file that is not there, rather than create an empty one."""
    url = normalize_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database is not None:
        path = Path(url.database).expanduser()
        if not path.is_file():
            raise CommandError(f"no database at {path.resolve()}; check DATABASE_URL")


# --- entry point ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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

    cases = sub.add_parser("cases", help="list open cases")
    cases.add_argument("--json", action="store_true", help="print JSON for scripts")
    cases.set_defaults(run=cmd_cases)

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
    trigger.add_argument("--email", default="ana@example.com", help="email of a v3 grant")
    trigger.add_argument("--account", help="account or grant id (default: a new random one)")
    trigger.add_argument("--provider", default="google", help="provider of a v3 grant")
    trigger.add_argument(
        "--reauth", action="store_true", help="grant.updated: mark it a re-authentication"
    )
    trigger.add_argument("--gzip", action="store_true", help="send it gzip-compressed")
    trigger.add_argument("--url", help="webhook URL (default: this host's PORT)")
    trigger.set_defaults(run=cmd_trigger)

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
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
