"""Settings and policy: good values load, every bad one names its variable in one line."""

from __future__ import annotations

from datetime import time, timedelta
from pathlib import Path

import pytest

from bot.settings import ConfigError, load_settings

CLEAN = {"_env_file": None}


def test_defaults_are_local_mode_on_sqlite() -> None:
    settings = load_settings(**CLEAN)
    assert settings.local_mode
    assert settings.database_url == "sqlite+aiosqlite:///./reauthbot.db"
    assert settings.nylas_api_version == "v3"
    assert settings.nylas_base_url == "https://api.us.nylas.com"
    assert settings.port == 3000


def test_v2_default_url_and_plain_database_urls_get_async_drivers() -> None:
    settings = load_settings(
        **CLEAN, nylas_api_version="V2", database_url="postgresql://u:pw@db:5432/reauth"
    )
    assert settings.nylas_base_url == "https://api.nylas.com"
    assert settings.database_url == "postgresql+asyncpg://u:pw@db:5432/reauth"
    assert "pw" in settings.secrets()


def test_v2_webhooks_are_taken_by_a_v2_service_or_when_a_migration_asks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings(**CLEAN).webhook_versions() == {"v3"}
    assert load_settings(**CLEAN, nylas_api_version="v2").webhook_versions() == {"v2", "v3"}
    monkeypatch.setenv("NYLAS_ACCEPT_V2_WEBHOOKS", "true")
    assert load_settings(**CLEAN).webhook_versions() == {"v2", "v3"}


def test_metrics_address() -> None:
    assert load_settings(**CLEAN).metrics_listen is None
    assert load_settings(**CLEAN, metrics_addr="127.0.0.1:9100").metrics_listen == (
        "127.0.0.1",
        9100,
    )
    assert load_settings(**CLEAN, metrics_addr="[::1]:0").metrics_listen == ("::1", 0)


@pytest.mark.parametrize(
    ("values", "variable", "hint"),
    [
        ({"nylas_api_version": "v4"}, "NYLAS_API_VERSION", "'v3' or 'v2'"),
        ({"database_url": "not a url"}, "DATABASE_URL", "is not a database URL"),
        ({"database_url": "mysql://h/db"}, "DATABASE_URL", "unsupported database"),
        ({"database_url": "sqlite://"}, "DATABASE_URL", "needs a file path"),
        ({"port": "http"}, "PORT", "integer"),
        ({"port": 70000}, "PORT", "65535"),
        ({"slack_bot_token": "xoxp-user"}, "SLACK_BOT_TOKEN", "xoxb-"),
        ({"slack_app_token": "xoxb-1"}, "SLACK_APP_TOKEN", "xapp-"),
        ({"slack_alert_channel": "#alerts"}, "SLACK_ALERT_CHANNEL", "not a channel id"),
        ({"slack_api_url": "slack.com/api"}, "SLACK_API_URL", "http(s) URL"),
        ({"log_format": "xml"}, "REAUTHBOT_LOG_FORMAT", "'plain' or 'json'"),
        ({"metrics_addr": "9100"}, "REAUTHBOT_METRICS_ADDR", "like 127.0.0.1:9100"),
        ({"metrics_addr": "host:99999"}, "REAUTHBOT_METRICS_ADDR", "like 127.0.0.1:9100"),
    ],
)
def test_bad_values_name_their_variable(
    values: dict[str, object], variable: str, hint: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(**CLEAN, **values)
    message = str(info.value)
    assert message.startswith(f"{variable}: ")
    assert hint in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("values", "variable"),
    [
        ({"slack_app_token": "xapp-1"}, "SLACK_BOT_TOKEN"),
        ({"slack_bot_token": "xoxb-1"}, "SLACK_ALERT_CHANNEL"),
        ({"slack_bot_token": "xoxb-1", "slack_alert_channel": "C0ALERTS"}, "SLACK_SIGNING_SECRET"),
    ],
)
def test_incomplete_slack_settings(values: dict[str, str], variable: str) -> None:
    settings = load_settings(**CLEAN, **values)
    with pytest.raises(ConfigError) as info:
        settings.require_slack()
    assert info.value.variable == variable


def test_socket_mode_needs_no_signing_secret() -> None:
    settings = load_settings(
        **CLEAN, slack_bot_token="xoxb-1", slack_app_token="xapp-1", slack_alert_channel="C0ALERTS"
    )
    settings.require_slack()
    assert settings.socket_mode and not settings.local_mode


