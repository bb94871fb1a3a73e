"""Opening a case: the case row, its audit line, its alert (or its place in a storm)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlmodel.ext.asyncio.session import AsyncSession

from storage import cases, outbox
from storage.models import Account, Case, OutboxKind
from workflows import incidents
from workflows.diagnosis import refresh
from workflows.mutes import mute_for, muted_line
from workflows.policy import Storms

log = logging.getLogger("reauthbot.lifecycle")

# Chooses the channel of a case's alert from the account's email (routing by domain).
Router = Callable[[str | None], str]


@dataclass(frozen=True, slots=True)
class Outcome:
    # "opened", "updated", "resolved", "stale", "recorded", "unchanged", "not_applied"
    action: str
    case_id: int | None = None


async def open_case_for(
    session: AsyncSession,
    account: Account,
    *,
    kind: str,
    state: str | None,
    broken_since: datetime,
    actor: str,
    now: datetime,
    route: Router,
    audit: dict[str, object],
    storms: Storms | None = None,
    diagnose_later: list[tuple[Case, Account]] | None = None,
) -> Outcome:
    """Open a case for the account and queue its alert (the caller checked none is open).

    With ``storms``, a case that is part of a storm joins its incident instead of being
    posted on its own. During a storm most cases open into an incident that is already
    open: the incident's message stands for them from the start, so they get no alert and
    no findings of their own (``/reauth show`` works those out when asked).

    With ``diagnose_later``, a case that gets findings is appended to it instead of being
    diagnosed here: the caller diagnoses the cases it opened together in one go.

    A case of a domain or provider that is muted (``workflows.mutes``) joins no storm and
    gets no alert: it records the window instead, which summarises it when it ends.
    """
    # The case records where its alert goes; the message ts is added once it is posted.
    channel = route(account.email)
    mute = await mute_for(session, account, now=now)
    incident = None
    if mute is None:
        incident = await incidents.open_for(session, account, storms=storms, now=now)
    case = await cases.open_case(
        session,
        account_id=account.id,
        kind=kind,
        state=state,
        now=now,
        channel=channel,
        broken_since=min(broken_since, now),
        incident_id=incident.id if incident else None,
    )
    if case is None:  # another worker opened it between our read and insert
        raise RuntimeError(f"case for account {account.id} opened concurrently; retry")
    assert case.id is not None
    await cases.record_event(
        session,
        actor=actor,
        action="opened",
        at=now,
        case_id=case.id,
        account_id=account.id,
        details=audit,
        flush=incident is None,
    )
    if mute is not None:
        case.muted_by, case.own_alert = mute.id, False
        session.add(case)
        await cases.record_event(session, **muted_line(mute, case, now))
        if diagnose_later is None:
            await refresh(session, case=case, account=account, now=now)
        else:
            diagnose_later.append((case, account))
    elif incident is not None:
        await incidents.opened_into(session, incident, case, now=now)
    else:
        await outbox.enqueue(
            session,
            channel=channel,
            kind=OutboxKind.POST,
            now=now,
            case_id=case.id,
            dedupe_key=f"case:{case.id}:post",
        )
        if diagnose_later is None:
            await refresh(session, case=case, account=account, now=now)
        else:
            diagnose_later.append((case, account))
        await incidents.place(session, case, account, storms=storms, now=now)
    log.info("case opened", extra={"case": case.id, "account": account.id, "kind": kind})
    return Outcome("opened", case.id)
