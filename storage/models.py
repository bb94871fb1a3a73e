"""Tables of reauthbot.

- ``Account``: the latest known state of one Nylas v2 account or v3 grant.
- ``Case``: one problem episode of an account, from the first bad state to its resolution.
- ``CaseEvent``: the audit log: who or what did what, when, with details.
- ``InboxDelivery``: every verified webhook delivery (and every poll difference), stored before
  it is acknowledged and processed afterwards.
- ``OutboxMessage``: every message to post or update, written in the same transaction as the
  state change that caused it and drained by the notifier.
- ``Incident``: a storm: many cases of one email domain (or one v3 integration) opened within a
  short window, shown as one message instead of one per case.
- ``WebhookAlert``: one episode of a Nylas webhook destination that does not deliver account
  events, from the first check that saw it to the one that saw it active again.
- ``PostedNotice``: where a notice that is later updated in place (a webhook alert) was posted.
- ``SlackRequest``: the signature of every Slack request served in the last minutes, so that
  a copy replayed within Slack's 5-minute signature window is served once, by any replica.
- ``SlackView``: the modals the app opened, so that only their submissions are accepted.
- ``ReauthLink``: a tracked re-authentication link handed out for a case (``/r/{token}``),
  and what became of it: sent to the end user, opened.
- ``Mute``: a maintenance window: no alert for the cases of one email domain or one provider
  until it ends, and one summary when it does.

All timestamps are aware UTC datetimes. The uniqueness rules that make deduplication hold under
concurrency live here as constraints, not in application code:

- one inbox row per ``dedupe_key``;
- at most one open case per account (a partial unique index);
- at most one incident taking new cases per domain or integration (a partial unique index);
- at most one outbox row per ``dedupe_key`` (used for "post the parent message once");
- at most one open webhook alert per destination (a partial unique index);
- one tracked link per token.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm.instrumentation import manager_of_class
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and always read back timezone-aware.

    SQLite has no timezone type, so naive values would otherwise come back from it while
    PostgreSQL returns aware ones; this keeps both engines identical for the code above.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def domain_of(email: str | None) -> str | None:
    """The domain of an email: the part after its last '@', stripped and lower-cased, or None.

    The last '@', not the first: RFC 5321 allows an '@' inside a quoted local part
    (``"a@b"@example.com``), never in the domain. This is the one definition of an email's
    domain; SQL reads the ``Account.email_domain`` column it fills rather than computing
    its own.
    """
    if not email or "@" not in email:
        return None
    return email.rsplit("@", 1)[1].strip().lower() or None


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


Model = TypeVar("Model", bound=SQLModel)


def built(model: type[Model], values: dict[str, Any]) -> Model:
    """An instance of a table model made as a read from the database makes one: ``values``
    over the fields' defaults, without the constructor's validation and attribute events.

    For the objects the ingest stages make by the thousand and write with statements of their
    own: the constructor took about a fifth of a storm's processing time. The values are
    taken as they are; they must be what the columns hold.
    """
    sa.orm.configure_mappers()  # as a query would first (at once when done already)
    instance = manager_of_class(model).new_instance()
    fixed, made = _defaults(model)
    held = instance.__dict__
    held.update(fixed)
    for name, factory in made:
        held[name] = factory()
    held.update(values)
    return instance


@functools.cache
def _defaults(model: type[SQLModel]) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """The fields' plain defaults, and the factories of the others (a dict each, say)."""
    optional = {n: f for n, f in model.model_fields.items() if not f.is_required()}
    fixed = {n: f.default for n, f in optional.items() if f.default_factory is None}
    made = [(n, f.default_factory) for n, f in optional.items() if f.default_factory is not None]
    return fixed, made


def _ts(*, nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_type=UTCDateTime(), nullable=nullable, index=index)


def _json() -> Any:
    return Field(default_factory=dict, sa_type=sa.JSON(), nullable=False)


class ApiVersion(StrEnum):
    """The Nylas API an account or grant belongs to (a StrEnum: equal to the stored string)."""

    V2 = "v2"
    V3 = "v3"


class CaseKind(StrEnum):
    """Why a case was opened; decides the advice and the buttons shown."""

    REAUTH = "reauth"  # credentials invalid or grant expired: the end user must re-authenticate
    STOPPED = "stopped"  # v2 stopped: retry sync first, re-auth if it stays stopped
    SUPPORT = "support"  # exception / sync-error: Nylas support must look at it
    STUCK = "stuck"  # a transient state that lasted too long
    DUPLICATE = "duplicate"  # a second account id for one email: billed twice
    UNKNOWN = "unknown"  # a state reauthbot does not know: kept and shown, never dropped


