"""The operator policy read from the TOML file named by REAUTHBOT_CONFIG.

Sections: ``[escalation]`` (who is told when nobody acknowledges), ``[permissions]`` (who may
press which button), ``[storms]`` (when many cases become one incident), ``[routing]`` and
``[stuck]`` (how long a v2 account may stay in a transient sync state), ``[links]`` (how long a
tracked re-auth link works), ``[outreach]`` (how the end user is asked to re-authenticate),
``[cleanup]`` (how long a broken account may wait before it is offered for deletion) and
``[billing]`` (what Nylas charges per account, to put a cost on that).
Every error names the key and says what is expected.
"""

from __future__ import annotations

import re
import tomllib
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

ACTIONS = ("ack", "link", "retry", "snooze", "resolve", "revoke")
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_USER = re.compile(r"^[UW][A-Z0-9]{2,}$")
_USER_OR_GROUP = re.compile(r"^[UWS][A-Z0-9]{2,}$")


def parse_duration(value: Any) -> timedelta:
    """Parse "30s", "15m", "2h" or "1d" (a timedelta passes through)."""
    if isinstance(value, timedelta):
        return value
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration like 30s, 15m, 2h or 1d")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]

OFF = "off"


def parse_limit(value: Any) -> timedelta | None:
    """Parse a duration, or "off" (None): a check that never fires."""
    if value is None or (isinstance(value, str) and value.strip().lower() == OFF):
        return None
    try:
        return parse_duration(value)
    except ValueError:
        raise ValueError(
            f'{value!r} is not a duration like 30s, 15m, 2h or 1d, nor "{OFF}"'
        ) from None


