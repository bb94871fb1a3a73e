"""Every case kind and status has its words in each table: the card's (Slack and plain text
alike) and the digest's."""

from __future__ import annotations

import pytest

from bot import card
from storage.models import CaseKind, CaseStatus
from workflows import digest


@pytest.mark.parametrize(
    "table",
    [card.KIND_TITLES, digest.KIND_WORDS],
    ids=["card", "digest"],
)
def test_every_kind_has_words(table: dict[str, str]) -> None:
    assert set(table) == set(CaseKind)


def test_every_status_has_words_on_the_card() -> None:
    assert set(card.STATUS_WORDS) == set(CaseStatus)
