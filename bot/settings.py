"""Settings from the environment (and ``.env``), plus the TOML policy named by REAUTHBOT_CONFIG.

Settings are built once, by ``load_settings`` at the entry point, and passed down; nothing else
reads the environment. Every problem becomes a ``ConfigError`` whose message is one line that
names the variable and says what to do.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import time, timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from storage.engine import normalize_url
from storage.models import ApiVersion
from workflows.policy import Policy, load_policy, parse_duration

NYLAS_DEFAULT_URLS: dict[str, str] = {
    ApiVersion.V3: "https://api.us.nylas.com",
    ApiVersion.V2: "https://api.nylas.com",
}
_CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{2,}$")
_URL = re.compile(r"^https?://[^\s/]+", re.IGNORECASE)


class ConfigError(Exception):
    """A setting is missing or wrong; the message is one line for the operator."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        env_ignore_empty=True,
        extra="ignore",
        populate_by_name=True,
        case_sensitive=False,
    )

    slack_bot_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_api_url: str = "https://slack.com/api/"
    slack_alert_channel: str | None = None

    nylas_api_version: Literal["v3", "v2"] = "v3"
    nylas_api_url: str | None = None
    nylas_api_key: SecretStr | None = None
    nylas_client_id: str | None = None
    nylas_client_secret: SecretStr | None = None
    nylas_webhook_secret: SecretStr | None = None
    nylas_redirect_uri: str | None = None
    # v3 mode only: also take v2 deliveries (signed with the client secret) while migrating.
    nylas_accept_v2_webhooks: bool = False

    database_url: str = "sqlite+aiosqlite:///./reauthbot.db"
    host: str = "0.0.0.0"
    port: int = Field(default=3000, ge=1, le=65535)

    # host:port of a listener of its own for /metrics and /readyz; unset: the public port.
    metrics_addr: str | None = Field(default=None, validation_alias="REAUTHBOT_METRICS_ADDR")

    pagerduty_routing_key: SecretStr | None = None
    pagerduty_api_url: str = "https://events.pagerduty.com"

    config_file: Path | None = Field(default=None, validation_alias="REAUTHBOT_CONFIG")
    log_format: Literal["plain", "json"] = Field(
        default="plain", validation_alias="REAUTHBOT_LOG_FORMAT"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", validation_alias="REAUTHBOT_LOG_LEVEL"
    )
    retention_days: int = Field(default=30, ge=1, validation_alias="REAUTHBOT_RETENTION_DAYS")
    poll_interval: timedelta = Field(
        default=timedelta(minutes=15), validation_alias="REAUTHBOT_POLL_INTERVAL"
    )
    # The service's public base URL: re-auth links are {public_url}/r/{token}, tracked.
    public_url: str | None = Field(default=None, validation_alias="REAUTHBOT_PUBLIC_URL")
    # Signs the outreach webhook's events ([outreach] channel = "webhook").
    outreach_secret: SecretStr | None = Field(
        default=None, validation_alias="REAUTHBOT_OUTREACH_SECRET"
    )
    # The daily digest's time of day, UTC ("09:00"); unset: no digest.
    digest_at: time | None = Field(default=None, validation_alias="REAUTHBOT_DIGEST_AT")

    _policy: Policy = PrivateAttr(default_factory=Policy)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return normalize_url(value).render_as_string(hide_password=False)

    @field_validator("poll_interval", mode="before")
    @classmethod
    def _poll_interval(cls, value: Any) -> timedelta:
        interval = parse_duration(value)
        if interval < timedelta(minutes=1):
            raise ValueError("must be at least 1m (Nylas rate-limits the account listing)")
        return interval

    @field_validator("digest_at", mode="before")
    @classmethod
    def _digest_at(cls, value: Any) -> Any:
        if isinstance(value, str):
            match = re.fullmatch(r"\s*([01]?\d|2[0-3]):([0-5]\d)\s*", value)
            if not match:
                raise ValueError(f"{value!r} is not a time of day like 09:00 (UTC)")
            return time(int(match.group(1)), int(match.group(2)))
        return value

    @field_validator("metrics_addr")
    @classmethod
    def _metrics_addr(cls, value: str | None) -> str | None:
        if value is not None:
            _split_address(value)
        return value

    @field_validator("nylas_api_version", mode="before")
    @classmethod
    def _api_version(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _log_level(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("slack_api_url", "nylas_api_url", "pagerduty_api_url", "nylas_redirect_uri")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not _URL.match(value):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        return None if value is None else public_base_url(value)

    @field_validator("slack_alert_channel")
    @classmethod
    def _channel(cls, value: str | None) -> str | None:
        if value is not None and not _CHANNEL_ID.match(value):
            raise ValueError(
                f"{value!r} is not a channel id; use the id (C…) shown in the channel's details, "
                "not its name"
            )
        return value

    @field_validator("slack_bot_token")
    @classmethod
    def _bot_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("xoxb-"):
            raise ValueError("must be a bot token starting with xoxb-")
        return value

    @field_validator("slack_app_token")
    @classmethod
    def _app_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith("xapp-"):
            raise ValueError("must be an app-level token starting with xapp-")
        return value

    @property
    def policy(self) -> Policy:
        return self._policy

    @property
    def local_mode(self) -> bool:
        """True when no Slack app is configured: alerts go to the log instead."""
        return self.slack_bot_token is None and self.slack_app_token is None

    @property
    def socket_mode(self) -> bool:
        return self.slack_app_token is not None

    @property
    def metrics_listen(self) -> tuple[str, int] | None:
        """The (host, port) of the metrics listener, or None to serve them on the public port."""
        return None if self.metrics_addr is None else _split_address(self.metrics_addr)

    @property
    def outreach_channel(self) -> str | None:
        """How end users are reached ("nylas" or "webhook"), or None when they are not."""
        return self.policy.outreach.channel if self.public_url is not None else None

    @property
    def nylas_base_url(self) -> str:
        return (self.nylas_api_url or NYLAS_DEFAULT_URLS[self.nylas_api_version]).rstrip("/")

    @property
    def nylas_configured(self) -> bool:
        if self.nylas_api_version == ApiVersion.V3:
            return self.nylas_api_key is not None
        return self.nylas_client_id is not None and self.nylas_client_secret is not None

    @property
    def alert_channel(self) -> str:
        """The default channel of alerts ("log" in local mode)."""
        return self.slack_alert_channel or "log"

    def webhook_secrets(self) -> dict[str, str]:
        """The keys Nylas signs webhooks with: the v3 webhook secret, the v2 client secret."""
        found = {ApiVersion.V3: self.nylas_webhook_secret, ApiVersion.V2: self.nylas_client_secret}
        return {v: s.get_secret_value() for v, s in found.items() if s is not None}

    def webhook_versions(self) -> frozenset[str]:
        """The API versions whose webhook deliveries are stored and acted on.

        A v2 delivery is signed with the client secret, which a v3 deployment holds for other
        reasons (re-auth links); in v3 mode it is taken only when a migration asks for it.
        """
        if self.nylas_api_version == ApiVersion.V2 or self.nylas_accept_v2_webhooks:
            return frozenset(ApiVersion)
        return frozenset({ApiVersion.V3})

    def secrets(self) -> list[str]:
        """Return every secret value, so logs can be scrubbed of them."""
        values = [
            self.slack_bot_token,
            self.slack_signing_secret,
            self.slack_app_token,
            self.nylas_api_key,
            self.nylas_client_secret,
            self.nylas_webhook_secret,
            self.pagerduty_routing_key,
            self.outreach_secret,
        ]
        found = [v.get_secret_value() for v in values if v is not None]
        password = normalize_url(self.database_url).password
        if password:
            found.append(password)
        return [s for s in found if s]

    def require_slack(self) -> None:
        """Check the Slack settings hang together (none at all is local mode, and fine)."""
        if self.local_mode:
            return
        if self.slack_bot_token is None:
            raise ConfigError(
                "SLACK_BOT_TOKEN", "is required when SLACK_APP_TOKEN is set; add the xoxb- token"
            )
        if self.slack_alert_channel is None:
            raise ConfigError(
                "SLACK_ALERT_CHANNEL",
                "is required with SLACK_BOT_TOKEN; set it to the id (C…) of the alert channel",
            )
        if not self.socket_mode and self.slack_signing_secret is None:
            raise ConfigError(
                "SLACK_SIGNING_SECRET",
                "is required in HTTP mode; copy it from the Slack app's Basic Information page, "
                "or set SLACK_APP_TOKEN to use Socket Mode",
            )

    def require_nylas(self) -> None:
        """Check the credentials the configured Nylas API version needs."""
        if self.nylas_api_version == ApiVersion.V3:
            if self.nylas_api_key is None:
                raise ConfigError(
                    "NYLAS_API_KEY", "is required for the Nylas v3 API; create one in the Dashboard"
                )
            return
        for name, value in (
            ("NYLAS_CLIENT_ID", self.nylas_client_id),
            ("NYLAS_CLIENT_SECRET", self.nylas_client_secret),
        ):
            if value is None:
                raise ConfigError(name, "is required for the Nylas v2 API (NYLAS_API_VERSION=v2)")


def public_base_url(value: str) -> str:
    """The public base URL without a trailing slash; plain http only for loopback hosts.

    The end user opens links on it: over plain http anyone on their network could read the
    token, so it is accepted only for development on this machine.
    """
    parts = urlsplit(value.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"{value!r} is not an https URL like https://reauthbot.example.com")
    if parts.query or parts.fragment:
        raise ValueError(f"{value!r} must not have a query or a fragment")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise ValueError(
            f"{value!r} must use https; plain http is accepted only for localhost and loopback "
            "addresses"
        )
    return value.strip().rstrip("/")


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_address(value: str) -> tuple[str, int]:
    host, colon, port = value.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:9100
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{value!r} is not an address like 127.0.0.1:9100")
    return host, int(port)


def _env_name(settings_cls: type[Settings], field: str) -> str:
    info = settings_cls.model_fields.get(field)
    if info is not None and isinstance(info.validation_alias, str):
        return info.validation_alias
    return field.upper()


def _explain(error: dict[str, Any]) -> str:
    if error["type"] == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return f"must be one of {expected} (got {error.get('input')!r})"
    if error["type"] in ("int_parsing", "greater_than_equal", "less_than_equal"):
        return f"{error['msg'].lower()} (got {error.get('input')!r})"
    return str(error["msg"]).removeprefix("Value error, ")


def load_settings(**overrides: Any) -> Settings:
    """Read the environment, ``.env`` and the policy file; raise ConfigError on any problem."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else "configuration"
        raise ConfigError(_env_name(Settings, field), _explain(dict(error))) from None
    if settings.config_file is not None:
        try:
            settings._policy = load_policy(settings.config_file)
        except ValueError as exc:
            raise ConfigError("REAUTHBOT_CONFIG", str(exc)) from None
    paging = [n for n, level in enumerate(settings.policy.escalation.levels, 1) if level.pagerduty]
    if paging and settings.pagerduty_routing_key is None:
        raise ConfigError(
            "PAGERDUTY_ROUTING_KEY",
            f"is required: escalation level {paging[0]} pages PagerDuty; use the integration "
            "key of an Events API v2 service",
        )
    _check_outreach(settings)
    return settings


def _check_outreach(settings: Settings) -> None:
    """Check that the [outreach] section has what its channel needs to reach end users."""
    outreach = settings.policy.outreach
    if outreach.channel is None:
        return
    if settings.public_url is None:
        raise ConfigError(
            "REAUTHBOT_PUBLIC_URL",
            "is required by [outreach]: the messages carry tracked links on reauthbot's address",
        )
    if outreach.channel == "webhook" and settings.outreach_secret is None:
        raise ConfigError(
            "REAUTHBOT_OUTREACH_SECRET",
            'is required by [outreach] channel = "webhook": every event is signed with it',
        )
    if outreach.channel == "nylas" and (
        settings.nylas_api_version != ApiVersion.V3 or settings.nylas_api_key is None
    ):
        raise ConfigError(
            "NYLAS_API_KEY",
            'is required by [outreach] channel = "nylas": emails are sent through the Nylas '
            "v3 API (NYLAS_API_VERSION=v3)",
        )
