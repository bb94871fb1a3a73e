"""NylasClient against the fake Nylas server, over real HTTP."""

from __future__ import annotations

import base64
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.fakes.nylas import FakeNylas
from tests.ports import closed_port_url
from workflows.nylas import (
    NylasAuthError,
    NylasBadResponse,
    NylasClient,
    NylasError,
    NylasNotFound,
    NylasRateLimited,
    NylasRequestError,
    NylasUnavailable,
    SkippedAccount,
    UnsupportedOperation,
)
from workflows.nylas.client import clip_id
from workflows.nylas.errors import decipher_response

CLIENT_ID = "cid"
SECRET = "csecret-7f3a9c"
API_KEY = "nyk_v0_secretkey42"


class Sleeps(list[float]):
    """Stands in for asyncio.sleep: records each delay instead of waiting."""

    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
async def fake() -> AsyncIterator[FakeNylas]:
    async with FakeNylas(client_id=CLIENT_ID, client_secret=SECRET, api_key=API_KEY) as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        yield client


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


def make_client(
    url: str, http: httpx.AsyncClient, version: str, sleeps: Sleeps, **overrides: Any
) -> NylasClient:
    options: dict[str, Any] = {
        "api_version": version,
        "base_url": url,
        "client_id": CLIENT_ID,
        "client_secret": SECRET if version == "v2" else None,
        "api_key": API_KEY if version == "v3" else None,
        "sleep": sleeps,
        **overrides,
    }
    return NylasClient(http, **options)


def add_accounts(fake: FakeNylas, version: str, n: int) -> list[str]:
    if version == "v2":
        fake.add_many_v2(n, id_prefix="a")
    else:
        fake.add_many_grants(n, id_prefix="g")
    return [f"{'a' if version == 'v2' else 'g'}{i}" for i in range(n)]


def list_path(version: str) -> str:
    return f"/a/{CLIENT_ID}/accounts" if version == "v2" else "/v3/grants"


def one_path(version: str, account_id: str) -> str:
    return f"{list_path(version)}/{account_id}"


# -- auth ------------------------------------------------------------------------------


async def test_v2_uses_basic_auth_with_the_client_secret(fake, http, sleeps) -> None:
    fake.add_v2_account(id="a1", email="ann@example.com")
    await make_client(fake.url, http, "v2", sleeps).get_account("a1")

    expected = base64.b64encode(f"{SECRET}:".encode()).decode()
    assert fake.calls[-1].headers["Authorization"] == f"Basic {expected}"


async def test_v3_uses_bearer_auth_with_the_api_key(fake, http, sleeps) -> None:
    fake.add_grant(id="g1", email="ann@example.com")
    await make_client(fake.url, http, "v3", sleeps).get_account("g1")

    assert fake.calls[-1].headers["Authorization"] == f"Bearer {API_KEY}"


@pytest.mark.parametrize("version", ["v2", "v3"])
async def test_refused_credentials_raise_auth_error(fake, http, sleeps, version) -> None:
    wrong = {"client_secret": "wrong-secret"} if version == "v2" else {"api_key": "wrong-key"}
    client = make_client(fake.url, http, version, sleeps, **wrong)

    with pytest.raises(NylasAuthError) as caught:
        await client.get_account("x")

    assert caught.value.status == 401
    assert "wrong-" not in str(caught.value)
    assert sleeps == []


async def test_v2_secret_of_another_application_is_refused(fake, http, sleeps) -> None:
    client = make_client(fake.url, http, "v2", sleeps, client_id="other-app")

    with pytest.raises(NylasAuthError):
        await client.get_account("a1")


# -- reading ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "count", "offsets"),
    [
        # v3: a short page is the last one.
        ("v3", 25, [0, 10, 20]),
        ("v3", 20, [0, 10, 20]),
        ("v3", 0, [0]),
        # v2: only an empty page ends the list (its maximum limit is undocumented).
        ("v2", 25, [0, 10, 20, 25]),
        ("v2", 20, [0, 10, 20]),
        ("v2", 0, [0]),
    ],
)
async def test_iter_accounts_pages_to_the_end(fake, http, sleeps, version, count, offsets) -> None:
    ids = add_accounts(fake, version, count)
    client = make_client(fake.url, http, version, sleeps, page_size=10)

    seen = [account.id async for account in client.iter_accounts()]

    assert seen == ids
    calls = fake.calls_to("GET", list_path(version))
    assert [c.query for c in calls] == [{"limit": "10", "offset": str(o)} for o in offsets]


