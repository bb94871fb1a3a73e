"""Every case kind and status has its words in each medium's one table."""

from __future__ import annotations

import pytest

from bot import render
from bot.slack import blocks
from storage.models import CaseKind, CaseStatus
from workflows import digest


@pytest.mark.parametrize(
    "table",
    [blocks.KIND_TITLES, render.KIND_WORDS, digest.KIND_WORDS],
    ids=["slack", "plain", "digest"],
)
def test_every_kind_has_words(table: dict[str, str]) -> None:
    assert set(table) == set(CaseKind)


def test_every_status_has_words_in_slack() -> None:
    assert set(blocks.STATUS_WORDS) == set(CaseStatus)
