"""Maintenance windows: ``mute domain|provider X for 2h``.

While a window is in force, a case opened for an account of its domain or provider is
tracked as usual (audit, ``/reauth list``, stats, digest) but gets no alert of its own, joins
no storm and never escalates or pages; the case records the window (``Case.muted_by``) and a
``muted`` line in its audit. When the window ends, at its time or earlier by an operator, one
summary notice goes to the alert channel: how many accounts broke during it, which are still
broken (by case number), how many were resolved. The still-broken cases get no card and no
escalation afterwards either: the summary stands for them, as a storm's message stands for
its cases, and ``/reauth list --domain X`` (or ``--provider``) acts on them.

Errors an operator can make raise ``MuteError`` with one line to show them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import actors, cases, outbox
from storage import mutes as store
from storage.models import Account, Case, Mute, MuteScope, OutboxKind, domain_of
from workflows.clock import how_long
from workflows.policy import parse_duration
from workflows.states import classify

log = logging.getLogger("reauthbot.mutes")

Sessions = async_sessionmaker[AsyncSession]

SCOPES = tuple(s.value for s in MuteScope)
LONGEST = timedelta(days=7)
SHORTEST = timedelta(minutes=1)
LISTED = 20  # still-broken cases named one per line in the summary
NUMBERED = 10  # case numbers named in the summary's first line
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})+$")
_PROVIDER = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class MuteError(ValueError):
    """What the operator asked cannot be done; the message says why, in one line."""


def normalise(scope: str, value: str) -> tuple[str, str]:
    """The scope and the value as stored (lower-cased); raise MuteError when either is wrong."""
    scope = scope.strip().lower()
    if scope not in SCOPES:
        raise MuteError(f"`{scope[:40]}` is not something to mute; use domain or provider.")
    value = value.strip().lower()
    if scope == MuteScope.DOMAIN:
        value = value.lstrip("@")
        if not _DOMAIN.match(value):
            raise MuteError(f"`{value[:80]}` is not an email domain, like example.com.")
    elif not _PROVIDER.match(value):
        raise MuteError(f"`{value[:80]}` is not a provider name, like google or microsoft.")
    return scope, value


def parse_length(text: str) -> timedelta:
    """How long a window lasts, from "30m", "2h" or "1d"; at least a minute, at most 7 days."""
    try:
        length = parse_duration(text.strip().lower())
    except (ValueError, OverflowError):
        raise MuteError(f"`{text[:40]}` is not a duration like 30m, 2h or 1d.") from None
    if length < SHORTEST:
        raise MuteError("A mute lasts at least 1 minute.")
    if length > LONGEST:
        raise MuteError(f"A mute lasts at most {how_long(LONGEST)}; `{text[:40]}` is longer.")
    return length


def scope_words(mute: Mute) -> str:
    """The window's scope as a sentence names it: "domain example.com"."""
    return f"{mute.scope} {mute.value}"


def matching(mutes: Sequence[Mute], account: Account) -> Mute | None:
    """The first of the windows that covers the account's domain or provider, if any."""
    domain = domain_of(account.email)
    provider = (account.provider or "").strip().lower() or None
    for mute in mutes:
        if (mute.scope == MuteScope.DOMAIN and mute.value == domain) or (
            mute.scope == MuteScope.PROVIDER and mute.value == provider
        ):
            return mute
    return None


async def mute_for(session: AsyncSession, account: Account, *, now: datetime) -> Mute | None:
    """The window in force at ``now`` that covers the account, if any."""
    return matching(await store.active(session, now=now), account)


def muted_line(mute: Mute, case: Case, now: datetime) -> cases.AuditLine:
    """The audit line of a case opened in a window (``record_event``'s arguments)."""
    return {
        "actor": actors.SYSTEM,
        "action": "muted",
        "at": now,
        "case_id": case.id,
        "account_id": case.account_id,
        "details": {"mute": mute.id, "scope": mute.scope, "value": mute.value},
    }


async def start(
    sessions: Sessions,
    *,
    scope: str,
    value: str,
    length: timedelta,
    actor: str,
    now: datetime,
    reason: str | None = None,
) -> Mute:
    """Open a window from ``now``; refuse a scope already muted."""
    scope, value = normalise(scope, value)
    if not SHORTEST <= length <= LONGEST:
        raise MuteError(f"A mute lasts between 1 min and {how_long(LONGEST)}.")
    async with sessions() as session, session.begin():
        for held in await store.active(session, now=now):
            if (held.scope, held.value) == (scope, value):
                raise MuteError(
                    f"{scope_words(held)} is already muted (mute #{held.id}, until "
                    f"{held.ends_at:%Y-%m-%d %H:%M} UTC); end it first."
                )
        mute = await store.add(
            session,
            scope=scope,
            value=value,
            starts_at=now,
            ends_at=now + length,
            created_by=actor,
            reason=(reason or "").strip()[:500] or None,
        )
    log.info(
        "mute started",
        extra={"mute": mute.id, "scope": scope, "value": value, "actor": actor},
    )
    return mute


