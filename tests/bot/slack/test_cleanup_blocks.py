"""The clean-up message: valid Block Kit, escaped, and its button only while nobody confirmed."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest

from bot.notifier import LogSink
from bot.slack import ids
from bot.slack.cleanup import cleanup_blocks, cleanup_modal, cleanup_text
from bot.slack.notices import notice_blocks, notice_text
from storage.models import OutboxKind, OutboxMessage
from tests.bot.slack.test_blocks import HOSTILE, mentions
from tests.bot.slack.test_digest_e2e import validate_message


def payload(**more: Any) -> dict[str, Any]:
    since = datetime(2026, 11, 2, 9, 30, tzinfo=UTC).isoformat()
    return {
        "about": "cleanup",
        "key": "cleanup:2026-11",
        "month": "2026-11",
        "count": 42,
        "grace": "14 d",
        "ends": datetime(2026, 12, 1, tzinfo=UTC).isoformat(),
        "cost": "84.00 USD",
        "accounts": [{"case": 7, "label": HOSTILE, "account": "g-7", "since": since}] * 20,
        "more": 22,
        "started_by": None,
        "done": 0,
        "tally": {},
        "finished": False,
        **more,
    }


def test_the_offer_is_valid_escaped_and_has_the_bulk_button() -> None:
    blocks = notice_blocks(payload())
    assert blocks == cleanup_blocks(payload())
    validate_message(blocks)
    shown = json.dumps(blocks)
    assert "84.00 USD" in shown
    # As many accounts as fit in one section are named; the others are counted.
    listed = blocks[2]["text"]["text"].split("\n")
    named, more = listed[:-1], int(listed[-1].removeprefix("and ").removesuffix(" more"))
    assert 0 < len(named) <= 20 and len(named) + more == 42
    assert all(line.startswith("• ") and "(case #7)" in line for line in named)
    (button,) = next(b for b in blocks if b["type"] == "actions")["elements"]
    assert (button["action_id"], button["value"], button["text"]["text"]) == (
        ids.CLEANUP_DELETE,
        "2026-11",
        "Delete 42 accounts",
    )
    assert notice_text(payload()) == cleanup_text(payload())
    assert "42 broken accounts" in notice_text(payload())


def test_no_price_no_cost_line() -> None:
    short = cleanup_blocks(payload(cost=None, accounts=payload()["accounts"][:2], count=4, more=2))
    assert "Cost at risk" not in json.dumps(short)
    assert short[2]["text"]["text"].split("\n")[-1] == "and 2 more"


def test_once_confirmed_the_button_gives_way_to_progress() -> None:
    running = cleanup_blocks(payload(started_by="slack:U0BOSS", done=10, tally={"deleted": 10}))
    validate_message_allowing_one_mention(running)
    assert ids.CLEANUP_DELETE not in json.dumps(running)
    assert "10 of 42 handled (10 deleted)" in json.dumps(running)
    done = cleanup_blocks(
        payload(
            started_by="slack:U0BOSS", done=42, tally={"deleted": 41, "failed": 1}, finished=True
        )
    )
    assert "*Clean-up done* (confirmed by <@U0BOSS>): 41 deleted, 1 failed." in json.dumps(done)


def validate_message_allowing_one_mention(blocks: list[dict[str, Any]]) -> None:
    """Valid, and the one who confirmed is the only person it names."""
    assert mentions(blocks) == ["<@U0BOSS>"]


def test_the_modal_asks_for_the_count() -> None:
    modal = cleanup_modal("2026-11", 42)
    assert modal["callback_id"] == ids.CLEANUP_MODAL and modal["private_metadata"] == "2026-11"
    assert "*42* broken accounts" in json.dumps(modal)


async def test_local_mode_logs_the_offer_and_the_tally_in_words(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = LogSink()
    offer = OutboxMessage(channel="C0ALERTS", kind=OutboxKind.NOTICE, payload=payload())
    done = OutboxMessage(
        channel="C0ALERTS",
        kind=OutboxKind.NOTICE_UPDATE,
        payload=payload(
            started_by="slack:U0BOSS", tally={"deleted": 40, "failed": 2}, finished=True
        ),
    )
    with caplog.at_level(logging.INFO, logger="reauthbot.alerts"):
        await sink.deliver(offer, None, None)
        await sink.deliver(done, None, None)
    assert [r.getMessage() for r in caplog.records] == [
        "billing clean-up: Billing clean-up: 42 broken accounts past the 14 d grace period will "
        "be billed again next month (84.00 USD at risk).",
        "billing clean-up: Billing clean-up of 2026-11: 40 deleted, 2 failed.",
    ]
