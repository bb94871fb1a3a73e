"""Sentences about cases with the people in them kept apart from the words.

Workflows write no Slack markup. A sentence that names someone (who acknowledged a case, whom
an escalation calls) is a ``Line``: plain-text pieces, which may hold anything an end user,
an operator or Nylas wrote, and ``Person`` pieces. Only the Slack renderer turns a person into
a mention, and escapes every other piece; logs and the CLI show the plain form.

In an outbox payload a line is ``text`` (its plain form, for every reader) and, when it names
someone, ``parts`` (``to_json``), which the Slack sink renders instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from storage import actors


@dataclass(frozen=True, slots=True)
class Person:
    """Someone a sentence names: an actor ("slack:U…", "system") or a Slack user or group id."""

    id: str

    def __str__(self) -> str:
        name = actors.name(self.id)
        return f"@{name}" if actors.is_slack(self.id) or name[:1] in ("U", "W", "S") else name


Part = str | Person
Line = tuple[Part, ...]
Text = str | Line


def line(*parts: Part) -> Line:
    """A sentence from words and people, in order."""
    return tuple(parts)


def plain(text: Text) -> str:
    """The sentence as plain text, people by their id."""
    return text if isinstance(text, str) else "".join(str(part) for part in text)


def names_someone(text: Text) -> bool:
    return not isinstance(text, str) and any(isinstance(part, Person) for part in text)


def to_json(text: Text) -> list[str | dict[str, str]]:
    """The sentence as JSON, for an outbox payload."""
    parts = [text] if isinstance(text, str) else text
    return [part if isinstance(part, str) else {"person": part.id} for part in parts]


def from_json(raw: object) -> Line:
    """A sentence read back from ``to_json``; whatever is not a person is words."""
    if not isinstance(raw, list):
        return (str(raw),) if raw is not None else ()
    parts: list[Part] = []
    for item in raw:
        if isinstance(item, dict) and isinstance(item.get("person"), str):
            parts.append(Person(item["person"]))
        else:
            parts.append(str(item))
    return tuple(parts)


def payload(text: Text) -> dict[str, object]:
    """The payload fields that carry a sentence: ``text``, and ``parts`` when it names anyone."""
    fields: dict[str, object] = {"text": plain(text)}
    if names_someone(text):
        fields["parts"] = to_json(text)
    return fields