async def test_iter_v2_accounts_survives_a_silently_capped_limit(fake, http, sleeps) -> None:
    ids = add_accounts(fake, "v2", 2500)
    client = make_client(fake.url, http, "v2", sleeps, page_size=1500)

    seen = [account.id async for account in client.iter_accounts()]

    # The fake caps v2 pages at 1000 without saying so; every account is still read.
    assert seen == ids
    assert [c.query["offset"] for c in fake.calls] == ["0", "1000", "2000", "2500"]


async def test_iter_grants_follows_the_limit_nylas_applied(fake, http, sleeps) -> None:
    ids = add_accounts(fake, "v3", 450)
    client = make_client(fake.url, http, "v3", sleeps, page_size=500)

    seen = [account.id async for account in client.iter_accounts()]

    # The fake caps limit at 200, so a 200-item page must not be taken for the last one.
    assert seen == ids
    assert [c.query["offset"] for c in fake.calls] == ["0", "200", "400"]


async def test_get_v2_account(fake, http, sleeps) -> None:
    fake.add_v2_account(
        id="a1", email="ann@example.com", sync_state="invalid-credentials", billing_state="paid"
    )

    account = await make_client(fake.url, http, "v2", sleeps).get_account("a1")

    assert (account.id, account.api_version, account.email, account.provider) == (
        "a1",
        "v2",
        "ann@example.com",
        "gmail",
    )
    assert (account.sync_state, account.billing_state, account.updated_at) == (
        "invalid-credentials",
        "paid",
        None,
    )
    assert account.raw["account_id"] == "a1"
    assert fake.calls[-1].path == f"/a/{CLIENT_ID}/accounts/a1"


async def test_get_v3_grant(fake, http, sleeps) -> None:
    fake.add_grant(
        id="g1", email="bo@example.com", grant_status="invalid", updated_at=1_700_000_000
    )

    account = await make_client(fake.url, http, "v3", sleeps).get_account("g1")

    assert (account.id, account.api_version, account.email, account.provider) == (
        "g1",
        "v3",
        "bo@example.com",
        "google",
    )
    assert (account.sync_state, account.billing_state) == ("invalid", None)
    assert account.updated_at == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
    assert fake.calls[-1].path == "/v3/grants/g1"


@pytest.mark.parametrize("version", ["v2", "v3"])
async def test_unknown_account_raises_not_found(fake, http, sleeps, version) -> None:
    client = make_client(fake.url, http, version, sleeps)

    with pytest.raises(NylasNotFound) as caught:
        await client.get_account("nope")

    assert caught.value.status == 404
    assert (caught.value.request_id is not None) == (version == "v3")
    assert sleeps == []


async def test_account_ids_are_escaped_into_one_path_segment(fake, http, sleeps) -> None:
    fake.add_grant(id="a/b", email="ann@example.com")
    client = make_client(fake.url, http, "v3", sleeps)

    assert (await client.get_account("a/b")).id == "a/b"
    with pytest.raises(NylasNotFound):
        await client.get_account("../grants")


async def test_malformed_success_body_raises_bad_response(fake, http, sleeps) -> None:
    fake.fail("GET", "/v3/grants", status=200, body={"data": "not a list"})
    fake.fail("GET", "/v3/grants/g1", status=200, body="<html>")
    client = make_client(fake.url, http, "v3", sleeps)

    with pytest.raises(NylasBadResponse):
        [account async for account in client.iter_accounts()]
    with pytest.raises(NylasBadResponse):
        await client.get_account("g1")


@pytest.mark.parametrize("version", ["v3", "v2"])
async def test_unusable_rows_of_the_listing_are_skipped_and_reported(
    fake, http, sleeps, version
) -> None:
    add = fake.add_grant if version == "v3" else fake.add_v2_account
    add(id="ok-1", email="ann@example.com")
    add(id="long-email", email="x" * 409)
    add(id="nul-email", email="bo\x00@example.com")
    add(id="odd-provider", email="cy@example.com", provider="\ud800")
    add(id="i" * 300, email="di@example.com")
    add(id="ok-2", email="ed@example.com")
    skipped: list[SkippedAccount] = []
    client = make_client(fake.url, http, version, sleeps)

    listed = [account.id async for account in client.iter_accounts(skipped=skipped.append)]

    assert listed == ["ok-1", "ok-2"]
    assert [(s.id, s.reason) for s in skipped] == [
        ("long-email", "'email' is longer than 320 characters (409)"),
        ("nul-email", "'email' holds a control character or text that is not valid Unicode"),
        ("odd-provider", "'provider' holds a control character or text that is not valid Unicode"),
        ("i" * 300, "'id' is longer than 255 characters (300)"),
    ]
    with pytest.raises(NylasBadResponse, match="longer than 320"):
        await client.get_account("long-email")


