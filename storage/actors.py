"""Actors: who did something, as the audit log and the cases store it.

An actor is a plain string, kept exactly as it has always been written, since operators read
and filter the audit log by it:

- ``slack:<user id>``: an operator acting in Slack (``slack("U123")``);
- ``system``: reauthbot itself (escalation, snoozes ending, duplicates, storms…);
- ``nylas``: a webhook delivery, ``poll``: reconciliation; other event sources name themselves
  (``retry``, ``revoke``…);
- ``cli:<login>``: an operator at the command line (``cli("ana")``);
- ``end_user``: the owner of the mailbox (opening a tracked re-auth link).

Whatever comes before the first ':' is the actor's source (``source``); only a Slack actor
carries a user id after it. This module is the one place that makes and reads these strings.
"""

from __future__ import annotations

SYSTEM = "system"
NYLAS = "nylas"
POLL = "poll"
CLI = "cli"
END_USER = "end_user"
SLACK = "slack"

_SLACK_PREFIX = f"{SLACK}:"


def slack(user_id: str) -> str:
    """The actor of a Slack user."""
    return f"{_SLACK_PREFIX}{user_id}"


def cli(user: str) -> str:
    """The actor of an operator at the command line, by login name."""
    return f"{CLI}:{user}"


def is_slack(actor: str) -> bool:
    """Whether ``actor`` is a Slack user, rather than reauthbot, Nylas, the CLI…"""
    return actor.startswith(_SLACK_PREFIX)


def slack_user(actor: str) -> str | None:
    """The Slack user id of a Slack actor; None for any other actor."""
    return actor.removeprefix(_SLACK_PREFIX) if is_slack(actor) else None


def name(actor: str) -> str:
    """The actor as it is named: the user id of a Slack actor, else the actor itself."""
    return actor.removeprefix(_SLACK_PREFIX)


def source(actor: str) -> str:
    """Where an actor comes from: ``slack`` for every Slack user, else the actor itself."""
    return actor.split(":", 1)[0]
