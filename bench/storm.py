"""Benchmark a storm: 10,000 expired grants over 20 domains, and operators clicking meanwhile.

Goals: every case stored within 5 s of the last delivery (processing keeps up with arrival),
every Slack message delivered within 30 s of it without one 429 from Slack, and Slack button
clicks acknowledged with a p99 under 300 ms while the storm is processed.

One ``reauthbot serve`` process (SQLite in a temporary directory, or with ``--database-url`` a
PostgreSQL database created for the run and dropped after it) is started against the fake
Slack Web API (``tests.fakes.slack``), which runs inside this process with Slack's per-channel
limit on ``chat.postMessage`` enforced (``rate_limit_per_channel(1.0)``: one post per second
per channel, no burst). Storms are on with the default policy (5 cases of one domain within
10 minutes make an incident).

This process then:

1. sends ``--accounts`` signed v3 ``grant.expired`` deliveries, each for its own grant, spread
   evenly over ``--domains`` email domains, on a fixed timetable over ``--seconds`` seconds
   (an open loop: latency runs from each delivery's scheduled time, so a stall shows up as
   latency instead of slowing the sender). By default the deliveries come one domain after
   another (``--order domains``), and each domain becomes one incident with one message,
   updated in place as its cases join. With ``--order interleaved`` the domains alternate;
   the grants all share one provider, so the service then sees an outage of that provider's
   integration across many domains and groups most of them into one incident instead;
2. meanwhile sends signed Slack button clicks, as Slack posts them to ``/slack/events``, at
   ``--clicks-per-second`` on a fixed timetable, from one second after the storm starts until
   every case is stored: ``case_ack`` and ``case_snooze`` on random existing cases, and one
   in ten an ``incident_ack_all`` on the incidents in turn. Latency runs from the scheduled
   time to the HTTP 200 (Slack wants it within 3 s; the goal is a p99 under 300 ms);
3. polls the database (read-only) until every case is stored, the inbox is processed and the
   outbox has no pending row, and checks the outbox stays empty ``STABLE_FOR`` seconds later.

Then it reads what the fake Slack received: top-level posts, thread replies, ``chat.update``
calls, the 429s it answered, and the most posts it accepted in any one second per channel;
and checks that no message was posted twice (the top-level posts are exactly the incidents'
messages and the alerts of cases that kept their own) and that every incident's message
shows its final count of accounts.

    .venv/bin/python -m bench.storm [--accounts 10000] [--domains 20] [--seconds 30]
        [--clicks-per-second 5] [--database-url URL] [--json out.json]
    .venv/bin/python -m bench.storm --quick        # 500 accounts, 5 domains, 5 s: a smoke run
    .venv/bin/python -m bench.storm --analyze-every 60 \
        --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/test

Progress goes to stderr; the results block and the command that produced it go to stdout.

With ``--database-url`` the database ``reauthbot_bench_storm`` is created on that server and
dropped at the end. The results say whether the server runs autovacuum: without it nothing
gathers planner statistics during the storm, which changes the plans of the service's queries;
``--analyze-every`` runs ANALYZE on that database now and then in its stead.

Exit status: 0 when the run was sound, whether or not the goals hold; 1 when something broke
(a delivery or click not answered 2xx, an error in the service's log, a case missing, a
delivery or message given up on, a message posted twice or an incident message left stale);
130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
from slack_sdk.signature import SignatureVerifier
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from bench._common import (
    Child,
    Db,
    add_database_url,
    cancel_on_sigterm,
    changed_files,
    clean_env,
    command_line,
    free_port,
    machine,
    machine_cpu,
    machine_line,
    percentile,
    progress_to,
    run_benchmark,
    run_verdict,
    say,
    scratch_database,
    self_cpu_seconds,
    verdict,
    write_json,
)
from bench.webhook_ingest import Tally
from bot.slack import ids
from tests.fakes.slack import FakeSlack
from workflows.nylas.webhooks import sign

# Processing keeps up with arrival: every case stored soon after the last delivery; Slack's
# one post per second per channel is what bounds the messages.
GOAL_STORED_S = 5.0  # last delivery -> every case stored
GOAL_DRAIN_S = 30.0  # last delivery -> every case stored and every message delivered
GOAL_CLICK_P99_MS = 300.0
GOAL_RATELIMITED = 0
SLACK_LIMIT_PER_S = 1.0  # Slack's chat.postMessage limit per channel, enforced by the fake

WEBHOOK_PATH = "/nylas/webhook"
WEBHOOK_SECRET = "bench-webhook-secret"
SIGNING_SECRET = "bench-slack-signing-secret"
BOT_TOKEN = "xoxb-bench-storm"
CHANNEL = "C0STORM"
CLICKER = "U0BENCH"
PROVIDER = "google"
PG_DATABASE = "reauthbot_bench_storm"

OPEN_LOOP_CONNECTIONS = 256
REQUEST_TIMEOUT = 30.0
CLICKS_START_AFTER = 1.0  # seconds into the storm, so that the first cases exist
INCIDENT_CLICK_EVERY = 10  # one click in ten is "acknowledge all" on an incident
POLL_DURING_LOAD = 1.0  # seconds between database polls while deliveries are sent
POLL_AFTER_LOAD = 0.25  # and afterwards, when the times are measured
STABLE_FOR = 5.0  # the outbox must still be empty this long after (incident updates settle 3 s)
PROGRESS_EVERY = 5.0
QUICK = {"accounts": 500, "domains": 5, "seconds": 5.0}
FULL = {"accounts": 10_000, "domains": 20, "seconds": 30.0}


# -- the load ----------------------------------------------------------------------------


def domain_name(d: int) -> str:
    return f"tenant{d + 1:02d}.example"


def build_deliveries(
    accounts: int, domains: int, order: str
) -> list[tuple[str, bytes, dict[str, str]]]:
    """(domain, body, headers) of every delivery, signed, in the order they will be sent."""
    now = int(time.time())
    plan = [(n % domains, n) for n in range(accounts)]  # account n belongs to domain n % domains
    if order == "domains":
        plan.sort()
    out = []
    for d, n in plan:
        domain = domain_name(d)
        payload = {
            "specversion": "1.0",
            "type": "grant.expired",
            "source": "/nylas/system",
            "id": str(uuid.uuid4()),
            "time": now,
            "webhook_delivery_attempt": 1,
            "data": {
                "application_id": "app-bench-storm",
                "object": {
                    "code": 25009,
                    "grant_id": str(uuid.uuid4()),
                    "integration_id": "int-bench",
                    "provider": PROVIDER,
                    "email": f"user{n}@{domain}",
                    "grant_updated_at": now - 3600,
                },
            },
        }
        raw = json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Nylas-Signature": sign(WEBHOOK_SECRET, raw),
        }
        out.append((domain, raw, headers))
    return out


def signed_click(body: str) -> dict[str, str]:
    """Headers as Slack sends them: v0 HMAC of ``v0:<timestamp>:<body>``."""
    ts = str(int(time.time()))
    signature = SignatureVerifier(SIGNING_SECRET).generate_signature(timestamp=ts, body=body)
    assert signature is not None
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature,
    }


def click_body(action_id: str, value: str, n: int, message_ts: str, response_url: str) -> str:
    """A block_actions payload as Slack posts it: a form with the JSON payload."""
    action: dict[str, Any] = {
        "action_id": action_id,
        "block_id": f"bench-{n}",
        "action_ts": f"{time.time():.6f}",
    }
    if action_id == ids.SNOOZE:
        action |= {"type": "static_select", "selected_option": {"value": value}}
    else:
        action |= {"type": "button", "value": value}
    payload = {
        "type": "block_actions",
        "user": {"id": CLICKER, "username": "bench", "team_id": "T0TEST"},
        "api_app_id": "A0APP",
        "token": "legacy",
        "team": {"id": "T0TEST", "domain": "bench"},
        "container": {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": CHANNEL,
            "is_ephemeral": False,
        },
        "trigger_id": f"{n}.456.bench",
        "channel": {"id": CHANNEL, "name": "alerts"},
        "response_url": response_url,
        "actions": [action],
    }
    return urlencode({"payload": json.dumps(payload)})


# -- watching the database ---------------------------------------------------------------


@dataclass
class Snapshot:
    at: float  # perf_counter when the answer was in
    cases: int = 0
    max_case_id: int = 0
    in_incidents: int = 0
    inbox: dict[str, int] = field(default_factory=dict)
    outbox: dict[str, int] = field(default_factory=dict)
    incidents: list[int] = field(default_factory=list)

    @property
    def inbox_pending(self) -> int:
        return self.inbox.get("pending", 0)

    @property
    def outbox_pending(self) -> int:
        return self.outbox.get("pending", 0)


class Probe:
    """Reads the service's database, a new connection each time, never writing."""

    def __init__(self, url: str) -> None:
        self.engine: AsyncEngine = create_async_engine(url, poolclass=NullPool)
        self.latest = Snapshot(at=time.perf_counter())

    async def snapshot(self) -> Snapshot:
        async with self.engine.connect() as conn:
            cases, max_id, joined = (
                await conn.execute(
                    text("SELECT count(*), coalesce(max(id), 0), count(incident_id) FROM cases")
                )
            ).one()
            inbox = await conn.execute(text("SELECT status, count(*) FROM inbox GROUP BY status"))
            outbox = await conn.execute(text("SELECT status, count(*) FROM outbox GROUP BY status"))
            incidents = await conn.execute(text("SELECT id FROM incidents ORDER BY id"))
            snap = Snapshot(
                at=0.0,
                cases=int(cases),
                max_case_id=int(max_id),
                in_incidents=int(joined),
                inbox={str(s): int(c) for s, c in inbox.all()},
                outbox={str(s): int(c) for s, c in outbox.all()},
                incidents=[int(i) for (i,) in incidents.all()],
            )
        snap.at = time.perf_counter()
        self.latest = snap
        return snap

    async def final(self) -> dict[str, Any]:
        """What the database holds at the end, for the checks."""
        async with self.engine.connect() as conn:

            async def rows(sql: str) -> list[Any]:
                return list((await conn.execute(text(sql))).all())

            incidents = await rows(
                "SELECT i.id, i.scope, i.key, i.status, i.slack_ts, i.acknowledged_at IS NOT NULL,"
                " (SELECT count(*) FROM cases c WHERE c.incident_id = i.id)"
                " FROM incidents i ORDER BY i.id"
            )
            statuses = await rows("SELECT status, count(*) FROM cases GROUP BY status")
            own = await rows(
                "SELECT count(*), count(slack_ts) FROM cases WHERE own_alert = "
                + ("true" if self.engine.dialect.name == "postgresql" else "1")
            )
            outbox = await rows(
                "SELECT kind, status, count(*) FROM outbox GROUP BY kind, status ORDER BY 1, 2"
            )
            failed = await rows(
                "SELECT kind, last_error, count(*) FROM outbox WHERE status = 'failed' "
                "GROUP BY kind, last_error"
            )
            accounts = await rows("SELECT count(*) FROM accounts")
        return {
            "incidents": [
                {
                    "id": i,
                    "scope": scope,
                    "key": key,
                    "status": status,
                    "slack_ts": ts,
                    "acknowledged": bool(acked),
                    "cases": int(members),
                }
                for i, scope, key, status, ts, acked, members in incidents
            ],
            "cases_by_status": {str(s): int(c) for s, c in statuses},
            "cases_with_own_alert": int(own[0][0]),
            "cases_posted_alone": int(own[0][1]),
            "outbox": {f"{k}/{s}": int(c) for k, s, c in outbox},
            "outbox_failed": [f"{k}: {e} x{c}" for k, e, c in failed],
            "accounts": int(accounts[0][0]),
        }

    async def close(self) -> None:
        await self.engine.dispose()