class CaseStatus(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    WAITING_ON_USER = "waiting_on_user"
    SNOOZED = "snoozed"
    RESOLVED = "resolved"


class InboxStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    SUPERSEDED = "superseded"  # coalesced into a later update of the same message


class OutboxKind(StrEnum):
    POST = "post"  # the case's parent message, once
    UPDATE = "update"  # re-render the parent message in place
    THREAD = "thread"  # one line in the parent's thread
    DM = "dm"  # the alert sent to one person (the channel is the user id)
    PAGE = "page"  # a PagerDuty event (the channel is PAGER_CHANNEL)
    # A message of no case: the daily digest (payload title, text, lines) or a webhook alert
    # (payload "about"). With a payload "key", where it lands is recorded (PostedNotice) so
    # the two kinds below can find it.
    NOTICE = "notice"
    NOTICE_UPDATE = "notice_update"  # re-render the notice posted under payload "key"
    NOTICE_THREAD = "notice_thread"  # one line (payload "text") in that notice's thread
    OUTREACH = "outreach"  # an email or webhook event to the end user (OUTREACH_CHANNEL)


PAGER_CHANNEL = "pagerduty"
# The outbox channel of messages to end users (payload "event": reauth.requested, .nudge,
# .completed), sent by email through Nylas or to the team's own webhook.
OUTREACH_CHANNEL = "outreach"


class IncidentStatus(StrEnum):
    OPEN = "open"
    ENDED = "ended"  # every case of it resolved


class IncidentScope(StrEnum):
    DOMAIN = "domain"  # accounts of one email domain
    INTEGRATION = "integration"  # v3 grants of one provider integration (google, microsoft…)
    CREDENTIAL = "credential"  # v3 grants authenticated through one connector credential


class MuteScope(StrEnum):
    DOMAIN = "domain"  # accounts of one email domain (``domain_of`` their email)
    PROVIDER = "provider"  # accounts of one provider (google, microsoft, imap…)


class Account(SQLModel, table=True):
    __tablename__ = "accounts"

    id: str = Field(primary_key=True, max_length=255)
    api_version: str = Field(max_length=8)
    email: str | None = Field(default=None, max_length=320, index=True)
    # domain_of(email), kept in step by _derive_domain and filled by bulk inserts (storms,
    # diagnosis and reports by domain look accounts up by it).
    email_domain: str | None = Field(default=None, max_length=320, index=True)
    provider: str | None = Field(default=None, max_length=64)
    sync_state: str | None = Field(default=None, max_length=64)
    billing_state: str | None = Field(default=None, max_length=32)
    # Event time of the state held here; an event older than this is recorded, not applied.
    state_at: datetime | None = _ts()
    # Since when the account has been in ``sync_state`` (unchanged by repeats of the same
    # state): how long a transient state has lasted.
    state_since: datetime | None = _ts()
    first_seen_at: datetime = Field(sa_type=UTCDateTime(), nullable=False)
    updated_at: datetime = Field(sa_type=UTCDateTime(), nullable=False)
    details: dict[str, Any] = _json()
    # v3: the connector credential the grant was authenticated through, when Nylas says so
    # (integration storms group grants by it).
    credential_id: str | None = Field(default=None, max_length=255)
    # When the account was (re)connected: v2 ``account.connected``, v3 ``grant.created`` or a
    # re-authentication. A new account may stay partial for up to a week.
    connected_at: datetime | None = _ts()
    # An operator said this account only sends (the email.send scope), so it stays
    # initializing for good: it is never alerted for initializing.
    send_only: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})


@sa.event.listens_for(Account, "before_insert")
@sa.event.listens_for(Account, "before_update")
def _derive_domain(mapper: Any, connection: Any, account: Account) -> None:
    """Keep ``email_domain`` in step with ``email`` on every ORM write."""
    account.email_domain = domain_of(account.email)


# An incident that still takes new cases, in SQL: the condition of its unique index.
ABSORBING_INCIDENT_SQL = "status = 'open' AND sealed_at IS NULL"


# A case that is not resolved, in SQL: the condition of the one-open-case-per-account index.
OPEN_CASE_SQL = f"status != '{CaseStatus.RESOLVED.value}'"