def test_ids_in_log_lines_are_clipped_and_escaped() -> None:
    assert clip_id("g-1") == "g-1"
    assert clip_id("a\x00b") == "a\\x00b"
    assert clip_id("i" * 300) == "i" * 40 + "…"
    assert clip_id(None) == "(none)"


# -- retries ---------------------------------------------------------------------------


async def test_429_waits_for_retry_after_then_succeeds(fake, http, sleeps) -> None:
    fake.add_grant(id="g1", email="ann@example.com")
    fake.fail("GET", "/v3/grants/g1", status=429, headers={"Retry-After": "7"})

    account = await make_client(fake.url, http, "v3", sleeps).get_account("g1")

    assert account.id == "g1"
    assert sleeps == [7.0]
    assert len(fake.calls) == 2


async def test_v2_429_waits_for_ratelimit_reset(fake, http, sleeps) -> None:
    fake.add_v2_account(id="a1", email="ann@example.com")
    fake.fail("GET", r"/a/cid/accounts/a1", status=429, headers={"X-RateLimit-Reset": "3"})

    await make_client(fake.url, http, "v2", sleeps).get_account("a1")

    assert sleeps == [3.0]


async def test_retry_after_is_capped_at_max_backoff(fake, http, sleeps) -> None:
    fake.add_grant(id="g1", email="ann@example.com")
    fake.fail("GET", "/v3/grants/g1", status=429, headers={"Retry-After": "3600"})

    await make_client(fake.url, http, "v3", sleeps, max_backoff=30.0).get_account("g1")

    assert sleeps == [30.0]


async def test_429_beyond_max_retries_raises_rate_limited(fake, http, sleeps) -> None:
    fake.fail("GET", "/v3/grants", status=429, times=None, headers={"Retry-After": "2"})
    client = make_client(fake.url, http, "v3", sleeps, max_retries=2)

    with pytest.raises(NylasRateLimited) as caught:
        [account async for account in client.iter_accounts()]

    assert caught.value.retry_after == 2.0
    assert sleeps == [2.0, 2.0]
    assert len(fake.calls) == 3


async def test_503_is_retried_with_exponential_backoff(fake, http, sleeps) -> None:
    fake.add_grant(id="g1", email="ann@example.com")
    fake.fail("GET", "/v3/grants/g1", status=503, times=2)

    await make_client(fake.url, http, "v3", sleeps, backoff_base=0.5).get_account("g1")

    assert len(sleeps) == 2
    assert 0.5 <= sleeps[0] <= 0.55
    assert 1.0 <= sleeps[1] <= 1.1


async def test_5xx_beyond_max_retries_raises_unavailable(fake, http, sleeps) -> None:
    fake.fail("GET", r"/a/cid/accounts/a1", status=502, times=None)
    client = make_client(fake.url, http, "v2", sleeps, max_retries=3, max_backoff=1.0)

    with pytest.raises(NylasUnavailable) as caught:
        await client.get_account("a1")

    assert caught.value.status == 502
    assert "after 4 attempts" in str(caught.value)
    assert len(fake.calls) == 4
    assert sleeps[-1] == 1.0


async def test_timeouts_are_retried_then_raise_unavailable(fake, sleeps) -> None:
    fake.delay("/v3/grants/g1", 2.0)
    async with httpx.AsyncClient(timeout=0.2) as http:
        client = make_client(fake.url, http, "v3", sleeps, max_retries=1)
        with pytest.raises(NylasUnavailable) as caught:
            await client.get_account("g1")

    assert "in time after 2 attempts" in str(caught.value)
    assert len(fake.calls) == 2
    assert len(sleeps) == 1


async def test_connection_refused_is_retried_even_for_post(http, sleeps) -> None:
    client = make_client(closed_port_url(), http, "v2", sleeps, max_retries=2)

    with pytest.raises(NylasUnavailable, match="Could not reach Nylas"):
        await client.downgrade("a1")

    assert len(sleeps) == 2


async def test_post_answered_503_is_not_retried(fake, http, sleeps) -> None:
    fake.add_v2_account(id="a1", email="ann@example.com")
    fake.fail("POST", r"/a/cid/accounts/a1/downgrade", status=503)

    with pytest.raises(NylasUnavailable):
        await make_client(fake.url, http, "v2", sleeps).downgrade("a1")

    assert len(fake.calls) == 1
    assert sleeps == []
    assert fake.v2_accounts["a1"]["billing_state"] == "paid"