DurationOrOff = Annotated[timedelta | None, BeforeValidator(parse_limit)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _ids(values: list[str], pattern: re.Pattern[str], what: str) -> list[str]:
    for value in values:
        if not pattern.match(value):
            raise ValueError(f"{value!r} is not {what}")
    return values


class EscalationLevel(_Section):
    after: Duration
    mention: list[str] = []
    dm: list[str] = []
    pagerduty: bool = False

    @field_validator("mention")
    @classmethod
    def _mention(cls, values: list[str]) -> list[str]:
        return _ids(values, _USER_OR_GROUP, "a Slack user (U…) or user group (S…) id")

    @field_validator("dm")
    @classmethod
    def _dm(cls, values: list[str]) -> list[str]:
        return _ids(values, _USER, "a Slack user id (U…)")


class Escalation(_Section):
    repeat: int = Field(default=0, ge=0)
    levels: list[EscalationLevel] = []

    @field_validator("levels")
    @classmethod
    def _ordered(cls, levels: list[EscalationLevel]) -> list[EscalationLevel]:
        afters = [level.after for level in levels]
        if afters != sorted(afters):
            raise ValueError("levels must be listed in order of `after`")
        return levels


class Permissions(_Section):
    """Who may do what; an action that is not listed is open to everyone but ``revoke``."""

    ack: list[str] | None = None
    link: list[str] | None = None
    retry: list[str] | None = None
    snooze: list[str] | None = None
    resolve: list[str] | None = None
    revoke: list[str] | None = None

    @field_validator(*ACTIONS)
    @classmethod
    def _members(cls, values: list[str] | None) -> list[str] | None:
        if values is None:
            return None
        return _ids(values, _USER_OR_GROUP, "a Slack user (U…) or user group (S…) id")


class Storms(_Section):
    """When many cases become one incident.

    A domain storm: ``threshold`` cases of one email domain within ``window``. An integration
    storm: ``provider_threshold`` cases of one v3 integration within ``window``, spanning at
    least ``provider_domains`` domains; its bar is much higher, since an application with many
    grants sees ordinary churn on one provider every day. An incident takes new cases while
    its storm lasts: until none joined for ``window``, and for ``max_age`` at most.
    """

    threshold: int = Field(default=5, ge=2)
    window: Duration = timedelta(minutes=10)
    provider_threshold: int = Field(default=50, ge=2)
    provider_domains: int = Field(default=10, ge=1)
    max_age: Duration = timedelta(hours=6)

    @field_validator("window", "max_age")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than 0s")
        return value

    @model_validator(mode="after")
    def _reachable(self) -> Storms:
        if self.provider_domains > self.provider_threshold:
            raise ValueError(
                "provider_domains cannot exceed provider_threshold: no storm could reach it"
            )
        return self


class Routing(_Section):
    """Alert channel per email domain; cases of other domains go to SLACK_ALERT_CHANNEL."""

    domains: dict[str, str] = {}

    @field_validator("domains")
    @classmethod
    def _channels(cls, domains: dict[str, str]) -> dict[str, str]:
        for domain, channel in domains.items():
            if not re.match(r"^[CG][A-Z0-9]{2,}$", channel):
                raise ValueError(f"{domain} = {channel!r}: use a channel id (C…)")
        return {domain.lower(): channel for domain, channel in domains.items()}


class Stuck(_Section):
    """How long a v2 account may stay in each transient sync state before a case opens.

    The defaults follow Nylas: an account partial for more than 24 hours is a matter for
    Nylas Support, but a new one (first seen, connected or re-authenticated less than
    ``partial_new`` ago) may stay partial for up to a week during its first sync; a historical
    sync (downloading) may take up to a week; and connecting to the folders (initializing)
    takes minutes unless the account only sends. ``initializing = "off"`` is for applications
    whose accounts all only send (the email.send scope): they stay initializing for good.
    """

    partial: Duration = timedelta(hours=24)
    partial_new: Duration = timedelta(days=7)
    downloading: Duration = timedelta(days=7)
    initializing: DurationOrOff = timedelta(hours=1)

    @field_validator("partial", "partial_new", "downloading", mode="before")
    @classmethod
    def _not_off(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == OFF:
            raise ValueError(
                f"{value!r} is not a duration like 30s, 15m, 2h or 1d "
                f'(only initializing can be "{OFF}")'
            )
        return value

    @field_validator("partial", "partial_new", "downloading", "initializing")
    @classmethod
    def _positive(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            raise ValueError("must be longer than 0s")
        return value

    def limit_for(self, state: str | None, *, new: bool = False) -> timedelta | None:
        """How long ``state`` may last; None for a state that is never stuck (or not watched).

        ``new``: the account was first seen or (re)connected less than ``partial_new`` ago.
        """
        if state == "partial":
            return max(self.partial, self.partial_new) if new else self.partial
        return {"downloading": self.downloading, "initializing": self.initializing}.get(state or "")


class Links(_Section):
    """Tracked re-authentication links (``/r/{token}``)."""

    expire_after: Duration = timedelta(days=7)

    @field_validator("expire_after")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than 0s")
        return value


_LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")


class Outreach(_Section):
    """Reaching the end user: by email through Nylas, or through the team's own webhook.

    Off while ``channel`` is unset.
    """

    channel: Literal["nylas", "webhook"] | None = None
    grant_id: str | None = None  # nylas: the support mailbox, a v3 grant
    webhook_url: str | None = None  # webhook: where the events go
    subject: str = Field(default="Please reconnect your mailbox", min_length=1, max_length=200)
    auto: bool = False  # reach out as soon as a re-auth case opens
    nudges: list[Duration] = []  # reminders, counted from the link, while the user has not fixed it
    template: Path | None = None  # a text file replacing the email's body ({link}, {expires})

    @field_validator("nudges")
    @classmethod
    def _nudges(cls, value: list[timedelta]) -> list[timedelta]:
        if any(n <= timedelta(0) for n in value):
            raise ValueError("every nudge must come after the link (longer than 0s)")
        if value != sorted(set(value)):
            raise ValueError("nudges must be listed from the earliest, each once")
        return value

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        lowered = value.lower()
        local = any(lowered.startswith(f"http://{h}") for h in _LOOPBACK_HOSTS)
        if not (lowered.startswith("https://") or local):
            raise ValueError(
                f"{value!r} must be an https URL (plain http only for localhost and loopback)"
            )
        return value

    @model_validator(mode="after")
    def _needs(self) -> Outreach:
        if self.channel == "nylas" and not self.grant_id:
            raise ValueError('channel = "nylas" needs grant_id: the support mailbox\'s grant')
        if self.channel == "webhook" and not self.webhook_url:
            raise ValueError('channel = "webhook" needs webhook_url')
        if self.template is not None:
            try:
                text = self.template.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or type(exc).__name__
                raise ValueError(f"template {self.template} cannot be read ({reason})") from None
            if "{link}" not in text:
                raise ValueError(f"template {self.template} must hold {{link}}")
        return self

    @property
    def template_text(self) -> str | None:
        return None if self.template is None else self.template.read_text(encoding="utf-8")


class Cleanup(_Section):
    """The month-end clean-up of broken accounts Nylas would bill again next month.

    An account broken for longer than ``grace`` (its end user had that long to re-authenticate)
    is listed, five days before the month ends (UTC), for an operator to delete.
    """

    grace: Duration = timedelta(days=14)

    @field_validator("grace")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than 0s")
        return value


class Billing(_Section):
    """What Nylas charges per billed account and month; unset, no cost is shown."""

    price_per_account: Decimal | None = None

    currency: str = "USD"

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        if not re.match(r"^[A-Z]{3}$", value):
            raise ValueError(f"{value!r} is not a three-letter currency code like USD or EUR")
        return value

    @field_validator("price_per_account", mode="before")
    @classmethod
    def _price(cls, value: Any) -> Decimal | None:
        if value is None:
            return None
        # TOML gives 0.1 as a binary float; its shortest text is what the operator wrote.
        text = repr(value) if isinstance(value, float) else str(value).strip()
        if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
            text = ""
        try:
            price = Decimal(text)
        except ArithmeticError:
            price = None
        if price is None or not price.is_finite():
            raise ValueError(f'{value!r} is not a price like 1.5 or "1.50"')
        if price < 0:
            raise ValueError(f"{value!r}: a price cannot be negative")
        return price

    def cost(self, accounts: int) -> Decimal | None:
        """What ``accounts`` billed accounts cost a month; None when no price is set."""
        return None if self.price_per_account is None else self.price_per_account * accounts


class Policy(_Section):
    escalation: Escalation = Escalation()
    permissions: Permissions = Permissions()
    storms: Storms = Storms()
    routing: Routing = Routing()
    stuck: Stuck = Stuck()
    links: Links = Links()
    outreach: Outreach = Outreach()
    cleanup: Cleanup = Cleanup()
    billing: Billing = Billing()


def _location(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_policy(path: Path) -> Policy:
    """Read and validate the policy file; raise ValueError with a one-line explanation."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc.__class__.__name__
        raise ValueError(f"{path} cannot be read ({reason})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML: {exc}") from None
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = _location(error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "is not a known setting"
        raise ValueError(f"{path}: {where}: {message}") from None
