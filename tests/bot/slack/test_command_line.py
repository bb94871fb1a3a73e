"""Parsing `/reauth` text: every sub-command, good and bad."""

from __future__ import annotations

import pytest

from bot.slack.command_line import USAGE, Command, UsageError, help_text, parse


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", Command("help")),
        ("  help ", Command("help")),
        ("LIST", Command("list")),
        (
            "list --status open,acknowledged --kind reauth --domain @Example.com --provider Google",
            Command(
                "list",
                statuses=("open", "acknowledged"),
                kinds=("reauth",),
                domain="example.com",
                provider="google",
            ),
        ),
        ("list --kind=stopped --kind stopped", Command("list", kinds=("stopped",))),
        ("show 42", Command("show", target="42")),
        (
            "show <mailto:ana@example.com|ana@example.com>",
            Command("show", target="ana@example.com"),
        ),
        ("ack #7", Command("ack", target="#7")),
        ("retry g-1", Command("retry", target="g-1")),
        ("link ana@example.com", Command("link", target="ana@example.com")),
        ("snooze 42 4H", Command("snooze", target="42", duration="4h")),
        ("resolve 42", Command("resolve", target="42")),
        (
            "resolve 42 user changed the  password, fixed",
            Command("resolve", target="42", note="user changed the  password, fixed"),
        ),
        ("revoke 42", Command("revoke", target="42")),
        ("stats", Command("stats", window="7d")),
        ("stats 30D", Command("stats", window="30d")),
        ("oncall", Command("oncall")),
        ("list --incident 7", Command("list", incident=7)),
        ("list --incident=#7 --kind reauth", Command("list", kinds=("reauth",), incident=7)),
        # An unknown sub-command answers with the help itself.
        ("frobnicate 1", Command("help", unknown="frobnicate")),
        ("`x` y", Command("help", unknown="'x'")),
    ],
)
def test_good_commands(text: str, expected: Command) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "problem", "usage"),
    [
        ("list --incident x7", "`x7` is not an incident number.", "list"),
        ("list --incident 0", "`0` is not an incident number.", "list"),
        ("list --incident 99999999999", "`99999999999` is not an incident number.", "list"),
        ("list --incident 1 --incident 2", "Give `--incident` once.", "list"),
        ("list --colour red", "`--colour` is not an option of list.", "list"),
        ("list --kind", "`--kind` needs a value.", "list"),
        ("list --kind --status open", "`--kind` needs a value.", "list"),
        ("list --status resolved", "`resolved` is not a status", "list"),
        ("list --kind weird", "`weird` is not a kind", "list"),
        ("list --domain a.com --domain b.com", "Give `--domain` once.", "list"),
        ("list extra", "`extra` is not an option of list.", "list"),
        ("show", "Which case?", "show"),
        ("show 1 2", "Name one case.", "show"),
        ("ack", "Which case?", "ack"),
        ('ack "42', "A quote is not closed.", "ack"),
        ("snooze 42", "Snooze for 1h, 4h or 24h.", "snooze"),
        ("snooze 42 5m", "Snooze for 1h, 4h or 24h.", "snooze"),
        ("resolve", "Which case?", "resolve"),
        ("stats 1y", "Choose a window of 7d or 30d.", "stats"),
        ("stats 7d 30d", "Choose a window of 7d or 30d.", "stats"),
        ("oncall now", "`oncall` takes no arguments.", "oncall"),
        ("help me", "`help` takes no arguments.", "help"),
    ],
)
def test_wrong_commands_get_a_usage_line(text: str, problem: str, usage: str | None) -> None:
    with pytest.raises(UsageError) as caught:
        parse(text)
    message = str(caught.value)
    assert message.startswith(problem)
    assert message.endswith(f"Usage: `{USAGE[usage]}`" if usage else "Try `/reauth help`.")
    assert "\n" not in message and "Traceback" not in message


def test_help_lists_every_sub_command() -> None:
    text = help_text()
    for usage in USAGE.values():
        assert usage in text