async def test_post_that_times_out_is_not_retried(fake, sleeps) -> None:
    fake.add_v2_account(id="a1", email="ann@example.com")
    fake.delay(r"/a/cid/accounts/a1/upgrade", 2.0)
    async with httpx.AsyncClient(timeout=0.2) as http:
        with pytest.raises(NylasUnavailable, match="may or may not have acted"):
            await make_client(fake.url, http, "v2", sleeps).upgrade("a1")

    assert len(fake.calls) == 1
    assert sleeps == []


async def test_post_answered_429_is_retried(fake, http, sleeps) -> None:
    fake.add_v2_account(id="a1", email="ann@example.com")
    fake.fail("POST", r"/a/cid/accounts/a1/downgrade", status=429, headers={"Retry-After": "1"})

    await make_client(fake.url, http, "v2", sleeps).downgrade("a1")

    assert sleeps == [1.0]
    assert fake.v2_accounts["a1"]["billing_state"] == "cancelled"


async def test_other_4xx_is_not_retried(fake, http, sleeps) -> None:
    fake.fail("GET", "/v3/grants/g1", status=400)

    with pytest.raises(NylasRequestError) as caught:
        await make_client(fake.url, http, "v3", sleeps).get_account("g1")

    assert caught.value.status == 400
    assert sleeps == []


# -- actions ---------------------------------------------------------------------------


async def test_downgrade_and_upgrade_change_the_v2_account(fake, http, sleeps) -> None:
    fake.add_v2_account(id="a1", email="ann@example.com", upgrade_result="invalid-credentials")
    client = make_client(fake.url, http, "v2", sleeps)

    await client.downgrade("a1")
    assert (await client.get_account("a1")).sync_state == "stopped"
    assert fake.v2_accounts["a1"]["billing_state"] == "cancelled"

    await client.upgrade("a1")
    account = await client.get_account("a1")
    assert (account.sync_state, account.billing_state) == ("invalid-credentials", "paid")
    posts = [c.path for c in fake.calls if c.method == "POST"]
    assert posts == ["/a/cid/accounts/a1/downgrade", "/a/cid/accounts/a1/upgrade"]


async def test_revoke_all_sends_the_token_to_keep(fake, http, sleeps) -> None:
    fake.add_v2_account(id="a1", email="ann@example.com")
    client = make_client(fake.url, http, "v2", sleeps)

    await client.revoke_all("a1", keep_access_token="tok-new")
    await client.revoke_all("a1")

    assert fake.revocations == [("a1", "tok-new"), ("a1", None)]
    assert [c.json for c in fake.calls] == [{"keep_access_token": "tok-new"}, None]
    assert fake.calls[0].path == "/a/cid/accounts/a1/revoke-all"


async def test_action_on_unknown_v2_account_raises_not_found(fake, http, sleeps) -> None:
    with pytest.raises(NylasNotFound):
        await make_client(fake.url, http, "v2", sleeps).upgrade("ghost")


@pytest.mark.parametrize("version", ["v2", "v3"])
async def test_delete_account_removes_it(fake, http, sleeps, version) -> None:
    [account_id] = add_accounts(fake, version, 1)
    client = make_client(fake.url, http, version, sleeps)

    await client.delete_account(account_id)

    assert fake.calls[-1].method == "DELETE"
    assert fake.calls[-1].path == one_path(version, account_id)
    with pytest.raises(NylasNotFound):
        await client.get_account(account_id)


@pytest.mark.parametrize("action", ["downgrade", "upgrade", "revoke_all"])
async def test_v2_only_actions_are_unsupported_on_v3(fake, http, sleeps, action) -> None:
    client = make_client(fake.url, http, "v3", sleeps)

    with pytest.raises(UnsupportedOperation, match="only in API v2"):
        await getattr(client, action)("g1")

    assert fake.calls == []


# -- re-authentication URLs ------------------------------------------------------------

EMAIL = "zoë+billing@exämple.com"


def query_of(url: str) -> tuple[str, dict[str, list[str]]]:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}", parse_qs(
        parts.query, strict_parsing=True
    )


