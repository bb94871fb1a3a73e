"""Label values are lowercase words, so alert rules and dashboards can match them literally."""

from __future__ import annotations

import pytest

from bot.metrics import label_word


@pytest.mark.parametrize(
    ("value", "word"),
    [
        ("BadSignature", "bad_signature"),
        ("MalformedDelivery", "malformed_delivery"),
        ("TooLarge", "too_large"),
        ("ClientConnectorError", "client_connector_error"),
        ("HTTPError", "http_error"),
        ("channel_not_found", "channel_not_found"),
        ("outreach-uncertain", "outreach_uncertain"),
        ("", "unknown"),
    ],
)
def test_label_word(value: str, word: str) -> None:
    assert label_word(value) == word
