"""Fuzz the public routes of a running ``reauthbot serve``: never a 5xx, never a foreign log line.

    python -m bench.fuzz_routes [--requests 10000] [--quick] [--seed N] [--json out.json]

The service runs as it does in production (``reauthbot serve``, SQLite, plain log format),
against the fake Slack and Nylas of ``tests/fakes`` on loopback. For each public route it
sends ``--requests`` generated requests, half of them correctly signed:

- ``POST /slack/events``: clicks, modal submissions, slash commands and events with random
  actions, values, texts and structures (deeply nested, NUL and line breaks, huge fields),
  and bodies that are not Slack's at all; signatures missing, wrong, stale, not ASCII or right;
- ``POST /nylas/webhook``: v3 and v2 notifications with fields mutated, gzip bodies (some
  broken), random bytes; signed with the right secret or not;
- ``GET /nylas/webhook``: challenges of every length and alphabet;
- raw HTTP on a socket: broken request lines and headers, bodies that stop half-way or lie
  about their length, connections dropped mid-body.

It passes when no answer is 500 or more and every line the service wrote is its own format (a
record starts with its time and level; a traceback's lines are indented under it). Every
response URL and API URL in the payloads points at the fakes: nothing leaves this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hmac
import json
import random
import re
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench._common import machine, machine_line, say, verdict, write_json
from bot.slack import ids
from tests.cli import service
from tests.fakes.nylas import FakeNylas
from tests.fakes.slack import FakeSlack
from workflows.nylas import samples
from workflows.nylas.webhooks import sign

SIGNING_SECRET = "fuzz-signing-secret-1"
WEBHOOK_SECRET = "fuzz-webhook-secret-1"
CLIENT_SECRET = "fuzz-client-secret-1"
CHANNEL = "C0FUZZ"
# A record's first line: time, level, logger. Continuation lines (tracebacks) are indented.
OWN_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+ "
)
HOSTILE = [
    "",
    "\x00",
    "\n2026-12-07T10:00:00.000+00:00 ERROR reauthbot.app forged",
    "<!channel>",
    "<http://evil.example|click here>@x.test",
    '=HYPERLINK("http://evil.example")',
    "😀" * 50,
    "\u2028\u2029\x85",
    "'; DROP TABLE cases; --",
    "x" * 5000,
    "\ud800",
    "42",
    "-1",
    str(2**64),
    "#1",
    "1:1h",
]


class Fuzzer:
    """Generates requests from one seeded random source."""

    def __init__(self, seed: int, slack_url: str, response_url: Callable[[str], str]) -> None:
        self.rng = random.Random(seed)
        self.slack_url = slack_url
        self.response_url = response_url

    # --- building blocks ---

    def text(self) -> str:
        if self.rng.random() < 0.4:
            return self.rng.choice(HOSTILE)
        length = self.rng.choice([0, 1, 5, 20, 200])
        return "".join(
            chr(self.rng.choice([32, 48, 65, 97, 0x3B1, 0x4E00, 0x1F600]) + self.rng.randrange(26))
            for _ in range(length)
        )

    def value(self, depth: int = 0) -> Any:
        kind = self.rng.random()
        if depth > 3 or kind < 0.35:
            return self.text()
        if kind < 0.45:
            return self.rng.choice([None, True, False, 0, -1, 2**70, 1.5, float("1e308")])
        if kind < 0.7:
            return [self.value(depth + 1) for _ in range(self.rng.randrange(4))]
        return {self.text()[:20]: self.value(depth + 1) for _ in range(self.rng.randrange(4))}

    def deep(self) -> str:
        n = self.rng.choice([100, 1000, 5000])
        return "[" * n + "]" * n

    def maybe(self, good: Any) -> Any:
        """Mostly the right thing, sometimes anything."""
        return good if self.rng.random() < 0.7 else self.value()

    # --- Slack ---

    def slack_payload(self) -> dict[str, Any]:
        kind = self.rng.choice(["block_actions", "view_submission", "block_actions", "other"])
        user = {"id": self.maybe(self.rng.choice(["U0ANA", "U0SUE", "S0GROUP", "W0X"]))}
        if kind == "block_actions":
            action: dict[str, Any] = {
                "action_id": self.maybe(self.rng.choice(ids.ACTIONS)),
                "block_id": self.maybe("case-1"),
                "value": self.maybe(self.rng.choice(["1", "2", "999", "0", str(2**64), "x"])),
                "type": "button",
            }
            if self.rng.random() < 0.2:
                action["selected_option"] = {"value": self.maybe("1:1h")}
            return {
                "type": "block_actions",
                "user": user,
                "team": {"id": self.maybe("T0TEST")},
                "api_app_id": self.maybe("A0APP"),
                "trigger_id": self.maybe("123.456.abc"),
                "response_url": self.response_url(str(self.rng.randrange(1000))),
                "actions": self.maybe([action]),
                "container": self.maybe({"type": "message", "channel_id": CHANNEL}),
            }
        if kind == "view_submission":
            return {
                "type": "view_submission",
                "user": user,
                "team": {"id": "T0TEST"},
                "view": {
                    "id": self.maybe("V0VIEW"),
                    "callback_id": self.maybe(self.rng.choice(ids.VIEWS)),
                    "private_metadata": self.maybe(self.rng.choice(["1", "x", str(2**70)])),
                    "state": self.maybe({"values": self.value()}),
                },
            }
        return {"type": self.text(), "payload": self.value()}

    def slack_body(self) -> tuple[bytes, str]:
        roll = self.rng.random()
        if roll < 0.45:
            payload = self.slack_payload()
            raw = json.dumps(payload) if self.rng.random() < 0.9 else self.deep()
            return form({"payload": raw}), FORM
        if roll < 0.7:
            fields = {
                "command": self.maybe("/reauth"),
                "text": self.rng.choice(
                    [
                        "",
                        "help",
                        "list",
                        "show 1",
                        "ack 1",
                        "list --incident 1",
                        "snooze 1 4h",
                        "stats 30d",
                    ]
                )
                + " "
                + self.text(),
                "user_id": self.maybe("U0ANA"),
                "team_id": "T0TEST",
                "api_app_id": self.maybe("A0APP"),
                "response_url": self.response_url("cmd"),
                "trigger_id": "1.2.3",
            }
            return form({k: str(v) for k, v in fields.items()}), FORM
        if roll < 0.85:
            event = {
                "type": "event_callback",
                "team_id": "T0TEST",
                "api_app_id": "A0APP",
                "event": {
                    "type": self.maybe("app_home_opened"),
                    "user": self.maybe("U0ANA"),
                    "tab": "home",
                },
            }
            if self.rng.random() < 0.1:
                event = {"type": "url_verification", "challenge": self.text()}
            raw = json.dumps(event) if self.rng.random() < 0.85 else self.deep()
            return raw.encode(), "application/json"
        return self.rng.randbytes(self.rng.choice([0, 10, 1000])), self.rng.choice(
            ["application/json", "text/plain", "application/x-www-form-urlencoded"]
        )

    def slack_request(self) -> tuple[bytes, dict[str, str], str]:
        body, content_type = self.slack_body()
        now = int(time.time())
        headers = {"Content-Type": content_type}
        how = self.rng.random()
        if how < 0.5:
            headers["X-Slack-Request-Timestamp"] = str(now)
            headers["X-Slack-Signature"] = slack_signature(str(now), body)
            label = "signed"
        elif how < 0.6:
            stale = str(now - 600)
            headers["X-Slack-Request-Timestamp"] = stale
            headers["X-Slack-Signature"] = slack_signature(stale, body)
            label = "stale"
        elif how < 0.8:
            headers["X-Slack-Request-Timestamp"] = self.rng.choice(
                [str(now), "", "abc", "9" * 30, "-5"]
            )
            headers["X-Slack-Signature"] = self.rng.choice(["v0=" + "0" * 64, "", "v0=", "x"])
            label = "wrong"
        else:
            label = "unsigned"
        return body, headers, label

    # --- Nylas ---

    def nylas_request(self) -> tuple[bytes, dict[str, str], str]:
        roll = self.rng.random()
        if roll < 0.55:
            trigger = self.maybe(
                self.rng.choice(
                    [
                        "grant.expired",
                        "grant.updated",
                        "grant.created",
                        "grant.deleted",
                        "message.created",
                    ]
                )
            )
            try:
                payload: Any = samples.v3_notification(
                    trigger if isinstance(trigger, str) else "grant.expired",
                    grant_id=self.text()[:40] or "g-1",
                    email=self.text()[:60] or "a@b.c",
                    at=datetime.now(UTC),
                )
            except Exception:
                payload = {}
            if isinstance(payload, dict) and self.rng.random() < 0.5:
                self.mutate(payload)
            raw = json.dumps(payload).encode()
        elif roll < 0.75:
            deltas = [
                {
                    "type": self.maybe("account.invalid"),
                    "date": self.maybe(int(time.time())),
                    "object": "account",
                    "object_data": self.maybe(
                        {"id": self.text()[:30] or "a-1", "account_id": self.maybe("a-1")}
                    ),
                }
                for _ in range(self.rng.choice([1, 2, 5]))
            ]
            raw = json.dumps({"deltas": self.maybe(deltas)}).encode()
        elif roll < 0.85:
            raw = self.deep().encode()
        else:
            raw = self.rng.randbytes(self.rng.choice([0, 5, 500]))
        headers: dict[str, str] = {"Content-Type": "application/json"}
        if self.rng.random() < 0.1:
            raw = gzip.compress(raw) if self.rng.random() < 0.8 else raw[:3] + b"\x1f\x8b" + raw
            headers["Content-Encoding"] = "gzip"
        how = self.rng.random()
        if how < 0.5:
            secret = WEBHOOK_SECRET if self.rng.random() < 0.8 else CLIENT_SECRET
            headers["X-Nylas-Signature"] = sign(secret, raw)
            label = "signed"
        elif how < 0.8:
            headers["X-Nylas-Signature"] = self.rng.choice(["", "0" * 64, "zz", "é"])
            label = "wrong"
        else:
            label = "unsigned"
        return raw, headers, label

    def mutate(self, payload: dict[str, Any]) -> None:
        target = payload
        path = self.rng.choice(
            [
                ["id"],
                ["type"],
                ["time"],
                ["data"],
                ["data", "object"],
                ["data", "object", "grant_id"],
                ["data", "object", "email"],
                ["data", "object", "provider"],
                ["data", "object", "credential_id"],
            ]
        )
        for key in path[:-1]:
            inner = target.get(key)
            if not isinstance(inner, dict):
                return
            target = inner
        if self.rng.random() < 0.2:
            target.pop(path[-1], None)
        else:
            target[path[-1]] = self.value()

    def challenge(self) -> str:
        return self.text() if self.rng.random() < 0.8 else "c" * self.rng.choice([256, 257, 5000])

    def raw_http(self, host: str) -> bytes:
        kind = self.rng.randrange(6)
        path = self.rng.choice(["/slack/events", "/nylas/webhook"])
        head = f"POST {path} HTTP/1.1\r\nHost: {host}\r\n"
        if kind == 0:
            return self.rng.randbytes(self.rng.choice([5, 50, 500])) + b"\r\n\r\n"
        if kind == 1:  # a body that stops
            return f"{head}Content-Length: 100\r\n\r\n0123".encode()
        if kind == 2:  # broken chunks
            return f"{head}Transfer-Encoding: chunked\r\n\r\nzz\r\nxx\r\n".encode()
        if kind == 3:
            return f"{head}Content-Length: -3\r\n\r\n".encode()
        if kind == 4:
            return f"{head}X-Bad\x00: v\r\nContent-Length: 0\r\n\r\n".encode()
        percents = "%" * self.rng.randrange(1, 5)
        return f"GET {path}?challenge={percents} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


FORM = "application/x-www-form-urlencoded"


def form(fields: dict[str, str]) -> bytes:
    """URL-encode ``fields``; a lone surrogate becomes bytes that are not UTF-8, on purpose."""
    return urllib.parse.urlencode(fields, errors="surrogatepass").encode()


def slack_signature(timestamp: str, body: bytes) -> str:
    """Sign as Slack does: HMAC-SHA256 of "v0:<timestamp>:<body>" (over bytes, any bytes)."""
    mac = hmac.new(SIGNING_SECRET.encode(), b"v0:" + timestamp.encode() + b":" + body, "sha256")
    return "v0=" + mac.hexdigest()


async def send_raw(host: str, port: int, raw: bytes, statuses: Counter[str]) -> None:
    """Send bytes and read what comes back; a connection closed without an answer is fine."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        statuses["connect-failed"] += 1
        return
    try:
        writer.write(raw)
        await writer.drain()
        if raw.endswith(b"0123") and random.random() < 0.5:
            statuses["dropped by the client"] += 1
            return  # a body that stops, and a client that goes away
        async with asyncio.timeout(15):
            line = await reader.readline()
        parts = line.split()
        statuses[parts[1].decode() if len(parts) > 1 else "no-answer"] += 1
    except (TimeoutError, OSError):
        statuses["no-answer"] += 1
    finally:
        writer.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="reauthbot-fuzz-"))
    log = work / "serve.log"
    results: dict[str, Counter[str]] = {}
    async with (
        FakeSlack(bot_token="xoxb-fuzz") as slack,
        FakeNylas(
            api_key="fuzz-api-key", client_id="fuzz-client", client_secret=CLIENT_SECRET
        ) as nylas,
    ):
        env = {
            "SLACK_BOT_TOKEN": "xoxb-fuzz",
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_ALERT_CHANNEL": CHANNEL,
            "SLACK_API_URL": slack.url,
            "NYLAS_API_KEY": "fuzz-api-key",
            "NYLAS_API_URL": nylas.url,
            "NYLAS_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "NYLAS_CLIENT_ID": "fuzz-client",
            "NYLAS_CLIENT_SECRET": CLIENT_SECRET,
            "DATABASE_URL": f"sqlite+aiosqlite:///{work / 'fuzz.db'}",
            "REAUTHBOT_LOG_LEVEL": "INFO",
        }
        async with service(work, log, env) as base:
            host, port = base.removeprefix("http://").split(":")
            fuzz = Fuzzer(args.seed, slack.url, slack.response_url)
            limit = asyncio.Semaphore(args.concurrency)
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:

                async def post(
                    route: str, make: Callable[[], tuple[bytes, dict[str, str], str]]
                ) -> None:
                    body, headers, label = make()
                    async with limit:
                        try:
                            # As bytes: a header may hold what httpx would refuse as text.
                            raw = {k: v.encode() for k, v in headers.items()}
                            answer = await http.post(route, content=body, headers=raw)
                            key = str(answer.status_code)
                        except httpx.HTTPError as exc:
                            key = f"error:{type(exc).__name__}"
                    results.setdefault(f"POST {route}", Counter())[key] += 1
                    results.setdefault(f"POST {route} ({label})", Counter())[key] += 1

                async def get_challenge() -> None:
                    value = fuzz.challenge()
                    async with limit:
                        try:
                            query = form({"challenge": value}).decode()
                            answer = await http.get(f"/nylas/webhook?{query}")
                            key = str(answer.status_code)
                        except httpx.HTTPError as exc:
                            key = f"error:{type(exc).__name__}"
                    results.setdefault("GET /nylas/webhook", Counter())[key] += 1

                async def raw() -> None:
                    async with limit:
                        await send_raw(
                            host,
                            int(port),
                            fuzz.raw_http(base),
                            results.setdefault("raw HTTP", Counter()),
                        )

                plan: list[tuple[str, Callable[[], Any]]] = [
                    ("POST /slack/events", lambda: post("/slack/events", fuzz.slack_request)),
                    ("POST /nylas/webhook", lambda: post("/nylas/webhook", fuzz.nylas_request)),
                    ("GET /nylas/webhook", get_challenge),
                    ("raw HTTP", raw),
                ]
                began = time.monotonic()
                for name, job in plan:
                    say(f"{name}: {args.requests} requests")
                    for start in range(0, args.requests, 500):
                        await asyncio.gather(
                            *(job() for _ in range(min(500, args.requests - start)))
                        )
                elapsed = time.monotonic() - began
                status, ready = (await http.get("/readyz")).status_code, None
                ready = status == 200
        lines = log.read_text(errors="replace").split("\n")
    foreign = [
        line for line in lines if line and not OWN_LINE.match(line) and not line.startswith("  ")
    ]
    errors = [line for line in lines if OWN_LINE.match(line) and " ERROR " in line[:40]]
    server_errors = {
        route: sum(n for status, n in counts.items() if status.isdigit() and int(status) >= 500)
        for route, counts in results.items()
        if "(" not in route
    }
    return {
        "requests_per_route": args.requests,
        "seed": args.seed,
        "elapsed_s": round(elapsed, 1),
        "statuses": {route: dict(sorted(c.items())) for route, c in sorted(results.items())},
        "responses_5xx": server_errors,
        "log_lines": len([line for line in lines if line]),
        "foreign_log_lines": len(foreign),
        "foreign_sample": foreign[:5],
        "error_lines": len(errors),
        "error_sample": errors[:5],
        "ready_after": ready,
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fuzz_routes", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--requests", type=int, default=10_000, help="requests per route (default 10000)"
    )
    parser.add_argument("--quick", action="store_true", help="300 requests per route")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests = 300
    report = asyncio.run(run(args))
    print(machine_line(report["machine"]))
    for route, counts in report["statuses"].items():
        print(f"  {route}: {counts}")
    broken = []
    if any(report["responses_5xx"].values()):
        broken.append(f"responses >= 500: {report['responses_5xx']}")
    if report["foreign_log_lines"]:
        foreign, sample = report["foreign_log_lines"], report["foreign_sample"]
        broken.append(f"{foreign} log lines not in the service's format: {sample}")
    if not report["ready_after"]:
        broken.append("the service was not ready after the run")
    sent = sum(sum(c.values()) for r, c in report["statuses"].items() if "(" not in r)
    print(
        f"{sent} requests in "
        f"{report['elapsed_s']} s; 5xx: {sum(report['responses_5xx'].values())}; "
        f"log lines: {report['log_lines']} ({report['foreign_log_lines']} foreign, "
        f"{report['error_lines']} at ERROR)"
    )
    for line in report["error_sample"]:
        print(f"  ERROR line: {line[:300]}")
    for problem in broken:
        print(f"BROKEN: {problem}")
    print(f"verdict: {verdict(not broken)}")
    write_json(args.json, report)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
