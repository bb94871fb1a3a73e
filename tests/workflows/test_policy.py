"""The policy file: [stuck] durations, "off" for initializing, the week for new accounts, and
the [storms] bars."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from workflows.policy import Policy, Storms, Stuck, load_policy


def stuck(tmp_path: Path, text: str) -> Stuck:
    path = tmp_path / "policy.toml"
    path.write_text(f"[stuck]\n{text}\n")
    return load_policy(path).stuck


def test_defaults_follow_nylas() -> None:
    limits = Stuck()
    assert (limits.partial, limits.partial_new, limits.downloading, limits.initializing) == (
        timedelta(hours=24),
        timedelta(days=7),
        timedelta(days=7),
        timedelta(hours=1),
    )


@pytest.mark.parametrize("value", ['"off"', '"OFF"', '" off "'])
def test_initializing_can_be_turned_off(tmp_path: Path, value: str) -> None:
    limits = stuck(tmp_path, f"initializing = {value}")
    assert limits.initializing is None
    assert limits.limit_for("initializing") is None
    assert limits.limit_for("partial") == timedelta(hours=24)  # the others keep theirs


def test_partial_new_is_a_duration(tmp_path: Path) -> None:
    limits = stuck(tmp_path, 'partial = "12h"\npartial_new = "3d"')
    assert limits.limit_for("partial") == timedelta(hours=12)
    assert limits.limit_for("partial", new=True) == timedelta(days=3)
    assert limits.limit_for("downloading", new=True) == timedelta(days=7)


def test_a_new_account_never_gets_less_than_an_old_one(tmp_path: Path) -> None:
    limits = stuck(tmp_path, 'partial = "2d"\npartial_new = "1d"')
    assert limits.limit_for("partial", new=True) == timedelta(days=2)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            'initializing = "never"',
            """stuck.initializing: 'never' is not a duration like 30s, 15m, 2h or 1d, nor "off\"""",
        ),
        (
            "initializing = 5",
            """stuck.initializing: 5 is not a duration like 30s, 15m, 2h or 1d, nor "off\"""",
        ),
        ('initializing = "0s"', "stuck.initializing: must be longer than 0s"),
        (
            'partial = "off"',
            "stuck.partial: 'off' is not a duration like 30s, 15m, 2h or 1d "
            '(only initializing can be "off")',
        ),
        (
            'partial_new = "off"',
            "stuck.partial_new: 'off' is not a duration like 30s, 15m, 2h or 1d "
            '(only initializing can be "off")',
        ),
        (
            'downloading = "off"',
            "stuck.downloading: 'off' is not a duration like 30s, 15m, 2h or 1d "
            '(only initializing can be "off")',
        ),
        ('partial_new = "a week"', "stuck.partial_new: 'a week' is not a duration like 30s"),
        ('partial_new = "0d"', "stuck.partial_new: must be longer than 0s"),
    ],
)
def test_bad_values_are_named(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ValueError) as caught:
        stuck(tmp_path, text)
    assert f"policy.toml: {error}" in str(caught.value)


def storms(tmp_path: Path, text: str) -> Storms:
    path = tmp_path / "policy.toml"
    path.write_text(f"[storms]\n{text}\n")
    return load_policy(path).storms


def test_storm_bars_default_to_a_high_one_for_integrations(tmp_path: Path) -> None:
    defaults = storms(tmp_path, "")
    assert (defaults.threshold, defaults.window) == (5, timedelta(minutes=10))
    assert (defaults.provider_threshold, defaults.provider_domains) == (50, 10)
    assert defaults.max_age == timedelta(hours=6)
    chosen = storms(tmp_path, 'provider_threshold = 400\nprovider_domains = 40\nmax_age = "2h"')
    assert (chosen.provider_threshold, chosen.provider_domains) == (400, 40)
    assert chosen.max_age == timedelta(hours=2)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("provider_domains = 60", "storms: provider_domains cannot exceed provider_threshold"),
        ("provider_threshold = 1", "storms.provider_threshold: Input should be greater than"),
        ('max_age = "0s"', "storms.max_age: must be longer than 0s"),
        ('max_age = "forever"', "storms.max_age: 'forever' is not a duration"),
        ("provider_bar = 3", "storms.provider_bar: is not a known setting"),
    ],
)
def test_bad_storm_values_are_named(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ValueError) as caught:
        storms(tmp_path, text)
    assert f"policy.toml: {error}" in str(caught.value)


# --- [cleanup] and [billing] --------------------------------------------------------------


def policy(tmp_path: Path, text: str) -> Policy:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return load_policy(path)


def test_cleanup_waits_two_weeks_and_no_price_is_assumed(tmp_path: Path) -> None:
    read = policy(tmp_path, "")
    assert read.cleanup.grace == timedelta(days=14)
    assert read.billing.price_per_account is None and read.billing.cost(12) is None


@pytest.mark.parametrize(
    ("price", "expected"),
    [
        ("1.5", Decimal("4.5")),
        ('"1.50"', Decimal("4.50")),
        ("2", Decimal(6)),
        ("0.1", Decimal("0.3")),
    ],
)
def test_the_cost_is_exact(tmp_path: Path, price: str, expected: Decimal) -> None:
    read = policy(tmp_path, f'[cleanup]\ngrace = "10d"\n[billing]\nprice_per_account = {price}\n')
    assert read.cleanup.grace == timedelta(days=10)
    assert read.billing.cost(3) == expected and read.billing.currency == "USD"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[cleanup]\ngrace = "0d"', "cleanup.grace: must be longer than 0s"),
        ('[cleanup]\ngrace = "two weeks"', "cleanup.grace: 'two weeks' is not a duration"),
        ("[cleanup]\nafter = 3", "cleanup.after: is not a known setting"),
        ("[billing]\nprice_per_account = -1", "billing.price_per_account: -1: a price cannot be"),
        (
            '[billing]\nprice_per_account = "cheap"',
            """billing.price_per_account: 'cheap' is not a price like 1.5 or "1.50\"""",
        ),
        (
            "[billing]\nprice_per_account = true",
            """billing.price_per_account: True is not a price like 1.5 or "1.50\"""",
        ),
        (
            '[billing]\nprice_per_account = "nan"',
            """billing.price_per_account: 'nan' is not a price""",
        ),
        (
            '[billing]\ncurrency = "dollars"',
            "billing.currency: 'dollars' is not a three-letter currency code like USD or EUR",
        ),
    ],
)
def test_bad_cleanup_and_billing_values_are_named(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ValueError) as caught:
        policy(tmp_path, text)
    assert f"policy.toml: {error}" in str(caught.value)


def test_the_readme_examples_of_cleanup_and_billing_load(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Billing clean-up") :]
    example = section[section.index("```toml\n") + 8 : section.index("```\n", 10)]
    read = policy(tmp_path, example)
    assert read.cleanup.grace == timedelta(days=14)
    assert read.billing.cost(2) == Decimal("3.00") and read.billing.currency == "USD"
