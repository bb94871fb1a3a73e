"""``reauthbot check``: say what the configuration is, and whether Slack, Nylas and the
database accept it, without changing anything.

It names the database (password masked), the mode, the channels and which secrets are set;
then it asks Slack (``auth.test``) and Nylas (one authorised list call) whether they take the
credentials. It exits 1 when one of them refuses, or the database cannot be used.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.app import build_nylas, nylas_http
from bot.cli_support import EXIT_FAILURE, masked_url, missing_database
from bot.settings import Settings
from storage.engine import create_engine
from storage.migrate import current_revision, head_revision
from workflows.clock import how_long
from workflows.nylas import NylasAuthError, NylasError, WebhookDestination
from workflows.webhook_watch import watches

Report = list[tuple[str, str]]


def _secrets(settings: Settings) -> Report:
    """Whether each secret is set; never its value."""
    found = {
        "SLACK_BOT_TOKEN": settings.slack_bot_token,
        "SLACK_SIGNING_SECRET": settings.slack_signing_secret,
        "SLACK_APP_TOKEN": settings.slack_app_token,
        "NYLAS_API_KEY": settings.nylas_api_key,
        "NYLAS_CLIENT_SECRET": settings.nylas_client_secret,
        "NYLAS_WEBHOOK_SECRET": settings.nylas_webhook_secret,
        "PAGERDUTY_ROUTING_KEY": settings.pagerduty_routing_key,
        "REAUTHBOT_OUTREACH_SECRET": settings.outreach_secret,
    }
    return [(f"  {name}", "set" if value else "not set") for name, value in found.items()]


def _mode(settings: Settings) -> str:
    if settings.local_mode:
        return "local (alerts go to the log)"
    if settings.socket_mode:
        return "Socket Mode (Slack traffic over a WebSocket; no public URL needed)"
    return f"HTTP (Slack sends to /slack/events on port {settings.port})"


def configuration(settings: Settings) -> Report:
    """What the settings say, before anything is reached."""
    report = [("mode", _mode(settings))]
    report.append(("alert channel", settings.slack_alert_channel or "none (local mode)"))
    domains = settings.policy.routing.domains
    if domains:
        report.append(("routing", f"{len(domains)} domains to their own channels"))
        report.extend((f"  {domain}", channel) for domain, channel in sorted(domains.items()))
    else:
        report.append(("routing", "none: every alert goes to the alert channel"))
    report.append(("secrets", "set or not (values are never shown)"))
    report.extend(_secrets(settings))
    report.append(("nylas", f"{settings.nylas_api_version} at {settings.nylas_base_url}"))
    if settings.config_file is not None:
        report.append(("policy", f"{settings.config_file} is valid"))
    return report


async def _database(settings: Settings) -> tuple[Report, bool]:
    report = [("database", masked_url(settings))]
    missing = missing_database(settings)
    if missing is not None:
        return [*report, ("  status", missing)], False
    engine = create_engine(settings.database_url)
    try:
        revision = await current_revision(engine)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return [*report, ("  status", f"cannot connect: {reason}")], False
    finally:
        await engine.dispose()
    if revision == head_revision():
        return [*report, ("  status", f"reachable, schema {revision}")], True
    state = f"reachable, schema {revision or 'empty'}: run db upgrade"
    return [*report, ("  status", state)], True


async def _slack(settings: Settings) -> tuple[Report, bool]:
    if settings.slack_bot_token is None:
        return [("slack", "not checked: no SLACK_BOT_TOKEN (local mode)")], True
    client = AsyncWebClient(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=settings.slack_api_url,
        timeout=10,
    )
    try:
        answer = await client.auth_test()
    except SlackApiError as exc:
        error = exc.response.get("error") if exc.response is not None else None
        return [("slack", f"refused the bot token: {error or exc.response.status_code}")], False
    except Exception as exc:
        reason = str(exc).strip() or type(exc).__name__
        return [("slack", f"cannot reach {settings.slack_api_url}: {reason}")], False
    team, user = answer.get("team"), answer.get("user")
    return [("slack", f"token accepted: bot {user} in workspace {team}")], True


async def _nylas(settings: Settings) -> tuple[Report, bool]:
    if not settings.nylas_configured:
        return [
            ("nylas credentials", "missing: polling and account actions are off"),
            ("webhook destination watch", "off (no Nylas credentials)"),
        ], True
    async with nylas_http() as http:
        nylas = build_nylas(settings, http)
        try:
            await nylas.verify_credentials()
        except NylasAuthError as exc:
            return [("nylas credentials", f"refused: {exc}")], False
        except NylasError as exc:
            return [("nylas credentials", f"not verified: {exc}")], False
        report = [("nylas credentials", "accepted")]
        try:
            destinations = await nylas.list_webhook_destinations()
        except NylasError as exc:
            report.append(("webhook destination watch", f"cannot list destinations: {exc}"))
            return report, False
    return [*report, *_watch_report(settings, destinations)], True


def _watch_report(settings: Settings, destinations: Sequence[WebhookDestination]) -> Report:
    """One line for the watch, then one per destination: its status and whether it is watched."""
    every = how_long(settings.poll_interval)
    lines = [("webhook destination watch", f"on, every {every}: {len(destinations)} found")]
    for destination in destinations:
        watched = "watched" if watches(destination) else "not watched: no account triggers"
        lines.append(
            (f"  {destination.id}", f"{destination.status}, {destination.url} ({watched})")
        )
    return lines


async def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    settings.require_slack()
    report = configuration(settings)
    healthy = True
    for part in (_database, _slack, _nylas):
        lines, ok = await part(settings)
        report.extend(lines)
        healthy = healthy and ok
    width = max(len(name) for name, _ in report)
    for name, value in report:
        print(f"{name.ljust(width)}  {value}".rstrip())
    return 0 if healthy else EXIT_FAILURE
