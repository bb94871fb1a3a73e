"""Hostile emails, names, notes and Nylas error texts thrown at every renderer: in mrkdwn no
``<``, ``>`` or ``&`` of theirs survives unescaped (so no link, mention or channel ping they
wrote), in the links CSV no cell starts a formula, and in plain text (local mode, logs) they
stay on their line."""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from bot import render
from bot.slack import blocks, incidents, replies
from bot.slack.replies import links_blocks
from bot.slack.sink import direct_note, thread_text
from storage.incidents import IncidentView, Member
from storage.models import (
    Account,
    Case,
    CaseEvent,
    CaseKind,
    CaseStatus,
    Incident,
    IncidentScope,
    IncidentStatus,
    OutboxKind,
    OutboxMessage,
)
from storage.reports import ChronicAccount, ChronicDomain, Tally
from tests.properties.strategies import mostly
from workflows.states import V3_STATES
from workflows.stats import CaseStats, OutreachFigures
from workflows.subject import ActionOutcome, ActionResult
from workflows.words import Person, line, payload

T0 = datetime(2026, 11, 2, 9, 30, tzinfo=UTC)
ATTACKS = [
    "<http://evil.example|click here>@x.test",
    "<!channel>",
    "<!here|here>",
    "<@U0ADMIN>",
    "<#C0GENERAL>",
    "<!subteam^S0ONCALL>",
    "&lt;!channel&gt;",
    '=HYPERLINK("http://evil.example")',
    "+1-555",
    "-2+3",
    "@SUM(A1)",
    "\tx",
    "\rx",
    "a\nb",
]
hostile = st.one_of(
    st.sampled_from(ATTACKS),
    st.builds("".join, st.lists(st.sampled_from([*ATTACKS, "a", "@", "|", " "]), max_size=5)),
    st.text(max_size=40),
)
# A Slack user id, as our own code writes mentions of them.
user_ids = st.from_regex(r"[UW][A-Z0-9]{2,9}", fullmatch=True)
actors = mostly(user_ids.map("slack:{}".format), hostile.map("slack:{}".format) | hostile)

# What our own code writes in mrkdwn: dates, mentions of ids shaped like Slack's, and the
# user groups of the policy.
OURS = re.compile(
    r"<!date\^\d+\^\{[a-z_]+\}(?: \{time\})?\|[^<>]*>|<@[UW][A-Z0-9]{2,}>|<!subteam\^S[A-Z0-9]{2,}>"
)


def mrkdwn_texts(value: Any) -> list[str]:
    """Every mrkdwn text in a Block Kit structure (plain_text is shown as typed)."""
    found: list[str] = []
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            if item.get("type") == "mrkdwn" and isinstance(item.get("text"), str):
                found.append(item["text"])
            pending.extend(v for k, v in item.items() if k != "text" or isinstance(v, dict))
        elif isinstance(item, list):
            pending.extend(item)
    return found


def assert_inert(text: str) -> None:
    """No markup in ``text`` but ours, and every & starts an entity."""
    rest = OURS.sub("", text)
    assert "<" not in rest and ">" not in rest, text
    assert re.fullmatch(r"(?:[^&]|&(?:amp|lt|gt);)*", rest, flags=re.S), text


def assert_mentions_are(text: str, allowed: set[str]) -> None:
    """Only the users our code meant to mention are mentioned."""
    for found in re.findall(r"<@([^>|]*)", text):
        assert found in allowed, text


def a_case(email: str, state: str, note: str, actor: str, *, status: CaseStatus) -> Case:
    return Case(
        id=7,
        account_id="g-1",
        kind=CaseKind.REAUTH,
        status=status,
        state=state,
        opened_at=T0,
        updated_at=T0,
        broken_since=T0,
        slack_channel="C0ALERTS",
        acknowledged_at=T0 if status != CaseStatus.OPEN else None,
        acknowledged_by=actor if status != CaseStatus.OPEN else None,
        resolved_at=T0 if status == CaseStatus.RESOLVED else None,
        resolved_by=actor if status == CaseStatus.RESOLVED else None,
        resolution=note if status == CaseStatus.RESOLVED else None,
        related_account_id=email,
    )


@given(
    email=hostile,
    provider=hostile,
    state=hostile,
    note=hostile,
    actor=actors,
    status=st.sampled_from(list(CaseStatus)),
    version=st.sampled_from(["v2", "v3"]),
)
def test_alerts_replies_and_cards_show_outside_text_inert(
    email: str, provider: str, state: str, note: str, actor: str, status: CaseStatus, version: str
) -> None:
    account = Account(id=f"g-{email}", api_version=version, email=email, provider=provider)
    case = a_case(email, state, note, actor, status=status)
    history = [
        CaseEvent(id=1, at=T0, actor=actor, action="retry_failed", details={"error": note}),
        CaseEvent(id=2, at=T0, actor="nylas", action="opened", details={"note": email}),
    ]
    stats = CaseStats(
        now=T0,
        window=timedelta(days=7),
        open_total=1,
        open_by_kind=(Tally(key=state, count=1),),
        open_by_provider=(Tally(key=provider, count=1), Tally(key=None, count=2)),
        open_by_domain=(Tally(key=email, count=1),),
        open_billed=1,
        past_grace=1,
        acknowledged=1,
        mean_time_to_acknowledge=timedelta(minutes=3),
        resolved=1,
        mean_time_to_resolve=None,
        fixed_without_operator=0,
        chronic_accounts=(ChronicAccount(account_id="g-1", email=email, cases=3),),
        chronic_domains=(ChronicDomain(domain=email, cases=3, accounts=2),),
        outreach=OutreachFigures(2, 1, timedelta(minutes=17), 1),
    )
    rendered: list[Any] = [
        blocks.alert_blocks(case, account, revoke_enabled=True),
        blocks.revoke_modal(case, account),
        blocks.resolve_modal(case, account),
        replies.case_card(case, account, history, revoke_enabled=True),
        replies.case_list(
            [(case, account)],
            has_more=True,
            offset=0,
            filters={"domain": email, "provider": provider, "statuses": [], "kinds": []},
        ),
        replies.revoke_prompt(case, account),
        replies.stats(stats, "7d"),
    ]
    texts = [blocks.fallback_text(case, account), replies.case_line(case, account)]
    texts += [t for value in rendered for t in mrkdwn_texts(value)]
    user = actor.removeprefix("slack:")
    for text in texts:
        assert_inert(text)
        assert_mentions_are(text, {user} if blocks.USER_ID.fullmatch(user) else set())