@pytest.mark.parametrize(
    ("values", "variable"),
    [
        ({}, "NYLAS_API_KEY"),
        ({"nylas_api_version": "v2"}, "NYLAS_CLIENT_ID"),
        ({"nylas_api_version": "v2", "nylas_client_id": "cid"}, "NYLAS_CLIENT_SECRET"),
    ],
)
def test_missing_nylas_credentials(values: dict[str, str], variable: str) -> None:
    settings = load_settings(**CLEAN, **values)
    with pytest.raises(ConfigError) as info:
        settings.require_nylas()
    assert info.value.variable == variable


POLICY = """
[escalation]
repeat = 2
[[escalation.levels]]
after = "15m"
mention = ["S0ONCALL"]
[[escalation.levels]]
after = "1h"
dm = ["U0LEAD"]
pagerduty = true

[permissions]
revoke = ["U0ADMIN", "S0SECURITY"]

[storms]
threshold = 5
window = "10m"

[routing.domains]
"Example.com" = "C0EXAMPLE"

[stuck]
partial = "36h"
"""


def test_policy_file_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    policy = load_settings(**CLEAN, config_file=path, pagerduty_routing_key="R0UTING").policy
    assert policy.escalation.repeat == 2
    assert [level.after for level in policy.escalation.levels] == [
        timedelta(minutes=15),
        timedelta(hours=1),
    ]
    assert policy.escalation.levels[1].pagerduty
    assert policy.permissions.revoke == ["U0ADMIN", "S0SECURITY"]
    assert policy.permissions.ack is None
    assert policy.storms.window == timedelta(minutes=10)
    assert policy.routing.domains == {"example.com": "C0EXAMPLE"}
    assert policy.stuck.partial == timedelta(hours=36)
    assert policy.stuck.downloading == timedelta(days=7)  # not given: the default


def test_stuck_limits_default_to_what_nylas_documents() -> None:
    stuck = load_settings(**CLEAN).policy.stuck
    assert (stuck.partial, stuck.downloading, stuck.initializing) == (
        timedelta(hours=24),
        timedelta(days=7),
        timedelta(hours=1),
    )


def test_a_policy_that_pages_needs_the_routing_key(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    with pytest.raises(ConfigError) as caught:
        load_settings(**CLEAN, config_file=path)
    assert str(caught.value) == (
        "PAGERDUTY_ROUTING_KEY: is required: escalation level 2 pages PagerDuty; "
        "use the integration key of an Events API v2 service"
    )


@pytest.mark.parametrize(
    ("value", "expected"), [("09:00", time(9, 0)), (" 7:05 ", time(7, 5)), (None, None)]
)
def test_digest_time(value: str | None, expected: time | None) -> None:
    assert load_settings(**CLEAN, digest_at=value).digest_at == expected


@pytest.mark.parametrize("value", ["9am", "24:00", "12:60", "noon"])
def test_digest_time_must_be_a_time_of_day(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(**CLEAN, digest_at=value)
    assert str(caught.value).startswith("REAUTHBOT_DIGEST_AT: ")
    assert "is not a time of day like 09:00 (UTC)" in str(caught.value)


@pytest.mark.parametrize(
    ("content", "hint"),
    [
        (None, "does not exist"),
        ("[escalation\nrepeat = 1", "is not valid TOML"),
        ("[storms]\nwindow = '10 minutes'", "storms.window: '10 minutes' is not a duration"),
        ("[storms]\nthreshold = 1", "storms.threshold"),
        ("[stuck]\npartial = '1 day'", "stuck.partial: '1 day' is not a duration like 30s"),
        ("[stuck]\ninitializing = '0m'", "stuck.initializing: must be longer than 0s"),
        ("[stuck]\nstopped = '1h'", "stuck.stopped: is not a known setting"),
        ("[permissions]\nrevoke = ['alice']", "permissions.revoke: 'alice' is not a Slack user"),
        ("[permissions]\nnuke = ['U1']", "permissions.nuke: is not a known setting"),
        ("[paging]\nx = 1", "paging: is not a known setting"),
        (
            "[escalation]\n[[escalation.levels]]\nafter='1h'\n[[escalation.levels]]\nafter='5m'",
            "in order of `after`",
        ),
        ("[[escalation.levels]]\nafter = '5m'\ndm = ['S0GROUP']", "escalation.levels[0].dm"),
    ],
)
def test_bad_policy_files(tmp_path: Path, content: str | None, hint: str) -> None:
    path = tmp_path / "policy.toml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        load_settings(**CLEAN, config_file=path)
    message = str(info.value)
    assert message.startswith(f"REAUTHBOT_CONFIG: {path}")
    assert hint in message
    assert "\n" not in message


def test_policy_path_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings(**CLEAN, config_file=tmp_path)