async def end(sessions: Sessions, *, mute_id: int, actor: str, now: datetime, channel: str) -> Mute:
    """End a window now and queue its summary to ``channel``; refuse one unknown or over."""
    async with sessions() as session, session.begin():
        mute = await store.get_for_update(session, mute_id=mute_id)
        if mute is None:
            raise MuteError(f"There is no mute #{mute_id}.")
        if mute.ended_at is not None or mute.ends_at <= now:
            raise MuteError(f"Mute #{mute_id} ({scope_words(mute)}) is already over.")
        mute.ended_at, mute.ended_by = now, actor
        session.add(mute)
        await _summarise(session, mute, now=now, channel=channel)
    log.info("mute ended early", extra={"mute": mute_id, "actor": actor})
    return mute


async def listing(sessions: Sessions, *, now: datetime) -> Sequence[Mute]:
    """The windows in force now."""
    async with sessions() as session:
        return await store.active(session, now=now)


async def summarise_ended(sessions: Sessions, *, now: datetime, channel: str) -> int:
    """Queue the summary of every window that ran to its end; return how many."""
    done = 0
    while True:
        async with sessions() as session, session.begin():
            batch = await store.due_summaries(session, now=now, limit=50)
            for mute in batch:
                await _summarise(session, mute, now=now, channel=channel)
        done += len(batch)
        if len(batch) < 50:
            return done


async def _summarise(session: AsyncSession, mute: Mute, *, now: datetime, channel: str) -> None:
    """Queue the window's one summary (keyed by the window) and mark it summarised."""
    rows = await store.cases_of(session, mute_id=mute.id or 0)
    payload = summary_payload(mute, rows)
    await outbox.enqueue(
        session,
        channel=channel,
        kind=OutboxKind.NOTICE,
        now=now,
        payload=payload,
        dedupe_key=f"mute:{mute.id}:summary",
    )
    mute.summarised_at = now
    session.add(mute)
    log.info("mute summarised", extra={"mute": mute.id, "cases": len(rows)})


def summary_payload(mute: Mute, rows: Sequence[tuple[Case, Account]]) -> dict[str, object]:
    """The summary notice: a title, its one-line text, and the still-broken cases in lines."""
    broken = [(case, account) for case, account in rows if store.still_open(case)]
    resolved = len(rows) - len(broken)
    title = f"Mute of {scope_words(mute)} ended"
    if not rows:
        text = f"{title}: no account broke during it."
    else:
        numbers = ", ".join(f"#{case.id}" for case, _ in broken[:NUMBERED])
        numbers += ", …" if len(broken) > NUMBERED else ""
        still = f"{len(broken)} still broken" + (f" ({numbers})" if broken else "")
        text = (
            f"{title}: {_count(len(rows), 'account')} broke during it, {still}, "
            f"{resolved} resolved."
        )
    lines = [text, _window_line(mute)]
    for case, account in broken[:LISTED]:
        who = account.email or account.id
        state = classify(account.api_version, case.state).words if case.state else case.kind
        lines.append(f"#{case.id} {who}: {state} ({case.state or case.kind}), {case.status}.")
    if len(broken) > LISTED:
        lines.append(f"… and {len(broken) - LISTED} more.")
    if broken:
        lines.append(
            f"They got no alert and do not escalate: act on them with "
            f"/reauth list --{mute.scope} {mute.value}"
        )
    return {"title": title, "text": text, "lines": lines, "mute": mute.id}


def _window_line(mute: Mute) -> str:
    ended = mute.until
    by = actors.name(mute.created_by)
    line = (
        f"Muted by {by} from {mute.starts_at:%Y-%m-%d %H:%M} to {ended:%Y-%m-%d %H:%M} UTC "
        f"({how_long(ended - mute.starts_at)})"
    )
    if mute.ended_by is not None:
        line += f", ended early by {actors.name(mute.ended_by)}"
    return line + (f"; reason: {mute.reason}" if mute.reason else "") + "."


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
