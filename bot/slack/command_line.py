"""Parse the text of ``/reauth`` into a typed command; wrong input becomes a usage line.

    parse("snooze 42 4h")            -> Command("snooze", target="42", duration="4h")
    parse("list --kind reauth")      -> Command("list", kinds=("reauth",))
    parse("resolve 42 user fixed")   -> Command("resolve", target="42", note="user fixed")
    parse("mute domain example.com for 2h migration")
        -> Command("mute", scope="domain", value="example.com", length="2h", reason="migration")
    parse("mute end 3")              -> Command("unmute", mute_id=3)

Slack sends the text as typed, except that it may wrap what it recognises: an email as
``<mailto:ana@example.com|ana@example.com>``, a link as ``<https://…|label>``. Those are
unwrapped to what the user typed.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from storage.models import CaseKind, CaseStatus
from storage.reports import MAX_CASE_NUMBER
from workflows.mutes import MuteError, normalise, parse_length
from workflows.snoozes import SNOOZE_CHOICES, snooze_codes_in_words

SNOOZES = tuple(SNOOZE_CHOICES)
WINDOWS = ("7d", "30d")
OPEN_STATUSES = tuple(s.value for s in CaseStatus if s != CaseStatus.RESOLVED)
KINDS = tuple(k.value for k in CaseKind)
LIST_OPTIONS = ("--status", "--kind", "--domain", "--provider", "--incident")

USAGE = {
    "list": (
        "/reauth list [--status STATUS] [--kind KIND] [--domain DOMAIN] [--provider NAME] "
        "[--incident N]"
    ),
    "show": "/reauth show CASE|EMAIL|ACCOUNT",
    "ack": "/reauth ack CASE",
    "retry": "/reauth retry CASE",
    "link": "/reauth link CASE [--send]",
    "snooze": f"/reauth snooze CASE {'|'.join(SNOOZES)}",
    "resolve": "/reauth resolve CASE [note]",
    "revoke": "/reauth revoke CASE",
    "stats": "/reauth stats [7d|30d]",
    "oncall": "/reauth oncall",
    "mute": "/reauth mute domain|provider NAME for 2h [reason] | mute list",
    "unmute": "/reauth unmute MUTE",
    "help": "/reauth help",
}
WHAT = {
    "list": "open cases, newest first (with --incident: a storm's cases and their buttons)",
    "show": "a case with its history",
    "ack": "acknowledge a case (stops escalation)",
    "retry": "retry sync (v2 stopped) or check the grant again (v3)",
    "link": "get a re-authentication link for the end user (--send: send it to them)",
    "snooze": "silence a case and its escalation for a while",
    "resolve": "close a case with a note",
    "revoke": "revoke the account's tokens (asks for confirmation)",
    "stats": "open cases, response times, chronic accounts",
    "oncall": "the escalation policy, who would be paged now, and the mutes in force",
    "mute": "no alerts for a domain or provider for up to 7d (cases are still tracked; "
    "one summary when it ends)",
    "unmute": "end a mute now (also `/reauth mute end MUTE`)",
    "help": "this list",
}
CASE_HINT = "CASE is a case number (42 or #42), an account id or an email."

_SLACK_LINK = re.compile(r"<(?:mailto:)?([^<>|]*)(?:\|([^<>]*))?>")


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    target: str | None = None  # CASE|EMAIL|ACCOUNT
    duration: str | None = None  # snooze
    note: str = ""  # resolve
    window: str = "7d"  # stats
    statuses: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    domain: str | None = None
    provider: str | None = None
    incident: int | None = None  # list: the cases of one incident
    send: bool = False  # link: send it to the end user ([outreach])
    # mute: what (domain or provider, and which) for how long ("2h"), and why; none: the list
    scope: str | None = None
    value: str | None = None
    length: str | None = None
    reason: str = ""
    mute_id: int | None = None  # unmute
    unknown: str | None = None  # help: the sub-command that was not one


class UsageError(Exception):
    """The text is not a valid command; the message says how to write it."""

    def __init__(self, problem: str, name: str | None = None) -> None:
        usage = f"Usage: `{USAGE[name]}`" if name else "Try `/reauth help`."
        super().__init__(f"{problem} {usage}")
        self.name = name


def help_text() -> str:
    lines = [f"`{USAGE[name]}`: {WHAT[name]}" for name in USAGE]
    return "\n".join(["*reauthbot commands*", *lines, CASE_HINT])


def _unwrap(text: str) -> str:
    return _SLACK_LINK.sub(lambda m: m.group(2) or m.group(1), text)


def parse(text: str) -> Command:
    """Parse the text after ``/reauth``; raise UsageError with a one-line explanation."""
    text = _unwrap(text or "").strip()
    if not text:
        return Command("help")
    head, _, tail = text.partition(" ")
    name = head.lower()
    if name not in USAGE:
        return Command("help", unknown=head[:40].replace("`", "'"))
    if name == "mute":  # the reason is free text: keep it as typed
        return _mute(tail.split())
    if name == "unmute":
        return _unmute(tail.split())
    if name == "resolve":  # the note is free text: keep it as typed
        target, _, note = tail.strip().partition(" ")
        if not target:
            raise UsageError("Which case?", name)
        return Command(name, target=target, note=note.strip())
    try:
        words = shlex.split(tail)
    except ValueError:
        raise UsageError("A quote is not closed.", name) from None
    if name == "list":
        return _list(words)
    if name in ("help", "oncall"):
        if words:
            raise UsageError(f"`{name}` takes no arguments.", name)
        return Command(name)
    if name == "stats":
        if len(words) > 1 or (words and words[0].lower() not in WINDOWS):
            raise UsageError("Choose a window of 7d or 30d.", name)
        return Command(name, window=words[0].lower() if words else "7d")
    if not words:
        raise UsageError("Which case?", name)
    if name == "snooze":
        if len(words) != 2 or words[1].lower() not in SNOOZES:
            raise UsageError(f"Snooze for {snooze_codes_in_words()}.", name)
        return Command(name, target=words[0], duration=words[1].lower())
    if name == "link":
        send = "--send" in words
        rest = [w for w in words if w != "--send"]
        unknown = [w for w in rest if w.startswith("--")]
        if unknown:
            raise UsageError(f"`{unknown[0][:40]}` is not an option of `link`.", name)
        if len(rest) != 1:
            raise UsageError("Name one case.", name)
        return Command(name, target=rest[0], send=send)
    if len(words) != 1:
        raise UsageError("Name one case.", name)
    return Command(name, target=words[0])


def _list(words: list[str]) -> Command:
    values: dict[str, list[str]] = {option: [] for option in LIST_OPTIONS}
    items = iter(words)
    for word in items:
        option, eq, value = word.partition("=")
        option = option.lower()
        if option not in values:
            raise UsageError(f"`{word[:40]}` is not an option of list.", "list")
        if not eq:
            value = next(items, "")
        if not value or value.startswith("--"):
            raise UsageError(f"`{option}` needs a value.", "list")
        values[option] += [v.strip().lower() for v in value.split(",") if v.strip()]
    statuses, kinds = values["--status"], values["--kind"]
    for given, allowed, what in ((statuses, OPEN_STATUSES, "status"), (kinds, KINDS, "kind")):
        wrong = [v for v in given if v not in allowed]
        if wrong:
            raise UsageError(
                f"`{wrong[0][:40]}` is not a {what}; use {', '.join(allowed)}.", "list"
            )
    for option in ("--domain", "--provider", "--incident"):
        if len(values[option]) > 1:
            raise UsageError(f"Give `{option}` once.", "list")
    incident = None
    if values["--incident"]:
        raw = values["--incident"][0].removeprefix("#")
        if not re.fullmatch(r"[0-9]{1,10}", raw) or not 0 < int(raw) <= MAX_CASE_NUMBER:
            raise UsageError(f"`{raw[:40]}` is not an incident number.", "list")
        incident = int(raw)
    return Command(
        "list",
        statuses=tuple(dict.fromkeys(statuses)),
        kinds=tuple(dict.fromkeys(kinds)),
        domain=values["--domain"][0].lstrip("@") if values["--domain"] else None,
        provider=values["--provider"][0] if values["--provider"] else None,
        incident=incident,
    )


def _mute(words: list[str]) -> Command:
    if not words:
        raise UsageError("Mute what? Name a domain or a provider, and for how long.", "mute")
    first = words[0].lower()
    if first == "list":
        if len(words) > 1:
            raise UsageError("`mute list` takes no arguments.", "mute")
        return Command("mute")
    if first == "end":
        return _unmute(words[1:])
    if len(words) < 2:
        what = first if first in ("domain", "provider") else "domain or provider"
        raise UsageError(f"Which {what}?", "mute")
    try:
        scope, value = normalise(words[0], words[1])
        rest = words[2:]
        if rest and rest[0].lower() == "for":
            rest = rest[1:]
        if not rest:
            raise MuteError("For how long? Add `for 2h`, for example.")
        length = rest[0].lower()
        parse_length(length)
    except MuteError as exc:
        raise UsageError(str(exc), "mute") from None
    return Command("mute", scope=scope, value=value, length=length, reason=" ".join(rest[1:]))


def _unmute(words: list[str]) -> Command:
    if len(words) != 1:
        raise UsageError("Name one mute by its number (see `/reauth mute list`).", "unmute")
    raw = words[0].removeprefix("#")
    if not re.fullmatch(r"[0-9]{1,10}", raw) or not 0 < int(raw) <= MAX_CASE_NUMBER:
        raise UsageError(f"`{raw[:40]}` is not a mute number.", "unmute")
    return Command("unmute", mute_id=int(raw))