async def test_v3_reauth_url(http, sleeps) -> None:
    client = make_client("https://api.us.nylas.com/", http, "v3", sleeps)

    url = client.reauth_url(
        email=EMAIL, redirect_uri="https://bot.example.com/cb?x=1", state="s 1&2", provider="google"
    )

    assert query_of(url) == (
        "https://api.us.nylas.com/v3/connect/auth",
        {
            "client_id": [CLIENT_ID],
            "redirect_uri": ["https://bot.example.com/cb?x=1"],
            "response_type": ["code"],
            "login_hint": [EMAIL],
            "access_type": ["online"],
            "state": ["s 1&2"],
            "provider": ["google"],
        },
    )
    # A literal "+" in a query string would be read back as a space.
    assert "+" not in urlsplit(url).query


async def test_v2_reauth_url(http, sleeps) -> None:
    client = make_client("https://api.nylas.com", http, "v2", sleeps)

    url = client.reauth_url(email=EMAIL, redirect_uri="https://bot.example.com/cb")

    assert query_of(url) == (
        "https://api.nylas.com/oauth/authorize",
        {
            "client_id": [CLIENT_ID],
            "redirect_uri": ["https://bot.example.com/cb"],
            "response_type": ["code"],
            "scopes": ["email,calendar,contacts"],
            "login_hint": [EMAIL],
        },
    )


async def test_reauth_url_needs_a_client_id(http, sleeps) -> None:
    client = make_client("https://api.us.nylas.com", http, "v3", sleeps, client_id=None)

    with pytest.raises(ValueError, match="client_id"):
        client.reauth_url(email=EMAIL, redirect_uri="https://bot.example.com/cb")


# -- configuration and secrets ---------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"api_version": "v4"},
        {"api_version": "v2", "client_secret": None},
        {"api_version": "v3", "api_key": None},
        {"api_version": "v3", "page_size": 0},
    ],
)
async def test_incomplete_configuration_is_refused(http, sleeps, options) -> None:
    version = "v2" if options["api_version"] == "v2" else "v3"
    with pytest.raises(ValueError):
        make_client("https://api.us.nylas.com", http, version, sleeps, **options)


async def test_error_messages_never_contain_credentials(fake, http, sleeps) -> None:
    echo = {"request_id": "r1", "error": {"type": "api_error", "message": f"bad key {API_KEY}"}}
    fake.fail("GET", "/v3/grants/echo", status=503, times=None, body=echo)
    fake.fail("GET", r"/a/cid/accounts/echo", status=400, body={"message": f"secret {SECRET}"})
    v2 = make_client(fake.url, http, "v2", sleeps)
    v3 = make_client(fake.url, http, "v3", sleeps, max_retries=1)
    wrong_v2 = make_client(fake.url, http, "v2", sleeps, client_id="other")
    token = base64.b64encode(f"{SECRET}:".encode()).decode()

    errors: list[NylasError] = []
    for call in (
        v3.get_account("echo"),
        v2.get_account("echo"),
        v2.get_account("missing"),
        wrong_v2.get_account("a1"),
        make_client(closed_port_url(), http, "v3", sleeps, max_retries=0).get_account("g1"),
    ):
        with pytest.raises(NylasError) as caught:
            await call
        errors.append(caught.value)

    assert "[redacted]" in str(errors[0])
    assert "[redacted]" in str(errors[1])
    for error in errors:
        text = f"{error} {error!r}"
        assert API_KEY not in text
        assert SECRET not in text
        assert token not in text
        assert str(error).endswith(".")


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (401, NylasAuthError),
        (403, NylasAuthError),
        (404, NylasNotFound),
        (409, NylasRequestError),
        (422, NylasRequestError),
        (429, NylasRateLimited),
        (500, NylasUnavailable),
        (501, NylasUnavailable),
        (302, NylasBadResponse),
    ],
)
def test_decipher_response_maps_status_to_error(status, error) -> None:
    with pytest.raises(error) as caught:
        decipher_response(status, {}, b"", what="GET /v3/grants")

    assert caught.value.status == status


def test_decipher_response_returns_json_on_success() -> None:
    assert decipher_response(200, {}, b'{"a": 1}', what="GET /x") == {"a": 1}
    assert decipher_response(204, {}, b"", what="DELETE /x") is None


def test_package_does_not_import_slack_or_aiohttp() -> None:
    code = (
        "import sys, workflows.nylas; "
        "bad = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'aiohttp', 'slack_bolt', 'slack_sdk'}); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_remote_accounts_can_be_collected_in_a_set(fake, http, sleeps) -> None:
    add_accounts(fake, "v3", 3)
    client = make_client(fake.url, http, "v3", sleeps)

    assert len({account async for account in client.iter_accounts()}) == 3
