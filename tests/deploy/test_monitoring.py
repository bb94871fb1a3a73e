"""The Prometheus rules and the Grafana dashboard against a live service's /metrics.

promtool checks the rules, runs their unit tests (deploy/prometheus/rules_test.yml) and lints
what a running ``reauthbot serve`` exposes; every metric the rules and the dashboard name must
be in it, and every label value must be lowercase words.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.cli import service
from tests.conftest import NYLAS_API_KEY, WEBHOOK_SECRET
from tests.deploy.programs import DEPLOY, program
from tests.fakes.nylas import FakeNylas

RULES = DEPLOY / "prometheus" / "rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "rules_test.yml"
DASHBOARD = DEPLOY / "grafana" / "reauthbot.json"
METRIC_NAME = re.compile(r"\b(reauthbot_[a-z0-9_]+)")
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
# Labels whose values are not words by nature: paths, numbers, versions and buckets.
NOT_WORDS = {"route", "status", "version", "le"}
WORD = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*$")


def promtool() -> str:
    return program(
        "promtool", install="apt-get install prometheus, which provides it", required_in_ci=True
    )


def test_the_rules_pass_promtool_and_their_unit_tests() -> None:
    path = promtool()
    checked = subprocess.run(
        [path, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [path, "test", "rules", RULES_TEST.name],
        cwd=RULES_TEST.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_rule_has_a_duration_or_fires_at_once_a_severity_and_words() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) >= 7
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        # Only a count of permanent errors fires without waiting: each one is already final.
        assert "for" in rule or "increase(" in rule["expr"], rule["alert"]


def expressions() -> dict[str, list[str]]:
    """Every PromQL expression of the rules and of the dashboard, by file."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [str(rule["expr"]) for group in groups for rule in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())

    def targets(panels: list[dict[str, Any]]) -> list[str]:
        found = []
        for panel in panels:
            found += [target["expr"] for target in panel.get("targets", [])]
            found += targets(panel.get("panels", []))
        return found

    panels = targets(dashboard["panels"])
    assert panels, "the dashboard has no queries"
    return {RULES.name: rules, DASHBOARD.name: panels}


def samples(text: str) -> list[tuple[str, dict[str, str]]]:
    found = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, line
        found.append((match.group(1), dict(LABEL.findall(match.group(2) or ""))))
    return found


@pytest.fixture
async def scraped(tmp_path: Path, blank_url: str, nylas_fake: FakeNylas) -> str:
    """/metrics of a running service that reconciled with Nylas and refused a webhook."""
    nylas_fake.add_grant(id="g-1", email="ana@example.com", grant_status="invalid")
    env = {
        "DATABASE_URL": blank_url,
        "NYLAS_API_URL": nylas_fake.url,
        "NYLAS_API_KEY": NYLAS_API_KEY,
        "NYLAS_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    async with (
        service(tmp_path, tmp_path / "serve.log", env) as base,
        httpx.AsyncClient(base_url=base, timeout=10) as http,
    ):
        refused = await http.post(
            "/nylas/webhook", content=b"{}", headers={"X-Nylas-Signature": "0" * 64}
        )
        assert refused.status_code == 401, refused.text
        for _ in range(100):
            text = (await http.get("/metrics")).text
            if 'reauthbot_job_runs_total{job="reconcile",outcome="ok"}' in text:
                return text
            await asyncio.sleep(0.1)
        pytest.fail("the service never completed its first reconciliation")


def test_a_live_service_exposes_what_the_rules_and_dashboard_need(scraped: str) -> None:
    """Every metric the rules and the dashboard name is there, every label value is words,
    and promtool finds nothing to object to (one service per engine for all three)."""
    # A family is listed (# HELP) even before its first labelled sample.
    families = {m.group(1) for m in re.finditer(r"^# HELP (\S+) ", scraped, re.M)}
    families |= {name for name, _ in samples(scraped)}
    for source, exprs in expressions().items():
        for expr in exprs:
            for name in METRIC_NAME.findall(expr):
                family = re.sub(r"_(bucket|sum|count)$", "", name)
                assert {name, family} & families, f"{source}: {name} is not in /metrics"

    assert 'reauthbot_webhook_deliveries_total{result="bad_signature"} 1.0' in scraped
    assert "reauthbot_reconcile_interval_seconds 900.0" in scraped  # the default 15m
    assert "reauthbot_ready 1.0" in scraped
    assert 'reauthbot_http_request_duration_seconds_bucket{le="0.005",route="/readyz"}' in (scraped)
    for name, labels in samples(scraped):
        for label, value in labels.items():
            if label not in NOT_WORDS:
                assert WORD.match(value), f'{name}{{{label}="{value}"}}'

    checked = subprocess.run(
        [promtool(), "check", "metrics"], input=scraped, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