# -- what the fake Slack saw -------------------------------------------------------------


def busiest_second(stamps: Sequence[float]) -> int:
    """The most of ``stamps`` (sorted, seconds) within any window [t, t + 1 s)."""
    best, first = 0, 0
    for last, t in enumerate(stamps):
        while stamps[first] <= t - 1.0:
            first += 1
        best = max(best, last - first + 1)
    return best


def slack_figures(slack: FakeSlack) -> dict[str, Any]:
    """Counts from the fake's record. A message's ts is the wall clock when it was accepted."""
    per_channel: dict[str, list[float]] = {}
    top_level = replies = broadcast = 0
    for (channel, ts), message in slack.messages.items():
        per_channel.setdefault(channel, []).append(float(ts))
        if channel != CHANNEL:
            continue
        if message.get("thread_ts", ts) == ts:
            top_level += 1
        else:
            replies += 1
            broadcast += message.get("subtype") == "thread_broadcast"
    busiest = {}
    gaps = {}
    for channel, stamps in per_channel.items():
        stamps.sort()
        busiest[channel] = busiest_second(stamps)
        if len(stamps) > 1:
            gaps[channel] = round(min(b - a for a, b in itertools.pairwise(stamps)), 3)
    methods = Counter(call.method for call in slack.calls)
    return {
        "top_level_posts": top_level,
        "thread_replies": replies,
        "thread_replies_broadcast": broadcast,
        "post_calls": methods.get("chat.postMessage", 0),
        "update_calls": methods.get("chat.update", 0),
        "calls_by_method": dict(sorted(methods.items())),
        "ratelimited_429": slack.ratelimited_count,
        "max_posts_in_one_second_per_channel": busiest,
        "min_gap_between_posts_s": gaps,
        "response_url_posts": len(slack.responses),
    }


