"""Actors are stored as they always were: operators' audit data is read by these strings."""

from __future__ import annotations

from storage import actors


def test_a_slack_actor_is_stored_as_slack_and_the_user_id() -> None:
    assert actors.slack("U123") == "slack:U123"
    assert actors.is_slack("slack:U123")
    assert actors.slack_user("slack:U123") == "U123"
    assert actors.name("slack:U123") == "U123"
    assert actors.source("slack:U123") == actors.SLACK == "slack"


def test_other_actors_are_their_own_name_and_source() -> None:
    assert (actors.SYSTEM, actors.NYLAS, actors.POLL, actors.CLI) == (
        "system",
        "nylas",
        "poll",
        "cli",
    )
    for actor in ("system", "nylas", "poll", "cli", "retry", "U123"):
        assert not actors.is_slack(actor)
        assert actors.slack_user(actor) is None
        assert actors.name(actor) == actor
        assert actors.source(actor) == actor


def test_only_the_prefix_is_read() -> None:
    assert actors.slack_user("slack:U1:x") == "U1:x"
    assert actors.source("slack:U1:x") == "slack"
    assert not actors.is_slack("Slack:U1")
    assert actors.slack_user("slack:") == ""
