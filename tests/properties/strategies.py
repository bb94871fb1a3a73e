"""Hypothesis strategies shared by the property tests: hostile JSON, real samples and mutants."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from workflows.nylas import samples
from workflows.states import V2_TRIGGER_STATES, V3_TRIGGERS

# No example database: a run does not replay the failures of earlier runs, so every run
# explores afresh and a result depends on the code only; a failure prints the falsifying
# example. Function-scoped fixtures are shared by every example of a test on purpose (one app
# per test, whose state each property compares before and after a request).
FAST = settings(max_examples=200, deadline=None, database=None)
SLOW = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Text as JSON can carry it: any code point, lone surrogates included ("\ud800" is valid JSON).
any_text = st.text(st.characters(codec=None), max_size=30)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | any_text
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)


def mostly(usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``usual`` three times in four, else ``odd`` (``one_of`` would weigh them alike)."""
    return st.integers(0, 3).flatmap(lambda i: odd if i == 3 else usual)


TRIGGERS = (*V2_TRIGGER_STATES, *V3_TRIGGERS)
ids = st.text(st.characters(codec="ascii", categories=("L", "N")), min_size=1, max_size=12)
emails = st.builds("{}@{}.example".format, ids, ids)
times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@st.composite
def real_samples(draw: st.DrawFn) -> dict[str, Any]:
    """A delivery exactly as ``workflows.nylas.samples`` (and Nylas) writes it."""
    trigger = draw(st.sampled_from(TRIGGERS))
    at = draw(times)
    if samples.api_version_of(trigger) == "v2":
        return samples.v2_delivery(trigger, account_id=draw(ids), at=at)
    return samples.v3_notification(
        trigger,
        grant_id=draw(ids),
        email=draw(emails),
        at=at,
        provider=draw(st.sampled_from(["google", "microsoft", "imap", "ews"])),
        notification_id=draw(ids),
        reauthenticated=draw(st.booleans()),
    )


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON tree: the root, each key of an object, each item of a list."""
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _paths(item, (*path, i))
    return found


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        value = value[step]
    return value


# Values that are almost right: the near misses a parser is most likely to get wrong.
near_misses = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "\ud800",
        "grant.expired",
        "account.invalid",
        "x" * 300,
        "é" * 400,
        0,
        -1,
        1.5,
        10**20,
        -(10**20),
        2**63,
        float("nan"),
        float("inf"),
        True,
        None,
        [],
        {},
        {"grant_id": "g"},
        [{"type": "account.invalid", "date": 1, "object_data": {"id": "a"}}],
    ]
)


@st.composite
def mutated_samples(draw: st.DrawFn) -> Any:
    """A real delivery with a few values replaced, removed or added anywhere in its tree."""
    payload: Any = json.loads(json.dumps(draw(real_samples())))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        path = draw(st.sampled_from(_paths(payload)))
        # A copy: near_misses hands out the same objects each time, and later steps may
        # mutate what this one inserts.
        new = copy.deepcopy(draw(json_values | near_misses))
        if not path:
            payload = new
            continue
        parent = _at(payload, path[:-1])
        operation = draw(st.sampled_from(["replace", "delete", "add"]))
        if operation == "replace":
            parent[path[-1]] = new
        elif operation == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(any_text | st.sampled_from(["email", "code", "id", "account_id"]))] = new
        else:
            parent.insert(path[-1], new)
    return payload


def encode(payload: Any, draw: st.DrawFn) -> bytes:
    """Serialize as some sender might: compact or indented, escaped or raw UTF-8 (surrogates
    and all, as a careless encoder writes them)."""
    text = json.dumps(
        payload,
        ensure_ascii=draw(st.booleans()),
        indent=draw(st.sampled_from([None, 2])),
    )
    return text.encode("utf-8", "surrogatepass")


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """Raw bytes, any JSON value, a real sample or a mutated one."""
    kind = draw(st.sampled_from(["bytes", "json", "sample", "mutant", "mutant"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return encode(draw(json_values), draw)
    if kind == "sample":
        return encode(draw(real_samples()), draw)
    return encode(draw(mutated_samples()), draw)