def stale_incident_messages(slack: FakeSlack, incidents: list[dict[str, Any]]) -> list[str]:
    """Incidents whose message in the fake does not show their final number of accounts."""
    stale = []
    for incident in incidents:
        ts = incident["slack_ts"]
        message = slack.messages.get((CHANNEL, ts)) if ts else None
        if message is None:
            stale.append(f"incident #{incident['id']}: no message")
            continue
        shown = message.get("text", "")
        if f"): {incident['cases']} account" not in shown:
            stale.append(f"incident #{incident['id']} has {incident['cases']} cases: {shown!r}")
    return stale


# -- running it --------------------------------------------------------------------------


@dataclass
class Clicks:
    tally: Tally = field(default_factory=lambda: Tally(count_stored=False))
    by_kind: Counter[str] = field(default_factory=Counter)
    latency_by_kind: dict[str, list[float]] = field(default_factory=dict)


async def send_clicks(
    http: aiohttp.ClientSession,
    url: str,
    slack: FakeSlack,
    probe: Probe,
    clicks: Clicks,
    *,
    rate: float,
    start: float,
    stop: asyncio.Event,
) -> None:
    """One click every 1/rate s on a fixed timetable from ``start`` until ``stop`` is set."""
    rng = random.Random(7)
    tasks: list[asyncio.Task[None]] = []
    n = 0
    while not stop.is_set():
        scheduled = start + n / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
                break
            except TimeoutError:
                pass
        snap = probe.latest
        if n % INCIDENT_CLICK_EVERY == 0 and snap.incidents:
            kind = ids.INCIDENT_ACK
            value = str(snap.incidents[(n // INCIDENT_CLICK_EVERY) % len(snap.incidents)])
        else:
            case = rng.randint(1, max(snap.max_case_id, 1))
            kind = ids.SNOOZE if n % 2 else ids.ACK
            value = f"{case}:{rng.choice(('1h', '4h', '24h'))}" if kind == ids.SNOOZE else str(case)
        posted = [ts for (channel, ts) in slack.messages if channel == CHANNEL]
        first = min(posted, default="1700000000.000100")
        body = click_body(kind, value, n, first, slack.response_url(n))
        clicks.by_kind[kind] += 1
        clicks.tally.send_lag.append(time.perf_counter() - scheduled)
        tasks.append(asyncio.create_task(_click(http, url, body, scheduled, kind, clicks)))
        n += 1
    await asyncio.gather(*tasks)


async def _click(
    http: aiohttp.ClientSession, url: str, body: str, scheduled: float, kind: str, clicks: Clicks
) -> None:
    before = len(clicks.tally.latencies)
    await clicks.tally.send(http, url, body.encode(), signed_click(body), scheduled)
    if len(clicks.tally.latencies) > before:
        clicks.latency_by_kind.setdefault(kind, []).append(time.perf_counter() - scheduled)


async def send_storm(
    http: aiohttp.ClientSession,
    url: str,
    deliveries: list[tuple[str, bytes, dict[str, str]]],
    tally: Tally,
    *,
    seconds: float,
    start: float,
) -> float:
    """Start the deliveries evenly over ``seconds``; return when the last answer was in."""
    interval = seconds / len(deliveries)
    tasks = []
    for i, (_, raw, headers) in enumerate(deliveries):
        scheduled = start + i * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tally.send_lag.append(time.perf_counter() - scheduled)
        tasks.append(asyncio.create_task(tally.send(http, url, raw, headers, scheduled)))
    await asyncio.gather(*tasks)
    return time.perf_counter()


def start_service(tmp: Path, db: Db, slack: FakeSlack, children: list[Child]) -> tuple[Child, str]:
    port = free_port()
    service = Child(
        "reauthbot serve",
        [sys.executable, "-m", "bot", "serve"],
        cwd=tmp,
        env=clean_env(
            tmp,
            HOST="127.0.0.1",
            PORT=str(port),
            DATABASE_URL=db.service_url,
            NYLAS_WEBHOOK_SECRET=WEBHOOK_SECRET,
            SLACK_BOT_TOKEN=BOT_TOKEN,
            SLACK_SIGNING_SECRET=SIGNING_SECRET,
            SLACK_ALERT_CHANNEL=CHANNEL,
            SLACK_API_URL=slack.url,
            REAUTHBOT_LOG_LEVEL="WARNING",
        ),
        log=tmp / "serve.log",
    )
    children.append(service)
    return service, f"http://127.0.0.1:{port}"


def _progress_line(
    label: str, started: float, tally: Tally, clicks: Clicks, snap: Snapshot, slack: FakeSlack
) -> str:
    lat = sorted(tally.latencies)
    return (
        f"  {label} {time.perf_counter() - started:6.1f}s: {tally.ok:,} of "
        f"{tally.completed + tally.in_flight:,} deliveries acknowledged "
        f"(p99 {percentile(lat, 99) * 1000:.0f} ms), cases {snap.cases:,}, "
        f"inbox pending {snap.inbox_pending:,}, outbox pending {snap.outbox_pending:,}, "
        f"incidents {len(snap.incidents)}, posts {len(slack.messages)}, "
        f"updates {len(slack.calls_to('chat.update'))}, 429s {slack.ratelimited_count}, "
        f"clicks {clicks.tally.completed}"
    )


async def benchmark(args: argparse.Namespace, tmp: Path, children: list[Child]) -> dict[str, Any]:
    cancel_on_sigterm()
    say(
        f"signing {args.accounts:,} grant.expired deliveries over {args.domains} domains "
        f"({args.order} order)"
    )
    deliveries = build_deliveries(args.accounts, args.domains, args.order)
    async with (
        FakeSlack(bot_token=BOT_TOKEN) as slack,
        scratch_database(args.database_url, tmp, name=PG_DATABASE, sqlite_file="storm.db") as db,
    ):
        slack.rate_limit_per_channel(SLACK_LIMIT_PER_S)
        say(f"fake Slack at {slack.url} (1 post/s per channel enforced); database: {db.label}")
        service, base = start_service(tmp, db, slack, children)
        try:
            await asyncio.to_thread(service.wait_ready, base + "/readyz")
            say(f"service at {base} (pid {service.pid})")
            probe = Probe(db.probe_url)
            try:
                result = await storm(args, deliveries, base, service, slack, probe)
                result["database"] = db.label
                result["autovacuum"] = db.autovacuum
                result["final"] = await probe.final()
            finally:
                await probe.close()
            result["slack"] = slack_figures(slack)
            result["stale_incident_messages"] = stale_incident_messages(
                slack, result["final"]["incidents"]
            )
            log = service.log.read_text(errors="replace").splitlines()
            result["service_log"] = {
                "errors": sum(1 for line in log if " ERROR " in line),
                "warnings": sum(1 for line in log if " WARNING " in line),
                "first_errors": [line for line in log if " ERROR " in line][:5],
            }
        finally:
            code = await asyncio.to_thread(service.stop)
            say(f"service stopped (exit {code})")
        result["service_exit_code"] = code
    return result


async def storm(
    args: argparse.Namespace,
    deliveries: list[tuple[str, bytes, dict[str, str]]],
    base: str,
    service: Child,
    slack: FakeSlack,
    probe: Probe,
) -> dict[str, Any]:
    before = await probe.snapshot()
    tally = Tally(count_stored=True)
    clicks = Clicks()
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
    stop_clicks = asyncio.Event()
    poll_every = POLL_DURING_LOAD
    timeline: dict[str, float | None] = {"all_stored": None, "drained": None}
    stored: Snapshot | None = None  # the first snapshot with every case stored
    slack_at_stored = 0  # messages the fake Slack had then
    samples: list[dict[str, Any]] = []  # every PROGRESS_EVERY seconds, for the JSON
    analyzed: list[float] = []  # how long each --analyze-every ANALYZE took

    async def poll() -> None:
        while True:
            await probe.snapshot()
            await asyncio.sleep(poll_every)

    async def analyze() -> None:
        """ANALYZE the benchmark's database now and then, as autovacuum would."""
        while True:
            await asyncio.sleep(args.analyze_every)
            began = time.perf_counter()
            async with probe.engine.connect() as conn:
                await conn.execute(text("ANALYZE"))
                await conn.commit()
            analyzed.append(round(time.perf_counter() - began, 2))

    async def ticker(started: float) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            snap = probe.latest
            say(_progress_line("storm", started, tally, clicks, snap, slack))
            samples.append(
                {
                    "t_s": round(time.perf_counter() - started, 1),
                    "acknowledged": tally.ok,
                    "cases": snap.cases,
                    "inbox_pending": snap.inbox_pending,
                    "outbox_pending": snap.outbox_pending,
                    "slack_messages": len(slack.messages),
                    "slack_updates": len(slack.calls_to("chat.update")),
                }
            )

    cpu0, service_cpu0, machine0 = self_cpu_seconds(), service.cpu_seconds(), machine_cpu()
    async with (
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=OPEN_LOOP_CONNECTIONS), timeout=timeout
        ) as webhooks,
        aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64), timeout=timeout
        ) as slack_http,
    ):
        start = time.perf_counter() + 0.1
        say(
            f"storm: {len(deliveries):,} deliveries over {args.seconds:g} s "
            f"({len(deliveries) / args.seconds:,.0f}/s), clicks at {args.clicks_per_second:g}/s"
        )
        poller = asyncio.create_task(poll())
        analyzer = asyncio.create_task(analyze() if args.analyze_every else asyncio.sleep(0))
        progress = asyncio.create_task(ticker(start))
        clicking = asyncio.create_task(
            send_clicks(
                slack_http,
                base + ids.EVENTS_PATH,
                slack,
                probe,
                clicks,
                rate=args.clicks_per_second,
                start=start + CLICKS_START_AFTER,
                stop=stop_clicks,
            )
        )
        try:
            last_answer = await send_storm(
                webhooks, base + WEBHOOK_PATH, deliveries, tally, seconds=args.seconds, start=start
            )
            poll_every = POLL_AFTER_LOAD
            load_cpu = self_cpu_seconds() - cpu0
            at_last = await probe.snapshot()
            say(
                f"all {tally.completed:,} deliveries answered {last_answer - start:.1f} s after "
                f"the start ({tally.ok:,} 2xx); waiting for the cases and the outbox"
            )
            deadline = last_answer + args.drain_timeout
            # 1. every case stored and every delivery processed; the clicks stop then.
            while time.perf_counter() < deadline:
                snap = probe.latest
                if snap.at > last_answer and snap.cases >= tally.ok and not snap.inbox_pending:
                    timeline["all_stored"] = snap.at - last_answer
                    stored, slack_at_stored = snap, len(slack.messages)
                    break
                await asyncio.sleep(POLL_AFTER_LOAD / 2)
            stop_clicks.set()
            await clicking
            clicks_done = time.perf_counter()
            # 2. nothing pending in the outbox, and still nothing STABLE_FOR seconds later.
            drained_at: float | None = None
            while time.perf_counter() < deadline:
                snap = probe.latest
                done = snap.cases >= tally.ok and not snap.inbox_pending
                if snap.at > clicks_done and done and not snap.outbox_pending:
                    if drained_at is None:
                        drained_at = snap.at
                    elif snap.at - drained_at >= STABLE_FOR:
                        break
                else:
                    drained_at = None
                await asyncio.sleep(POLL_AFTER_LOAD / 2)
            else:
                drained_at = None
            timeline["drained"] = None if drained_at is None else drained_at - last_answer
        finally:
            stop_clicks.set()
            for task in (poller, progress, clicking, analyzer):
                task.cancel()
            await asyncio.gather(poller, progress, clicking, analyzer, return_exceptions=True)
        waited = time.perf_counter() - last_answer
        snap = await probe.snapshot()
        say(_progress_line("end", start, tally, clicks, snap, slack))
        if timeline["drained"] is None:
            say(f"NOT drained {args.drain_timeout:g} s after the last delivery")
        else:
            say(f"drained {timeline['drained']:.1f} s after the last delivery")
    # The processes first, the machine last: what the machine used includes theirs.
    service_cpu, own_cpu = service.cpu_seconds() - service_cpu0, self_cpu_seconds() - cpu0
    lat = sorted(tally.latencies)
    click_lat = sorted(clicks.tally.latencies)
    return {
        "deliveries": {
            "sent": len(deliveries),
            "answered": tally.completed,
            "ok_2xx": tally.ok,
            "told_stored": tally.stored,
            "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
            "errors": dict(tally.errors),
            "p50_ms": round(percentile(lat, 50) * 1000, 1),
            "p99_ms": round(percentile(lat, 99) * 1000, 1),
            "max_ms": round((lat[-1] if lat else 0) * 1000, 1),
            "send_lag_p99_ms": round(percentile(sorted(tally.send_lag), 99) * 1000, 1),
            "last_answer_after_s": round(last_answer - start, 2),
        },
        "clicks": {
            "sent": sum(clicks.by_kind.values()),
            "by_kind": dict(clicks.by_kind),
            "ok_2xx": clicks.tally.ok,
            "statuses": {str(k): v for k, v in sorted(clicks.tally.statuses.items())},
            "errors": dict(clicks.tally.errors),
            "p50_ms": round(percentile(click_lat, 50) * 1000, 1),
            "p99_ms": round(percentile(click_lat, 99) * 1000, 1),
            "max_ms": round((click_lat[-1] if click_lat else 0) * 1000, 1),
            "p99_ms_by_kind": {
                kind: round(percentile(sorted(v), 99) * 1000, 1)
                for kind, v in sorted(clicks.latency_by_kind.items())
            },
            "send_lag_p99_ms": round(percentile(sorted(clicks.tally.send_lag), 99) * 1000, 1),
        },
        "after_last_delivery_s": {
            k: (None if v is None else round(v, 2)) for k, v in timeline.items()
        },
        "rates": rates(
            len(deliveries) / args.seconds,
            tally.ok,
            start=start,
            last_answer=last_answer,
            before=before,
            at_last=at_last,
            stored=stored,
        ),
        "at_all_stored": None
        if stored is None
        else {
            "outbox_pending": stored.outbox_pending,
            "slack_messages": slack_at_stored,
        },
        "at_last_delivery": {
            "cases": at_last.cases,
            "inbox_pending": at_last.inbox_pending,
            "outbox_pending": at_last.outbox_pending,
        },
        "samples": samples,
        "analyze_runs_s": analyzed,
        "waited_s": round(waited, 1),
        "at_end": {
            "cases": snap.cases,
            "cases_in_incidents": snap.in_incidents,
            "incidents": len(snap.incidents),
            "inbox": snap.inbox,
            "outbox": snap.outbox,
        },
        "cpu_s": {
            "service": round(service_cpu, 1),
            "generator_during_load": round(load_cpu, 1),
            "generator": round(own_cpu, 1),
            # Everything else on the machine meanwhile (the database server, other programs).
            "rest_of_machine": round(max(0.0, machine_cpu() - machine0 - service_cpu - own_cpu), 1),
            "wall": round(time.perf_counter() - start, 1),
        },
        "service_rss_mb": round(service.rss_mb()),
    }


