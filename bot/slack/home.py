"""The App Home tab: the viewer's own cases, and the open queue at a glance.

The view is rendered afresh each time someone opens the tab (``app_home_opened``) and
published for that user alone. It only shows: the work is done from the alerts and
``/reauth``, so it carries no buttons and needs no other listener.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from slack_bolt.async_app import AsyncApp
from slack_sdk.web.async_client import AsyncWebClient

from bot.card import KIND_TITLES, STATUS_WORDS
from bot.services import Services
from bot.slack import ids
from bot.slack.blocks import (
    context,
    escape,
    header,
    section,
    slack_ago,
    slack_date,
)
from bot.slack.replies import case_line
from storage import actors
from storage.reports import Tally
from workflows.overview import CaseRow, Overview, overview

log = logging.getLogger("reauthbot.slack.home")

MINE = 20  # the viewer's cases listed; more are only counted
NEWEST = 10  # open cases listed under the queue

NO_CASES_OF_YOURS = (
    "You have no open cases. Acknowledge an alert (or "
    f"`{ids.COMMAND} ack CASE`) and it is listed here until it is resolved."
)
NO_OPEN_CASES = "No open cases: every tracked mailbox is syncing."


def home_view(found: Overview, *, now: datetime) -> dict[str, Any]:
    """The Home tab of one viewer, from what ``workflows.overview`` found for them."""
    blocks: list[dict[str, Any]] = [header("Your cases")]
    blocks += _case_sections(found.mine) or [section(NO_CASES_OF_YOURS)]
    if found.more_mine:
        blocks.append(context(f"Only your {MINE} newest are listed."))
    blocks += [{"type": "divider"}, header("Open queue")]
    if not found.open_total:
        blocks.append(section(NO_OPEN_CASES))
    else:
        blocks.append(section(_counts(found)))
        if found.oldest_unacknowledged is not None:
            blocks.append(context(_waiting_longest(found.oldest_unacknowledged)))
        blocks.append(section("*Newest open cases*"))
        blocks += _case_sections(found.newest)
        if found.more_open:
            blocks.append(context(f"More with `{ids.COMMAND} list`."))
    blocks.append(context(f"As of {slack_date(now)}. Open this tab again to refresh it."))
    # At most MINE + NEWEST + 9 blocks: well within the 100 a Home tab may have.
    return {"type": "home", "blocks": blocks}


def _case_sections(rows: Sequence[CaseRow]) -> list[dict[str, Any]]:
    return [section(case_line(case, account)) for case, account in rows]


def _tallies(tallies: Sequence[Tally], words: dict[str, str]) -> str:
    return " · ".join(f"{escape(words.get(t.key or '', t.key or '-'))} {t.count}" for t in tallies)


def _counts(found: Overview) -> str:
    statuses = {str(s): w for s, w in STATUS_WORDS.items()}
    total = found.open_total
    return (
        f"*{total} open case{'' if total == 1 else 's'}*\n"
        f"By status: {_tallies(found.by_status, statuses)}\n"
        f"By kind: {_tallies(found.by_kind, KIND_TITLES)}"
    )


def _waiting_longest(row: CaseRow) -> str:
    case, account = row
    who = escape(account.email or account.id)
    return (
        f"Waiting longest for someone to acknowledge it: *#{case.id}* {who}, "
        f"opened {slack_ago(case.opened_at)}."
    )


def register(bolt: AsyncApp, services: Services) -> None:
    @bolt.event(ids.APP_HOME_OPENED)
    async def on_home_opened(event: dict[str, Any], client: AsyncWebClient) -> None:
        user_id = str(event.get("user") or "")
        # The event also comes when the Messages tab is opened; that tab has no view.
        if event.get("tab") != "home" or not user_id:
            return
        async with services.readers() as session:
            found = await overview(session, actor=actors.slack(user_id), mine=MINE, newest=NEWEST)
        await client.views_publish(user_id=user_id, view=home_view(found, now=services.clock()))
        log.info(
            "home tab published",
            extra={"user": user_id, "mine": len(found.mine), "open": found.open_total},
        )