@given(
    key=hostile,
    emails=st.lists(hostile, min_size=1, max_size=3),
    actor=actors,
    status=st.sampled_from(list(IncidentStatus)),
)
def test_incident_messages_show_outside_text_inert(
    key: str, emails: list[str], actor: str, status: IncidentStatus
) -> None:
    incident = Incident(
        id=3,
        scope=IncidentScope.DOMAIN,
        key=key,
        status=status,
        opened_at=T0,
        updated_at=T0,
        first_case_at=T0,
        last_case_at=T0 + timedelta(minutes=4),
        ended_at=T0 if status == IncidentStatus.ENDED else None,
        acknowledged_at=T0,
        acknowledged_by=actor,
    )
    view = IncidentView(
        incident=incident,
        total=len(emails),
        by_status={CaseStatus.OPEN: len(emails)},
        by_kind={CaseKind.REAUTH: len(emails)},
        retryable=0,
        linkable=len(emails),
        sample=tuple(Member(label=e) for e in emails),
        resolved_by={},
    )
    assert_inert(incidents.incident_fallback(view))
    for text in mrkdwn_texts(incidents.incident_blocks(view)):
        assert_inert(text)
    # As many lines as the same incident with tame names: outside text adds none.
    tame = replace(
        view,
        incident=incident.model_copy(
            update={"key": "example.com", "acknowledged_by": "slack:U0ANA" if actor else ""}
        ),
        sample=tuple(Member(label="ana@example.com") for _ in emails),
    )
    assert render.incident_text(view).count("\n") == render.incident_text(tame).count("\n")


@given(email=hostile, error=hostile, note=hostile, actor=actors, dm=hostile)
def test_thread_lines_and_direct_messages_show_outside_text_inert(
    email: str, error: str, note: str, actor: str, dm: str
) -> None:
    said = [
        line("Retry sync by ", Person(actor), f" failed: {error}"),
        line("Resolved by ", Person(actor), ":"),
        line(
            Person("S0ONCALL"),
            " ",
            f"Escalated (level 1): case of {email}; sent to ",
            Person(actor),
        ),
        f"State changed from {error} to {note}.",
    ]
    user = actor.removeprefix("slack:")
    allowed = {user} if blocks.USER_ID.fullmatch(user) else set()
    for text in said:
        body = {**payload(text), "quote": note, "at": T0.isoformat()}
        message = OutboxMessage(channel="C0ALERTS", kind=OutboxKind.THREAD, payload=body)
        shown = thread_text(message)
        assert_inert(shown)
        assert_mentions_are(shown, allowed)
        assert "\n" not in render.thread_line(body)
    message = OutboxMessage(channel="U0LEAD", kind=OutboxKind.DM, payload={"text": dm})
    assert_inert(direct_note(message))


@given(links=st.lists(st.tuples(hostile, hostile), min_size=1, max_size=5))
@example(links=[("<http://evil.example|click here>@x.test", "'")])
def test_the_links_csv_is_inert_in_slack_and_in_a_spreadsheet(links: list[tuple[str, str]]) -> None:
    result = ActionResult(
        ActionOutcome.DONE, f"{len(links)} re-authentication links", links=tuple(links)
    )
    rows = list(csv.reader(io.StringIO(result.links_csv(), newline="")))
    assert rows[0] == ["email", "link"]
    cells = [cell for row in rows[1:] for cell in row]
    assert len(cells) == 2 * len(links)
    for cell in cells:
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    # Each cell reads back as given, with a quote before it only where it needed one.
    for (email, link), row in zip(links, rows[1:], strict=True):
        for value, cell in zip((email, link), row, strict=True):
            formula = value.startswith(("=", "+", "-", "@", "\t", "\r"))
            assert cell == (f"'{value}" if formula else value)
    for text in mrkdwn_texts(links_blocks(result)):
        assert_inert(text)


@given(
    email=hostile,
    provider=hostile,
    state=hostile,
    note=hostile,
    actor=actors,
    status=st.sampled_from(list(CaseStatus)),
)
def test_plain_text_keeps_outside_text_on_its_line(
    email: str, provider: str, state: str, note: str, actor: str, status: CaseStatus
) -> None:
    account = Account(id="g-1", api_version="v3", email=email, provider=provider)
    case = a_case(email, state, note, actor, status=status)
    text = render.alert_text(case, account)
    # As many lines as the same card with tame values, whatever the email, state or note hold.
    tame_state = state if state in V3_STATES else "bogus"
    tame_case = a_case("ana@example.com", tame_state, "fixed", "slack:U0ANA", status=status)
    tame = Account(id="g-1", api_version="v3", email="ana@example.com", provider="google")
    assert text.count("\n") == render.alert_text(tame_case, tame).count("\n")
    assert json.dumps(text)  # and it is text
