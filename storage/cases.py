"""Queries on accounts, cases and the audit log."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import make_transient_to_detached
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage._sql import dialect_insert, insert_ignoring_conflict
from storage.models import OPEN_CASE_SQL, Account, Case, CaseEvent, CaseStatus, built, domain_of


async def get_account(session: AsyncSession, *, account_id: str) -> Account | None:
    return await session.get(Account, account_id)


async def get_case(session: AsyncSession, *, case_id: int) -> Case | None:
    return await session.get(Case, case_id)


async def get_open_case(session: AsyncSession, *, account_id: str) -> Case | None:
    stmt = select(Case).where(Case.account_id == account_id, Case.status != CaseStatus.RESOLVED)
    return (await session.exec(stmt)).first()


async def open_case(
    session: AsyncSession,
    *,
    account_id: str,
    kind: str,
    state: str | None,
    now: datetime,
    channel: str | None = None,
    broken_since: datetime | None = None,
    incident_id: int | None = None,
) -> Case | None:
    """Open a case for the account, or return None when it already has an open one.

    A case opened into an incident has no alert of its own: the incident's message stands
    for it. The partial unique index decides races between two writers; the loser gets None.
    """
    case = Case(
        account_id=account_id,
        kind=kind,
        state=state,
        status=CaseStatus.OPEN,
        opened_at=now,
        updated_at=now,
        slack_channel=channel,
        broken_since=broken_since or now,
        incident_id=incident_id,
        own_alert=incident_id is None,
    )
    table = Case.__table__  # type: ignore[attr-defined]
    values = {c.name: getattr(case, c.name) for c in table.columns if c.name != "id"}
    # One statement, where a savepoint around an ORM insert took three.
    case.id = await insert_ignoring_conflict(
        session, Case, values, unique="account_id", where=OPEN_CASE_SQL
    )
    if case.id is None:
        return None
    make_transient_to_detached(case)  # as if just read from the database
    session.add(case)
    return case


async def list_open_cases(
    session: AsyncSession, *, limit: int | None = None
) -> Sequence[tuple[Case, Account]]:
    """Return open cases with their accounts, oldest first."""
    stmt = (
        select(Case, Account)
        .join(Account, col(Account.id) == col(Case.account_id))
        .where(Case.status != CaseStatus.RESOLVED)
        .order_by(col(Case.opened_at), col(Case.id))
        .limit(limit)
    )
    return (await session.exec(stmt)).all()


async def record_event(
    session: AsyncSession,
    *,
    actor: str,
    action: str,
    at: datetime,
    case_id: int | None = None,
    account_id: str | None = None,
    details: dict[str, Any] | None = None,
    flush: bool = True,
) -> None:
    """Append one line to the audit log, now.

    Whatever the session holds unwritten is flushed first (the line may refer to it). The line
    itself is one cached INSERT, without the unit of work an ORM object would go through: a
    storm writes two per case. ``flush`` is kept for callers that batch their own changes; the
    line is written at once either way.
    """
    if session.new or session.dirty or session.deleted:
        await session.flush()
    values = {
        "case_id": case_id,
        "account_id": account_id,
        "actor": actor,
        "action": action,
        "at": at,
        "details": details or {},
    }
    await session.exec(_AUDIT_LINE, params=values)


_AUDIT_LINE = sa.insert(CaseEvent.__table__)  # type: ignore[attr-defined]


async def case_events(session: AsyncSession, *, case_id: int) -> Sequence[CaseEvent]:
    """Return the audit log of a case, oldest first."""
    stmt = select(CaseEvent).where(CaseEvent.case_id == case_id).order_by(col(CaseEvent.id))
    return (await session.exec(stmt)).all()


# An audit line as ``record_event`` takes it (``at`` included), for ``record_events``.
AuditLine = dict[str, Any]

# --- many at once: the ingest worker's stages write a whole batch in a statement per table ---

_ACCOUNTS = Account.__table__  # type: ignore[attr-defined]
_CASES = Case.__table__  # type: ignore[attr-defined]
_AUDIT = CaseEvent.__table__  # type: ignore[attr-defined]


async def accounts_for_update(
    session: AsyncSession, *, account_ids: Sequence[str]
) -> dict[str, Account]:
    """The accounts of ``account_ids`` that exist, locked for this transaction, by id.

    They are copies the session does not hold: the caller changes them in memory and writes
    them back with ``write_accounts``; a later ``session.get`` reads the written rows.
    """
    if not account_ids:
        return {}
    stmt = (
        sa.select(_ACCOUNTS)
        .where(_ACCOUNTS.c.id.in_(sorted(set(account_ids))))
        .order_by(_ACCOUNTS.c.id)  # locked in one order by every worker
        .with_for_update()
    )
    rows = (await session.exec(stmt)).mappings().all()  # type: ignore[call-overload]
    return {row["id"]: built(Account, dict(row)) for row in rows}


async def write_accounts(
    session: AsyncSession, *, new: Sequence[Account], changed: Sequence[Account]
) -> None:
    """Insert ``new`` accounts and write back ``changed`` ones (read by ``accounts_for_update``).

    A new account that another writer inserted meanwhile fails the insert, as the ORM's
    would: the caller's transaction is rolled back and tried again.
    """
    columns = [c.name for c in _ACCOUNTS.columns]

    def row(account: Account) -> dict[str, Any]:
        account.email_domain = domain_of(account.email)
        return {name: getattr(account, name) for name in columns}

    if new:
        insert = sa.insert(_ACCOUNTS).returning(_ACCOUNTS.c.id)
        await session.exec(insert, params=[row(a) for a in new])
    if changed:
        # Rows this transaction has locked: the upsert only ever updates them, in a statement
        # for all of them.
        upsert = dialect_insert(session, _ACCOUNTS)
        upsert = upsert.on_conflict_do_update(
            index_elements=["id"],
            set_={name: upsert.excluded[name] for name in columns if name != "id"},
        ).returning(_ACCOUNTS.c.id)
        await session.exec(upsert, params=[row(a) for a in changed])
    # A copy the session loaded earlier in the transaction is out of date now.
    written = {a.id for a in (*new, *changed)}
    for held in list(session.sync_session.identity_map.values()):
        if isinstance(held, Account) and held.id in written:
            session.expire(held)


async def open_cases_of(session: AsyncSession, *, account_ids: Sequence[str]) -> dict[str, Case]:
    """The open case of each of ``account_ids`` that has one, by account (copies, as above)."""
    if not account_ids:
        return {}
    stmt = sa.select(_CASES).where(
        _CASES.c.account_id.in_(sorted(set(account_ids))),
        _CASES.c.status != CaseStatus.RESOLVED,
    )
    rows = (await session.exec(stmt)).mappings().all()  # type: ignore[call-overload]
    return {row["account_id"]: built(Case, dict(row)) for row in rows}


async def open_many(session: AsyncSession, *, opening: Sequence[Case]) -> int:
    """Insert new cases in one statement, setting their ids; return how many were inserted.

    At most one per account. An account that meanwhile got an open case from another writer
    gets none (the partial unique index decides), and its case keeps ``id`` None.
    """
    if not opening:
        return 0
    columns = [c.name for c in _CASES.columns if c.name != "id"]
    stmt = (
        dialect_insert(session, _CASES)
        .on_conflict_do_nothing(index_elements=["account_id"], index_where=sa.text(OPEN_CASE_SQL))
        .returning(_CASES.c.id, _CASES.c.account_id)
    )
    params = [{name: getattr(case, name) for name in columns} for case in opening]
    rows = (await session.exec(stmt, params=params)).all()
    ids = {account_id: case_id for case_id, account_id in rows}
    for case in opening:
        case.id = ids.get(case.account_id)
    return len(ids)


def attach(session: AsyncSession, case: Case) -> Case:
    """Let the session hold a case written by ``open_many``, as if just read."""
    make_transient_to_detached(case)
    session.add(case)
    return case


async def acknowledge_many(
    session: AsyncSession, *, case_ids: Collection[int], actor: str, at: datetime
) -> list[Case]:
    """Acknowledge those of the cases not acknowledged yet nor resolved, in one statement;
    return them as they are now, oldest first (not held by the session).

    An open case becomes acknowledged; a snoozed one, or one waiting on the end user, keeps
    its status, as acknowledging it alone does.
    """
    if not case_ids:
        return []
    status = _CASES.c.status
    stmt = (
        sa.update(_CASES)
        .where(
            _CASES.c.id.in_(sorted(case_ids)),
            _CASES.c.acknowledged_at.is_(None),
            status != CaseStatus.RESOLVED,
        )
        .values(
            status=sa.case((status == CaseStatus.OPEN, CaseStatus.ACKNOWLEDGED), else_=status),
            acknowledged_at=at,
            acknowledged_by=actor,
            updated_at=at,
        )
        .returning(*_CASES.c)
    )
    rows = (await session.exec(stmt)).mappings().all()
    acked = [built(Case, dict(row)) for row in rows]
    return sorted(acked, key=lambda case: (case.opened_at, case.id or 0))


async def record_events(session: AsyncSession, *, lines: Sequence[AuditLine]) -> None:
    """Append audit lines (``record_event``'s arguments, ``at`` included) in one statement.

    They are numbered in the order given.
    """
    if not lines:
        return
    if session.new or session.dirty or session.deleted:
        await session.flush()  # a line may refer to what the session holds unwritten
    params = [
        {
            "case_id": line.get("case_id"),
            "account_id": line.get("account_id"),
            "actor": line["actor"],
            "action": line["action"],
            "at": line["at"],
            "details": line.get("details") or {},
        }
        for line in lines
    ]
    stmt = sa.insert(_AUDIT).returning(_AUDIT.c.id, sort_by_parameter_order=True)
    await session.exec(stmt, params=params)


async def live_accounts_with_emails(
    session: AsyncSession, *, emails: Sequence[str]
) -> Sequence[tuple[str, str, str]]:
    """``(id, email, api_version)`` of the accounts not deleted that have one of ``emails``.

    An email matches as given and lower-cased (the index on the column serves both), as
    duplicate flagging compares them.
    """
    wanted = sorted({v for e in emails if e for v in (e.strip(), e.strip().lower())})
    if not wanted:
        return []
    stmt = sa.select(_ACCOUNTS.c.id, _ACCOUNTS.c.email, _ACCOUNTS.c.api_version).where(
        _ACCOUNTS.c.email.in_(wanted),
        sa.func.coalesce(_ACCOUNTS.c.sync_state, "") != "deleted",
    )
    return [tuple(r) for r in (await session.exec(stmt)).all()]  # type: ignore[call-overload]
