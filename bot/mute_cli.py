"""``reauthbot mute`` and ``reauthbot unmute``: maintenance windows from the command line.

They go through the same workflow as ``/reauth mute`` (``workflows.mutes``), as the user
running them (actor ``cli:<user>``). Wrong input exits 2 with one line, as other usage errors
do; a mute that cannot be ended (unknown, already over) or a scope already muted exits 1.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from bot.cli_case import format_table, login
from bot.cli_support import CommandError, UsageError, migrated_sessions
from bot.render import when
from bot.settings import Settings
from storage import actors
from storage.models import Mute
from workflows import mutes
from workflows.clock import how_long, system_clock


def _record(mute: Mute) -> dict[str, Any]:
    return {
        "mute": mute.id,
        "scope": mute.scope,
        "value": mute.value,
        "until": when(mute.ends_at),
        "by": mute.created_by,
        "reason": mute.reason,
    }


async def cmd_mute(settings: Settings, args: argparse.Namespace) -> int:
    if args.scope == "list":
        if args.value is not None or args.length is not None or args.reason is not None:
            raise UsageError("`mute list` takes no value, --for or --reason")
        async with migrated_sessions(settings) as sessions:
            active = await mutes.listing(sessions, now=system_clock())
        records = [_record(mute) for mute in active]
        if args.json:
            print(json.dumps(records, indent=2, ensure_ascii=False))
        elif not records:
            print("no mutes in force")
        else:
            print(format_table(["mute", "scope", "value", "until", "by", "reason"], records))
        return 0
    if args.value is None:
        raise UsageError(f"which {args.scope}? e.g. `reauthbot mute {args.scope} NAME --for 2h`")
    if args.length is None:
        raise UsageError("for how long? add --for 2h, say (at most 7d)")
    try:
        mutes.normalise(args.scope, args.value)
        length = mutes.parse_length(args.length)
    except mutes.MuteError as exc:
        raise UsageError(str(exc)) from None
    async with migrated_sessions(settings) as sessions:
        try:
            mute = await mutes.start(
                sessions,
                scope=args.scope,
                value=args.value,
                length=length,
                actor=actors.cli(login()),
                now=system_clock(),
                reason=args.reason,
            )
        except mutes.MuteError as exc:
            raise CommandError(str(exc)) from None
    print(
        f"muted {mutes.scope_words(mute)} until {when(mute.ends_at)} "
        f"({how_long(mute.ends_at - mute.starts_at)}): mute #{mute.id}"
    )
    return 0


async def cmd_unmute(settings: Settings, args: argparse.Namespace) -> int:
    raw = args.mute.removeprefix("#")
    if not raw.isdigit() or not 0 < int(raw) < 2**31:
        raise UsageError(f"{args.mute[:40]!r} is not a mute number (see `reauthbot mute list`)")
    async with migrated_sessions(settings) as sessions:
        try:
            mute = await mutes.end(
                sessions,
                mute_id=int(raw),
                actor=actors.cli(login()),
                now=system_clock(),
                channel=settings.alert_channel,
            )
        except mutes.MuteError as exc:
            raise CommandError(str(exc)) from None
    print(f"ended mute #{mute.id} of {mutes.scope_words(mute)}; its summary is queued")
    return 0


def add_parsers(sub: Any) -> None:
    """Add ``mute`` and ``unmute`` to the ``reauthbot`` sub-commands."""
    mute = sub.add_parser(
        "mute",
        help="no alerts for a domain or provider for a while; `mute list`: those in force",
        description="Mute new alerts of an email domain or a provider, e.g. "
        "`reauthbot mute domain example.com --for 2h`. Cases are still tracked; one summary "
        "is posted when the mute ends.",
    )
    mute.add_argument("scope", choices=[*mutes.SCOPES, "list"], help="domain, provider or list")
    mute.add_argument("value", nargs="?", metavar="NAME", help="the domain or provider")
    mute.add_argument(
        "--for", dest="length", metavar="DURATION", help="how long: 30m, 2h, 1d (at most 7d)"
    )
    mute.add_argument("--reason", help="why, shown in the list and the summary")
    mute.add_argument("--json", action="store_true", help="list: print JSON for scripts")
    mute.set_defaults(run=cmd_mute)

    unmute = sub.add_parser("unmute", help="end a mute now and post its summary")
    unmute.add_argument("mute", metavar="MUTE", help="the mute's number (`reauthbot mute list`)")
    unmute.set_defaults(run=cmd_unmute)