def rates(
    scheduled: float,
    acknowledged: int,
    *,
    start: float,
    last_answer: float,
    before: Snapshot,
    at_last: Snapshot,
    stored: Snapshot | None,
) -> dict[str, float | None]:
    """Deliveries arriving per second beside cases stored per second.

    Processing is counted from the first delivery (its scheduled time) and from the last
    answer, each until every case was stored; None when they were not all stored in time.
    """

    def per_s(count: int, seconds: float) -> float:
        return round(count / seconds, 1) if seconds > 0 else 0.0

    return {
        "scheduled_per_s": round(scheduled, 1),
        "arrival_per_s": per_s(acknowledged, last_answer - start),
        "processing_from_first_per_s": None
        if stored is None
        else per_s(stored.cases - before.cases, stored.at - start),
        "processing_after_last_per_s": None
        if stored is None
        else per_s(stored.cases - at_last.cases, stored.at - last_answer),
    }


# -- judging and reporting ---------------------------------------------------------------


def assess(result: dict[str, Any], args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    d, c, s, f = result["deliveries"], result["clicks"], result["slack"], result["final"]
    drained = result["after_last_delivery_s"].get("drained")
    stored = result["after_last_delivery_s"].get("all_stored")
    busiest = max(s["max_posts_in_one_second_per_channel"].values(), default=0)
    goals = {
        "all_acknowledged": d["ok_2xx"] == d["sent"],
        "stored_in_time": stored is not None and stored < GOAL_STORED_S,
        "drained_in_time": drained is not None and drained < GOAL_DRAIN_S,
        "no_429": s["ratelimited_429"] <= GOAL_RATELIMITED,
        "within_slack_limit": busiest <= SLACK_LIMIT_PER_S,
        "click_p99_ok": c["sent"] > 0 and c["p99_ms"] < GOAL_CLICK_P99_MS,
    }
    broken = []
    if d["ok_2xx"] != d["sent"] or d["errors"]:
        broken.append(f"deliveries not acknowledged: {d['statuses']} errors {d['errors']}")
    if d["told_stored"] != d["ok_2xx"]:
        broken.append(f"{d['ok_2xx']} acknowledged but the answers say {d['told_stored']} stored")
    if c["ok_2xx"] != c["sent"] or c["errors"]:
        broken.append(f"clicks not acknowledged: {c['statuses']} errors {c['errors']}")
    inbox = result["at_end"]["inbox"]
    if inbox.get("failed"):
        broken.append(f"deliveries the ingest worker gave up on: {inbox}")
    if f["outbox_failed"]:
        broken.append(f"messages given up on: {f['outbox_failed']}")
    if result["service_log"]["errors"]:
        # e.g. "Slack listener failed": an operator's click was acknowledged, then lost.
        broken.append(
            f"{result['service_log']['errors']} errors in the service log, the first: "
            + " | ".join(line[:300] for line in result["service_log"]["first_errors"][:3])
        )
    if drained is None:
        # Not finished within --drain-timeout: a missed goal, not a fault. What is still
        # pending is in the results; what follows can only be judged once it is all done.
        return goals, broken
    cases = sum(f["cases_by_status"].values())
    if cases != args.accounts or f["accounts"] != args.accounts:
        broken.append(
            f"{cases:,} cases and {f['accounts']:,} accounts stored, not {args.accounts:,}"
        )
    expected_top = sum(1 for i in f["incidents"] if i["slack_ts"]) + f["cases_posted_alone"]
    if s["top_level_posts"] != expected_top:
        broken.append(
            f"{s['top_level_posts']} top-level posts, but {expected_top} messages are recorded "
            "(incidents plus cases posted alone): a message was posted twice or lost"
        )
    if result["stale_incident_messages"]:
        broken.append(f"incident messages not up to date: {result['stale_incident_messages']}")
    return goals, broken


def database_notes(result: dict[str, Any], args: Any) -> list[str]:
    notes = []
    if result.get("autovacuum") is False:
        notes.append(
            "note: autovacuum is off on this PostgreSQL server, so nothing gathers planner "
            "statistics or cleans dead rows as it would in production"
        )
    if args.analyze_every:
        runs = result["analyze_runs_s"]
        notes.append(
            f"note: ANALYZE ran every {args.analyze_every:g} s during the run, standing in for "
            f"autovacuum ({len(runs)} runs, longest {max(runs, default=0):.2f} s)"
        )
    return notes


def report(result: dict[str, Any], goals: dict[str, Any], broken: list[str], args: Any) -> None:
    d, c, s, f = result["deliveries"], result["clicks"], result["slack"], result["final"]
    times = result["after_last_delivery_s"]
    stored, drained = times.get("all_stored"), times.get("drained")

    def secs(v: float | None) -> str:
        return f"not within {args.drain_timeout:g} s" if v is None else f"{v:.1f} s"

    at_last, at_end, cpu = result["at_last_delivery"], result["at_end"], result["cpu_s"]
    cases_now = sum(f["cases_by_status"].values())
    r, due = result["rates"], result["at_all_stored"]

    def rate(v: float | None, what: str) -> str:
        return "-" if v is None else f"{v:,.0f} {what}/s"

    incidents = f["incidents"]
    sizes = sorted(i["cases"] for i in incidents)
    busiest = s["max_posts_in_one_second_per_channel"]
    gap = s["min_gap_between_posts_s"].get(CHANNEL)
    by_kind = ", ".join(f"{k} {n}" for k, n in sorted(c["by_kind"].items()))
    out = [
        "",
        "=" * 78,
        f"RESULTS: storm, {args.accounts:,} grant.expired over {args.domains} domains "
        f"in {args.seconds:g} s ({args.order} order), on {result['database']}",
        machine_line(result["machine"]),
        "command: " + result["command"],
        *(
            ["uncommitted: " + ", ".join(result["uncommitted_files"])]
            if result["uncommitted_files"]
            else []
        ),
        *database_notes(result, args),
        "=" * 78,
        f"deliveries: {d['ok_2xx']:,} of {d['sent']:,} acknowledged 2xx "
        f"(statuses {d['statuses']}, errors {sum(d['errors'].values())}); "
        f"last answer {d['last_answer_after_s']:.1f} s after the start",
        f"  time to the 2xx: p50 {d['p50_ms']:.1f} ms, p99 {d['p99_ms']:.1f} ms, "
        f"max {d['max_ms']:.1f} ms (from the scheduled time; sender lag p99 "
        f"{d['send_lag_p99_ms']:.1f} ms)",
        f"cases stored: {cases_now:,} {f['cases_by_status']}",
        f"  at the last delivery: {at_last['cases']:,} cases, {at_last['inbox_pending']:,} "
        f"deliveries pending",
        f"  arrival: {rate(r['arrival_per_s'], 'deliveries')} acknowledged "
        f"({rate(r['scheduled_per_s'], 'deliveries')} scheduled); processing: "
        f"{rate(r['processing_from_first_per_s'], 'cases')} stored from the first delivery, "
        f"{rate(r['processing_after_last_per_s'], 'cases')} after the last",
        f"  after the last delivery: all cases stored {secs(stored)}; "
        f"all cases stored and outbox empty {secs(drained)}",
        *(
            []
            if due is None
            else [
                f"  when the last case was stored: {due['outbox_pending']:,} Slack messages "
                f"still due (outbox pending), {due['slack_messages']:,} in Slack"
            ]
        ),
        f"  at the end: inbox {at_end['inbox']}, outbox {at_end['outbox']}",
        f"  incidents: {len(incidents)} ({', '.join(sorted({i['scope'] for i in incidents}))}; "
        f"cases per incident {sizes[0] if sizes else 0}..{sizes[-1] if sizes else 0}), "
        f"{result['at_end']['cases_in_incidents']:,} cases in incidents, "
        f"{f['cases_posted_alone']} cases posted alone",
        f"Slack (fake): {s['top_level_posts']} top-level posts, {s['thread_replies']} thread "
        f"replies, {s['update_calls']} chat.update calls, {s['ratelimited_429']} answered 429",
        f"  most posts accepted in one second per channel: {busiest} (limit "
        f"{SLACK_LIMIT_PER_S:g}/s); smallest gap between posts in {CHANNEL}: "
        f"{'-' if gap is None else f'{gap:.2f} s'}",
        f"clicks: {c['ok_2xx']} of {c['sent']} acknowledged 200 ({by_kind}); "
        f"time to the 200: p50 {c['p50_ms']:.1f} ms, p99 {c['p99_ms']:.1f} ms, "
        f"max {c['max_ms']:.1f} ms",
        f"  p99 by kind: {c['p99_ms_by_kind']}; sender lag p99 {c['send_lag_p99_ms']:.1f} ms",
        f"CPU over {cpu['wall']:.0f} s: service {cpu['service']:.0f} s, this process "
        f"{cpu['generator']:.1f} s (load generator, clicks and fake Slack), the rest of the "
        f"machine {cpu['rest_of_machine']:.0f} s (database server, anything else running); "
        f"service RSS {result['service_rss_mb']} MB at the end; service log: "
        f"{result['service_log']['errors']} errors, {result['service_log']['warnings']} warnings",
        "",
        "goals:",
        f"  every delivery acknowledged: {verdict(goals['all_acknowledged'])}",
        f"  every case stored < {GOAL_STORED_S:g} s after the last delivery: "
        f"{verdict(goals['stored_in_time'])} ({secs(stored)})",
        f"  stored and delivered < {GOAL_DRAIN_S:g} s after the last delivery: "
        f"{verdict(goals['drained_in_time'])} ({secs(drained)})",
        f"  no 429 from Slack: {verdict(goals['no_429'])} ({s['ratelimited_429']})",
        f"  posts within Slack's limit: {verdict(goals['within_slack_limit'])} "
        f"(at most {max(busiest.values(), default=0)} in one second)",
        f"  click p99 < {GOAL_CLICK_P99_MS:g} ms: {verdict(goals['click_p99_ok'])} "
        f"({c['p99_ms']:.1f} ms)",
        *run_verdict(broken),
        "=" * 78,
    ]
    print("\n".join(out), flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.storm",
        description="Send a storm of signed grant.expired deliveries to `reauthbot serve` "
        "(fake Slack, Slack's per-channel limit enforced) while clicking Slack buttons; time "
        "the acknowledgements and how long the service takes to store every case and deliver "
        "every message.",
    )
    parser.add_argument(
        "--accounts", type=int, help=f"deliveries, one per grant ({FULL['accounts']})"
    )
    parser.add_argument("--domains", type=int, help=f"email domains ({FULL['domains']})")
    parser.add_argument("--seconds", type=float, help=f"to send them in ({FULL['seconds']:g})")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 500 accounts over 5 domains in 5 s (each can still be given)",
    )
    parser.add_argument(
        "--order",
        choices=("domains", "interleaved"),
        default="domains",
        help="deliveries one domain after another (default), or the domains alternating",
    )
    parser.add_argument(
        "--clicks-per-second", type=float, default=5.0, help="Slack button clicks per second (5)"
    )
    add_database_url(parser, PG_DATABASE)
    parser.add_argument(
        "--analyze-every",
        type=float,
        metavar="SECONDS",
        help="PostgreSQL only: run ANALYZE on the benchmark's database this often, standing in "
        "for autovacuum on a server where it is off (the results say which it was)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=600.0,
        help="longest wait after the last delivery, seconds (600)",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the figures to PATH as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.analyze_every is not None and (args.analyze_every <= 0 or not args.database_url):
        raise SystemExit("--analyze-every needs --database-url and a positive number of seconds")
    if args.accounts < 1 or args.domains < 1 or args.seconds <= 0 or args.clicks_per_second <= 0:
        raise SystemExit(
            "--accounts, --domains, --seconds and --clicks-per-second must be positive"
        )
    progress_to(sys.stderr)
    # Taken before the run: the service runs the code in the tree as it is when it starts.
    info, changed = machine(), changed_files()
    result = run_benchmark(benchmark, args)
    if isinstance(result, int):
        return result
    result["machine"] = info
    result["uncommitted_files"] = changed
    result["command"] = command_line("bench.storm", argv)
    result["settings"] = {
        k: getattr(args, k)
        for k in (
            "accounts",
            "domains",
            "seconds",
            "order",
            "clicks_per_second",
            "quick",
            "analyze_every",
            "drain_timeout",
        )
    }
    result["settings"]["database"] = result["database"]
    goals, broken = assess(result, args)
    result["goals"] = goals
    result["broken"] = broken
    report(result, goals, broken, args)
    write_json(args.json, result)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
