"""Prometheus metrics; one registry per application so tests never share counters."""

from __future__ import annotations

import re
import time
from importlib.metadata import PackageNotFoundError, version
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest
from prometheus_client.metrics import MetricWrapperBase

try:
    VERSION = version("reauthbot")
except PackageNotFoundError:  # running from a source tree that was not installed
    VERSION = "0+unknown"

_M = TypeVar("_M", bound=MetricWrapperBase)
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NOT_WORD = re.compile(r"[^a-z0-9]+")
# Request durations from a cached answer (well under a millisecond) to a slow Slack call.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The label values of reauthbot_oldest_pending_message_age_seconds: the alert notifier's
# messages (any Slack channel or user; the log in local mode), PagerDuty events and end-user
# outreach.
MESSAGE_CHANNELS = ("slack", "pagerduty", "outreach")


def label_word(value: str) -> str:
    """A label value as lowercase words joined by underscores: BadSignature -> bad_signature.

    Error codes from Slack and Nylas are already so; class names of exceptions are not, and
    alert rules and dashboards match label values literally.
    """
    return _NOT_WORD.sub("_", _CAMEL.sub("_", value).lower()).strip("_") or "unknown"


class Metrics:
    def __init__(self) -> None:
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], MetricWrapperBase] = {}
        self.registry = CollectorRegistry()
        Info("reauthbot", "Build information", registry=self.registry).info({"version": VERSION})
        self.http_requests = Counter(
            "reauthbot_http_requests",
            "HTTP requests answered, by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "reauthbot_http_request_duration_seconds",
            "Seconds from a request's arrival to its answer, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.notifier_messages = Counter(
            "reauthbot_notifier_messages",
            "Outbox messages handled by the notifier, by sink, kind and outcome",
            ["sink", "kind", "outcome"],
            registry=self.registry,
        )
        self.notifier_errors = Counter(
            "reauthbot_notifier_errors",
            "Errors from the message sink, by error code",
            ["sink", "error"],
            registry=self.registry,
        )
        self.links_opened = Counter(
            "reauthbot_links_opened",
            "Tracked re-auth links opened by end users and sent on to Nylas",
            registry=self.registry,
        )
        self.database_up = Gauge(
            "reauthbot_database_up",
            "1 when the database answered the last readiness or metrics query",
            registry=self.registry,
        )
        self.ready = Gauge(
            "reauthbot_ready",
            "1 when the service is ready (/readyz): the database answers and carries the newest "
            "schema",
            registry=self.registry,
        )
        self.inbox_rows = Gauge(
            "reauthbot_inbox_rows",
            "Webhook inbox rows pending or failed, by status (counted up to 10,000)",
            ["status"],
            registry=self.registry,
        )
        self.outbox_rows = Gauge(
            "reauthbot_outbox_rows",
            "Outbox rows pending or failed, by status (counted up to 10,000)",
            ["status"],
            registry=self.registry,
        )
        self.open_cases = Gauge(
            "reauthbot_open_cases",
            "Open cases by kind (counted up to 10,000)",
            ["kind"],
            registry=self.registry,
        )
        self.table_rows = Gauge(
            "reauthbot_table_rows_estimate",
            "Estimated rows of the inbox, outbox and cases tables",
            ["table"],
            registry=self.registry,
        )
        self.webhook_deliveries = Counter(
            "reauthbot_webhook_deliveries",
            "Nylas webhook deliveries by result (stored, duplicate, ignored, rejected…)",
            ["result"],
            registry=self.registry,
        )
        self.reconciled_accounts = Counter(
            "reauthbot_reconciled_accounts",
            "Accounts compared by reconciliation, by outcome "
            "(seen, new, changed, missing, skipped)",
            ["outcome"],
            registry=self.registry,
        )
        self.outreach = Counter(
            "reauthbot_outreach",
            "Deliveries to end users, by channel (nylas, webhook) and outcome "
            "(sent, rejected, unavailable, uncertain)",
            ["channel", "outcome"],
            registry=self.registry,
        )
        self.job_runs = Counter(
            "reauthbot_job_runs",
            "Scheduled job runs by job and outcome",
            ["job", "outcome"],
            registry=self.registry,
        )
        self.oldest_delivery_age = Gauge(
            "reauthbot_oldest_pending_delivery_age_seconds",
            "Seconds since the oldest webhook delivery still waiting to be processed arrived "
            "(0 when none waits)",
            registry=self.registry,
        )
        self.oldest_message_age = Gauge(
            "reauthbot_oldest_pending_message_age_seconds",
            "Seconds the oldest outbox message still to be sent has waited, by channel "
            "(slack, pagerduty, outreach; 0 when none waits): since it was due, or since it "
            "was queued once an attempt failed",
            ["channel"],
            registry=self.registry,
        )
        self.reconcile_interval = Gauge(
            "reauthbot_reconcile_interval_seconds",
            "Seconds between reconciliation passes (REAUTHBOT_POLL_INTERVAL); 0 when "
            "reconciliation is off",
            registry=self.registry,
        )
        self.last_reconcile_success = Gauge(
            "reauthbot_last_reconcile_success_timestamp_seconds",
            "Unix time of the last reconciliation pass this process completed (its start "
            "time until then)",
            registry=self.registry,
        )
        self.last_reconcile_success.set(time.time())

    def child(self, metric: _M, *labels: str) -> _M:
        """``metric.labels(*labels)``, remembered, for metrics on the webhook's path.

        Only for labels of a small, fixed set of values (routes, statuses, results): each
        combination is kept for the life of the process.
        """
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found  # type: ignore[return-value]

    def set_ages(self, *, delivery: float, messages: dict[str, float]) -> None:
        """Set the oldest-waiting gauges; every channel is shown, 0 when nothing waits."""
        self.oldest_delivery_age.set(delivery)
        for channel in MESSAGE_CHANNELS:
            self.oldest_message_age.labels(channel=channel).set(messages.get(channel, 0.0))

    def set_depths(
        self,
        depths: dict[str, dict[str, int]],
        open_cases: dict[str, int],
        table_sizes: dict[str, int],
    ) -> None:
        """Replace the queue, case and table-size gauges with fresh counts."""
        pairs = ((self.inbox_rows, depths["inbox"]), (self.outbox_rows, depths["outbox"]))
        for gauge, counts in pairs:
            gauge.clear()
            for status, count in counts.items():
                gauge.labels(status=status).set(count)
        self.open_cases.clear()
        for kind, count in open_cases.items():
            self.open_cases.labels(kind=kind).set(count)
        self.table_rows.clear()
        for table, rows in table_sizes.items():
            self.table_rows.labels(table=table).set(rows)

    def render(self) -> bytes:
        return generate_latest(self.registry)
