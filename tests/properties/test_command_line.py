"""`/reauth` text: any text parses into a valid command or raises ``UsageError`` with a short
message; commands written out the way an operator types them parse back to themselves."""

from __future__ import annotations

import shlex

from hypothesis import example, given
from hypothesis import strategies as st

from bot.slack.command_line import (
    KINDS,
    OPEN_STATUSES,
    SNOOZES,
    USAGE,
    WINDOWS,
    Command,
    UsageError,
    parse,
)
from tests.properties.strategies import FAST
from workflows.mutes import LONGEST, parse_length

NEEDS_TARGET = ("show", "ack", "retry", "link", "snooze", "resolve", "revoke")
# What Slack may send: anything, with the words and marks of real commands mixed in.
pieces = st.sampled_from(
    [
        *USAGE,
        *(name.upper() for name in USAGE),
        *SNOOZES,
        *WINDOWS,
        *OPEN_STATUSES,
        *KINDS,
        "--status",
        "--kind=",
        "--domain",
        "--provider",
        "domain",
        "provider",
        "example.com",
        "for",
        "2h",
        "8d",
        "end",
        "#42",
        "42",
        '"',
        "'",
        "\\",
        "<mailto:ana@example.com|ana@example.com>",
        "<https://x.example|x>",
        "<",
        ">",
        "|",
        ",",
        "=",
        " ",
        "\t",
        "\n",
        "\u00a0",
        "\x00",
        "\ud800",
        "é",
        "👩‍💻",
    ]
)
texts = st.text(st.characters(codec=None), max_size=60) | st.lists(
    pieces | st.text(max_size=8), max_size=12
).map("".join)


def check(command: Command) -> None:
    assert command.name in USAGE
    if command.name in NEEDS_TARGET:
        assert isinstance(command.target, str) and command.target
    else:
        assert command.target is None
    assert command.duration is None or command.duration in SNOOZES
    assert (command.duration is not None) == (command.name == "snooze")
    assert command.window in WINDOWS
    assert set(command.statuses) <= set(OPEN_STATUSES)
    assert set(command.kinds) <= set(KINDS)
    assert len(set(command.statuses)) == len(command.statuses)
    assert len(set(command.kinds)) == len(command.kinds)
    if command.name != "resolve":
        assert command.note == ""
    assert command.unknown is None or (command.name == "help" and len(command.unknown) <= 40)
    assert command.incident is None or command.name == "list"
    muting = command.name == "mute" and command.scope is not None
    assert (command.value is not None) == (command.length is not None) == muting
    assert command.scope in (None, "domain", "provider")
    assert command.length is None or parse_length(command.length) <= LONGEST
    assert command.reason == "" or muting
    assert (command.mute_id is not None) == (command.name == "unmute")


@FAST
@given(text=texts)
@example(text="show " + "x" * 200_000)
@example(text="list " + "--kind reauth " * 20_000)
@example(text='ack "' + "a" * 100_000)
@example(text="resolve 1 " + "note " * 50_000)
@example(text="<" * 50_000 + ">" * 50_000)
@example(text="x" * 100_000)
def test_any_text_is_a_valid_command_or_a_short_usage_error(text: str) -> None:
    try:
        command = parse(text)
    except UsageError as exc:
        message = str(exc)
        # The input is echoed clipped: a 100 kB paste does not come back as a 100 kB answer.
        assert len(message) <= 300, message
        assert exc.name is None or exc.name in USAGE
        assert message.endswith(f"Usage: `{USAGE[exc.name]}`" if exc.name else "/reauth help`.")
    else:
        check(command)


# A case reference as typed: a number, #number, an account id or an email, any script.
targets = st.text(
    st.characters(exclude_categories=("Cs", "Cc", "Z"), exclude_characters="<>"),
    min_size=1,
    max_size=30,
)
domains = st.text(st.characters(codec="ascii", categories=("L", "N")), min_size=1, max_size=12)