class Case(SQLModel, table=True):
    __tablename__ = "cases"
    __table_args__ = (
        # One open episode per account: two concurrent openers cannot both succeed.
        sa.Index(
            "uq_cases_one_open_per_account",
            "account_id",
            unique=True,
            sqlite_where=sa.text(OPEN_CASE_SQL),
            postgresql_where=sa.text(OPEN_CASE_SQL),
        ),
        sa.Index("ix_cases_status_opened", "status", "opened_at"),
        sa.Index("ix_cases_status_escalation_due", "status", "escalation_due_at"),
        # Reports over a window (/reauth stats) select cases by these times.
        sa.Index("ix_cases_opened_at", "opened_at"),
        sa.Index("ix_cases_acknowledged_at", "acknowledged_at"),
        sa.Index("ix_cases_resolved_at", "resolved_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    account_id: str = Field(foreign_key="accounts.id", max_length=255, index=True)
    kind: str = Field(max_length=32)
    status: str = Field(default=CaseStatus.OPEN, max_length=32)
    state: str | None = Field(default=None, max_length=64)  # the account state that is wrong
    opened_at: datetime = Field(sa_type=UTCDateTime(), nullable=False)
    updated_at: datetime = Field(sa_type=UTCDateTime(), nullable=False)
    acknowledged_at: datetime | None = _ts()
    acknowledged_by: str | None = Field(default=None, max_length=64)
    snoozed_until: datetime | None = _ts()
    resolved_at: datetime | None = _ts()
    resolved_by: str | None = Field(default=None, max_length=64)
    resolution: str | None = Field(default=None, sa_type=sa.Text())
    slack_channel: str | None = Field(default=None, max_length=64)
    slack_ts: str | None = Field(default=None, max_length=32)
    last_error: str | None = Field(default=None, sa_type=sa.Text())
    # An operator action that calls Nylas holds the case until then, so a second click
    # cannot make a second call; a crashed holder's lease simply runs out.
    busy_with: str | None = Field(default=None, max_length=64)
    busy_until: datetime | None = _ts()
    # When the account went bad, per the event that opened the case (Nylas' 72-hour window
    # for resending missed notifications counts from here).
    broken_since: datetime | None = _ts()
    # Escalation: steps of the policy already run, and when the next one is due (NULL and 0:
    # not scheduled yet; NULL otherwise: nothing left to run).
    escalation_step: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    escalation_due_at: datetime | None = _ts()
    # The PagerDuty alert of the case, as last told to PagerDuty: triggered, acknowledged,
    # resolved (NULL: never paged).
    pager_state: str | None = Field(default=None, max_length=16)
    # The storm this case is part of; its alert is then the incident's message.
    incident_id: int | None = Field(default=None, foreign_key="incidents.id", index=True)
    # The likely causes found when the case opened or changed (workflows.diagnosis).
    diagnosis: list[dict[str, Any]] = Field(default_factory=list, sa_type=sa.JSON())
    # A duplicate case: the other, newer account id of the same mailbox.
    related_account_id: str | None = Field(default=None, max_length=255)
    # False when the case never got a message of its own: its incident's message stands
    # for it (its post was withdrawn before it was sent).
    own_alert: bool = Field(default=True, sa_column_kwargs={"server_default": sa.true()})
    # The maintenance window the case opened in: it got no alert and does not escalate; the
    # window's summary names it when the window ends.
    muted_by: int | None = Field(default=None, foreign_key="mutes.id", index=True)


class Incident(SQLModel, table=True):
    __tablename__ = "incidents"
    __table_args__ = (
        # One storm taking new cases per domain or integration, whoever detects it first.
        sa.Index(
            "uq_incidents_one_open_per_key",
            "scope",
            "key",
            unique=True,
            sqlite_where=sa.text(ABSORBING_INCIDENT_SQL),
            postgresql_where=sa.text(ABSORBING_INCIDENT_SQL),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    scope: str = Field(max_length=16)  # IncidentScope
    key: str = Field(max_length=320)  # the domain or the integration
    status: str = Field(default=IncidentStatus.OPEN, max_length=16)
    opened_at: datetime = Field(sa_type=UTCDateTime(), nullable=False)
    updated_at: datetime = Field(sa_type=UTCDateTime(), nullable=False)
    # When the first of its cases opened: "37 accounts lost access in 4 minutes".
    first_case_at: datetime = Field(sa_type=UTCDateTime(), nullable=False)
    last_case_at: datetime = Field(sa_type=UTCDateTime(), nullable=False)
    ended_at: datetime | None = _ts()
    slack_channel: str | None = Field(default=None, max_length=64)
    slack_ts: str | None = Field(default=None, max_length=32)
    acknowledged_at: datetime | None = _ts()
    acknowledged_by: str | None = Field(default=None, max_length=64)
    # Escalation of the incident as a whole (its cases do not escalate one by one).
    escalation_step: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    escalation_due_at: datetime | None = _ts()
    pager_state: str | None = Field(default=None, max_length=16)  # as on Case
    # When the storm was over (no case joined for the window, or it grew too old): its
    # cases stay with it, but later cases of its domain or integration alert on their own.
    sealed_at: datetime | None = _ts()


class CaseEvent(SQLModel, table=True):
    __tablename__ = "case_events"
    __table_args__ = (sa.Index("ix_case_events_account_at", "account_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    case_id: int | None = Field(default=None, foreign_key="cases.id", index=True)
    account_id: str | None = Field(default=None, max_length=255)
    at: datetime = Field(sa_type=UTCDateTime(), nullable=False)
    actor: str = Field(max_length=128)  # storage.actors: "system", "nylas", "slack:U123", "cli"
    action: str = Field(max_length=64)
    details: dict[str, Any] = _json()


class InboxDelivery(SQLModel, table=True):
    __tablename__ = "inbox"
    __table_args__ = (sa.Index("ix_inbox_status_id", "status", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    dedupe_key: str = Field(max_length=255, unique=True)
    source: str = Field(max_length=32)  # "nylas-v2", "nylas-v3", "poll"
    received_at: datetime = Field(sa_type=UTCDateTime(), nullable=False)
    body: str = Field(sa_type=sa.Text())
    status: str = Field(default=InboxStatus.PENDING, max_length=16)
    attempts: int = Field(default=0)
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_until: datetime | None = _ts()
    processed_at: datetime | None = _ts()
    last_error: str | None = Field(default=None, sa_type=sa.Text())


class OutboxMessage(SQLModel, table=True):
    __tablename__ = "outbox"
    __table_args__ = (sa.Index("ix_outbox_status_available", "status", "available_at"),)

    id: int | None = Field(default=None, primary_key=True)
    # Set for messages that must exist at most once, e.g. "case:42:post".
    dedupe_key: str | None = Field(default=None, max_length=255, unique=True)
    case_id: int | None = Field(default=None, foreign_key="cases.id", index=True)
    # Set instead of ``case_id`` for the messages of an incident.
    incident_id: int | None = Field(default=None, foreign_key="incidents.id", index=True)
    channel: str = Field(max_length=64)
    kind: str = Field(max_length=16)
    payload: dict[str, Any] = _json()
    status: str = Field(default=OutboxStatus.PENDING, max_length=16)
    attempts: int = Field(default=0)
    created_at: datetime = Field(sa_type=UTCDateTime(), nullable=False)
    available_at: datetime = Field(sa_type=UTCDateTime(), nullable=False)
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_until: datetime | None = _ts()
    sent_at: datetime | None = _ts()
    last_error: str | None = Field(default=None, sa_type=sa.Text())


class Lease(SQLModel, table=True):
    """Who runs a one-at-a-time job (the reconciliation pass) until when (storage.leases)."""

    __tablename__ = "leases"

    name: str = Field(primary_key=True, max_length=64)
    owner: str = Field(max_length=128)
    until: datetime = Field(sa_type=UTCDateTime(), nullable=False)


# A webhook alert still open, in SQL: the condition of its one-per-destination index.
OPEN_WEBHOOK_ALERT_SQL = "resolved_at IS NULL"


class WebhookAlert(SQLModel, table=True):
    """A webhook destination with account triggers that is not active, and its alert."""

    __tablename__ = "webhook_alerts"
    __table_args__ = (
        # One alert per episode, whichever replica's check sees it first.
        sa.Index(
            "uq_webhook_alerts_one_open",
            "api_version",
            "destination_id",
            unique=True,
            sqlite_where=sa.text(OPEN_WEBHOOK_ALERT_SQL),
            postgresql_where=sa.text(OPEN_WEBHOOK_ALERT_SQL),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    api_version: str = Field(max_length=8)
    destination_id: str = Field(max_length=255)
    url: str = Field(sa_type=sa.Text())
    status: str = Field(max_length=32)  # the last status seen while not active
    # Since when it is in ``status``: Nylas' status_updated_at, else when reauthbot saw it.
    since: datetime = Field(sa_type=UTCDateTime(), nullable=False)
    opened_at: datetime = Field(sa_type=UTCDateTime(), nullable=False)
    updated_at: datetime = Field(sa_type=UTCDateTime(), nullable=False)
    resolved_at: datetime | None = _ts()
    # "active" (delivering again) or "gone" (deleted, or no longer has account triggers).
    resolution: str | None = Field(default=None, max_length=16)


class PostedNotice(SQLModel, table=True):
    """Where a notice with a key was posted, so later updates and thread lines find it."""

    __tablename__ = "posted_notices"

    key: str = Field(primary_key=True, max_length=255)
    channel: str = Field(max_length=64)
    ts: str = Field(max_length=32)
    posted_at: datetime = Field(sa_type=UTCDateTime(), nullable=False)


class SlackRequest(SQLModel, table=True):
    """A signed Slack request already served (storage.slack_requests)."""

    __tablename__ = "slack_requests"

    signature: str = Field(primary_key=True, max_length=128)
    # X-Slack-Request-Timestamp: once it is over 5 minutes old the signature check refuses
    # the request anyway, so the row can go.
    timestamp: int = Field(sa_type=sa.BigInteger(), index=True)


class SlackView(SQLModel, table=True):
    """A modal the app opened, whose submission it expects until ``expires_at``."""

    __tablename__ = "slack_views"

    view_id: str = Field(primary_key=True, max_length=64)
    expires_at: datetime = Field(sa_type=UTCDateTime(), nullable=False, index=True)


class ReauthLink(SQLModel, table=True):
    """A re-authentication link on reauthbot's own address, ``{public URL}/r/{token}``.

    Only the token's SHA-256 is stored: whoever reads the database cannot open the links.
    Opening one redirects to a Nylas hosted-auth URL built at that moment.
    """

    __tablename__ = "reauth_links"

    id: int | None = Field(default=None, primary_key=True)
    token_hash: str = Field(max_length=64, unique=True)
    case_id: int = Field(foreign_key="cases.id", index=True)
    created_by: str = Field(max_length=128)  # an actor (storage.actors)
    created_at: datetime = Field(sa_type=UTCDateTime(), nullable=False)
    expires_at: datetime = Field(sa_type=UTCDateTime(), nullable=False)
    # Sent to the end user by outreach ("nylas" or "webhook"), and when it went out.
    sent_via: str | None = Field(default=None, max_length=16)
    sent_at: datetime | None = _ts()
    first_opened_at: datetime | None = _ts()
    last_opened_at: datetime | None = _ts()
    opens: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    # When the case said the link was opened but not completed within a day.
    stalled_at: datetime | None = _ts()


class Mute(SQLModel, table=True):
    """A maintenance window: cases of one domain or provider opened in it are not alerted."""

    __tablename__ = "mutes"
    __table_args__ = (sa.Index("ix_mutes_summarised_ends", "summarised_at", "ends_at"),)

    id: int | None = Field(default=None, primary_key=True)
    scope: str = Field(max_length=16)  # MuteScope
    value: str = Field(max_length=320)  # the domain or provider, lower-cased
    starts_at: datetime = Field(sa_type=UTCDateTime(), nullable=False)
    ends_at: datetime = Field(sa_type=UTCDateTime(), nullable=False)  # as planned
    created_by: str = Field(max_length=128)  # an actor (storage.actors)
    reason: str | None = Field(default=None, sa_type=sa.Text())
    # Ended before ``ends_at`` by an operator (unmute), and by whom.
    ended_at: datetime | None = _ts()
    ended_by: str | None = Field(default=None, max_length=128)
    # When its summary was queued: a window is summarised once, by whichever process sees it.
    summarised_at: datetime | None = _ts()

    @property
    def until(self) -> datetime:
        """When the window ended or ends."""
        return self.ended_at if self.ended_at is not None else self.ends_at


class CleanupRun(SQLModel, table=True):
    """The month-end clean-up of one month: which cases it offered, and its deletion.

    Keyed by the month ("2026-02"), so it is offered once per month whichever replica or
    restart runs the job; the cases listed are the ones its **Delete** button may delete.
    """

    __tablename__ = "cleanup_runs"

    month: str = Field(primary_key=True, max_length=7)
    created_at: datetime = Field(sa_type=UTCDateTime(), nullable=False)
    channel: str = Field(max_length=64)
    # The cases listed in the message, in the order shown: [case id, ...].
    case_ids: list[int] = Field(default_factory=list, sa_type=sa.JSON())
    # The facts its message was posted with; its updates add the deletion's progress.
    notice: dict[str, Any] = _json()
    # Who confirmed the deletion, and when it started and ended (NULL: not yet).
    started_by: str | None = Field(default=None, max_length=128)
    started_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()
    # How each listed case came out: {"deleted": 3, "recovered": 1, ...}.
    tally: dict[str, Any] = _json()
