"""The deployment files in deploy/, checked without a container engine or systemd running.

The example settings and policy load through the real parsers; the Dockerfile's commands are
the ones the README's Deployment section shows, and its health check passes against a running
service; the compose file's database URL is one the settings accept; the systemd unit passes
``systemd-analyze verify`` where it is installed.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from bot.settings import Settings, load_settings
from tests.cli import clean_env, service
from tests.deploy.programs import DEPLOY, ROOT, program
from workflows.policy import Policy, load_policy

ENV_EXAMPLE = DEPLOY / ".env.example"
POLICY_EXAMPLE = DEPLOY / "policy.example.toml"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "compose.yml"
UNIT = DEPLOY / "reauthbot.service"
PLACEHOLDER = "replace-me"


def env_names() -> list[str]:
    names = []
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        names.append(alias if isinstance(alias, str) else field.upper())
    return names


@pytest.fixture
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings from the file alone: the environment would take precedence over it."""
    for name in env_names():
        monkeypatch.delenv(name, raising=False)


def test_the_env_example_loads_through_the_settings(no_environment: None) -> None:
    settings = load_settings(_env_file=ENV_EXAMPLE, config_file=POLICY_EXAMPLE)
    settings.require_slack()
    settings.require_nylas()
    assert not settings.local_mode and not settings.socket_mode
    assert settings.slack_alert_channel == "C0123456789"
    assert settings.database_url.startswith("postgresql+asyncpg://")
    assert settings.log_format == "json"


def test_the_env_example_names_every_setting_and_holds_no_secret() -> None:
    text = ENV_EXAMPLE.read_text()
    for name in env_names():
        assert re.search(rf"^(# )?{name}=", text, re.M), f"{name} is not in {ENV_EXAMPLE.name}"
    values = dict(
        line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    for name, value in values.items():
        if any(word in name for word in ("TOKEN", "SECRET", "KEY", "PASSWORD")):
            assert PLACEHOLDER in value, name
    password = urlsplit(values["DATABASE_URL"]).password
    assert password == PLACEHOLDER


def test_the_policy_example_shows_every_section_and_loads() -> None:
    policy = load_policy(POLICY_EXAMPLE)
    assert set(tomllib.loads(POLICY_EXAMPLE.read_text())) == set(Policy.model_fields)
    assert policy.escalation.levels and policy.permissions.revoke
    assert policy.routing.domains and policy.outreach.channel is None


def test_the_compose_file_runs_the_image_on_postgresql(no_environment: None) -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    db, bot = compose["services"]["db"], compose["services"]["reauthbot"]
    assert db["image"].startswith("postgres:")
    context = (COMPOSE.parent / bot["build"]["context"]).resolve()
    assert context == ROOT and (context / bot["build"]["dockerfile"]) == DOCKERFILE
    assert bot["depends_on"]["db"]["condition"] == "service_healthy"
    assert bot["env_file"] == ".env"
    # The URL compose builds, with the password it interpolates, is one the settings accept.
    url = bot["environment"]["DATABASE_URL"].replace("${POSTGRES_PASSWORD}", PLACEHOLDER)
    policy = bot["environment"]["REAUTHBOT_CONFIG"]
    assert any(volume.endswith(f":{policy}:ro") for volume in bot["volumes"])
    settings = load_settings(_env_file=None, database_url=url)
    assert urlsplit(settings.database_url).hostname == "db"
    assert "POSTGRES_PASSWORD" in db["environment"]


def dockerfile_lines() -> list[tuple[str, str]]:
    """The Dockerfile's lines as (keyword, arguments); continuations joined, comments out."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def commands() -> list[str]:
    """Every command the image runs: the RUN steps, the CMD and the health check's."""
    found = []
    for keyword, rest in dockerfile_lines():
        if keyword == "RUN":
            found += [part.strip() for part in rest.split("&&")]
        elif keyword == "CMD":
            found.append(" ".join(json.loads(rest)) if rest.startswith("[") else rest)
        elif keyword == "HEALTHCHECK":
            found.append(rest.split(" CMD ", 1)[1].strip())
    return found


def readme_deployment() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("\n## Deployment\n")
    end = readme.index("\n## ", start + 1)
    return readme[start:end]


def test_the_dockerfile_runs_the_commands_the_readme_documents() -> None:
    section = readme_deployment()
    shown = commands()
    assert len(shown) >= 4
    for command in shown:
        assert command in section, f"the README's Deployment section does not show: {command}"
    assert "docker build -f deploy/Dockerfile" in section


def test_the_image_serves_as_an_unprivileged_user_on_the_default_port() -> None:
    found = dockerfile_lines()
    keywords = [keyword for keyword, _ in found]
    assert found[0][0] == "FROM" and re.match(r"python:3\.\d+-slim", found[0][1])
    user = [rest for keyword, rest in found if keyword == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert keywords.index("USER") < keywords.index("CMD")
    assert [rest for keyword, rest in found if keyword == "CMD"] == ['["reauthbot", "serve"]']
    exposed = [rest for keyword, rest in found if keyword == "EXPOSE"]
    assert exposed == [str(Settings.model_fields["port"].default)]
    assert "/healthz" in dict(found)["HEALTHCHECK"]


def test_dockerignore_lets_through_what_the_image_copies() -> None:
    allowed = {
        line.removeprefix("!").rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copied = []
    for keyword, rest in dockerfile_lines():
        if keyword == "COPY":
            copied += shlex.split(rest)[:-1]
    assert copied and set(copied) <= allowed
    for path in copied:
        assert (ROOT / path).exists(), path


async def test_the_health_check_passes_while_the_service_serves(tmp_path: Path) -> None:
    check = next(c for c in commands() if "/healthz" in c)
    # The image's python is this interpreter here.
    check = check.replace("python ", f"{shlex.quote(sys.executable)} ", 1)

    def run(port: int) -> int:
        env = clean_env(tmp_path, PORT=str(port))
        return subprocess.run(["sh", "-c", check], env=env, timeout=30).returncode

    async with service(tmp_path, tmp_path / "serve.log", {}) as base:
        port = int(urlsplit(base).port or 0)
        assert run(port) == 0
    assert run(port) != 0


def test_the_systemd_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    analyze = program("systemd-analyze", install="part of systemd", required_in_ci=False)
    text = UNIT.read_text()
    exec_start = re.search(r"^ExecStart=(\S+) serve$", text, re.M)
    assert exec_start, "ExecStart must run `reauthbot serve`"
    # verify checks that the program exists: point it at the reauthbot installed here.
    installed = Path(sys.executable).parent / "reauthbot"
    assert installed.exists()
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace(exec_start.group(1), str(installed)))
    verified = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert verified.returncode == 0 and not (verified.stdout + verified.stderr).strip(), (
        verified.stdout + verified.stderr
    )