@st.composite
def commands(draw: st.DrawFn) -> Command:
    name = draw(st.sampled_from(list(USAGE)))
    if name in ("help", "oncall"):
        return Command(name)
    if name == "stats":
        return Command(name, window=draw(st.sampled_from(WINDOWS)))
    if name == "unmute":
        return Command(name, mute_id=draw(st.integers(1, 10**6)))
    if name == "mute":
        if draw(st.booleans()):
            return Command(name)  # the list
        return Command(
            name,
            scope=draw(st.sampled_from(["domain", "provider"])),
            value=draw(domains.map(str.lower)) + ".example",
            length=draw(st.sampled_from(["30m", "2h", "1d", "7d"])),
            reason=" ".join(draw(st.text(st.characters(exclude_characters="<>"))).split()),
        )
    if name == "list":
        return Command(
            name,
            statuses=tuple(draw(st.lists(st.sampled_from(OPEN_STATUSES), unique=True))),
            kinds=tuple(draw(st.lists(st.sampled_from(KINDS), unique=True))),
            domain=draw(st.none() | domains.map(str.lower)),
            provider=draw(st.none() | domains.map(str.lower)),
        )
    target = draw(targets)
    if name == "snooze":
        return Command(name, target=target, duration=draw(st.sampled_from(SNOOZES)))
    if name == "resolve":
        note = draw(st.text(st.characters(exclude_characters="<>"), max_size=40)).strip()
        return Command(name, target=target, note=note)
    return Command(name, target=target)


def typed(command: Command, draw: st.DrawFn) -> str:
    """The command as an operator might type it: any case, extra blanks, quoting."""
    head = "".join(
        c.upper() if draw(st.booleans()) else c for c in command.name
    )  # sub-commands are case-insensitive
    words = [head]
    if command.name == "resolve":
        assert command.target is not None
        words += [command.target, command.note]
    elif command.name == "list":
        for option, values in (("--status", command.statuses), ("--kind", command.kinds)):
            if values:
                words += [option, ",".join(values)]
        for option, value in (("--domain", command.domain), ("--provider", command.provider)):
            if value is not None:
                words.append(f"{option}={value}" if draw(st.booleans()) else f"{option} {value}")
    elif command.name == "stats":
        words.append(command.window.upper() if draw(st.booleans()) else command.window)
    elif command.name == "unmute":
        words.append(f"#{command.mute_id}" if draw(st.booleans()) else str(command.mute_id))
    elif command.name == "mute" and command.scope is None:
        words.append("list")
    elif command.name == "mute":
        assert command.value is not None and command.length is not None
        words += [command.scope or "", command.value]
        words += ["for", command.length] if draw(st.booleans()) else [command.length]
        words.append(command.reason)
    elif command.target is not None:
        words.append(shlex.quote(command.target))
        if command.duration is not None:
            words.append(command.duration)
    blank = draw(st.sampled_from([" ", "  "]))
    return draw(st.sampled_from(["", " "])) + blank.join(words).strip() + " "


@FAST
@given(command=commands(), data=st.data())
def test_typed_commands_parse_back_to_themselves(command: Command, data: st.DataObject) -> None:
    text = typed(command, data.draw)
    parsed = parse(text)
    if command.name == "resolve":
        # The note is free text, kept as typed (inner blanks and all).
        assert (parsed.name, parsed.target) == ("resolve", command.target)
        assert " ".join(parsed.note.split()) == " ".join(command.note.split())
    else:
        assert parsed == command


@FAST
@given(user=domains, domain=domains, name=st.sampled_from(["show", "ack", "link", "retry"]))
def test_emails_wrapped_by_slack_are_what_was_typed(user: str, domain: str, name: str) -> None:
    email = f"{user}@{domain}.example"
    wrapped = f"{name} <mailto:{email}|{email}>"
    assert parse(wrapped) == parse(f"{name} {email}") == Command(name, target=email)
