"""Whether Nylas still bills an account.

Nylas bills every v2 account whose ``billing_state`` is neither ``cancelled`` nor ``deleted``
(a stopped or invalid account included), and every v3 grant until it is deleted (an invalid
grant included). A v2 account whose billing state is not known yet is neither.

A v2 account that is ``stopped`` and no longer billed was stopped on purpose (downgraded): it
needs no case. Retry sync on it upgrades it, which makes Nylas bill it again.
"""

from __future__ import annotations

from typing import Protocol

from storage.models import Account, ApiVersion, Case, CaseKind

NOT_BILLED = ("cancelled", "deleted")  # v2 billing states Nylas does not bill
GONE = "deleted"  # the sync state of a deleted v3 grant


def still_billed(account: Account) -> bool | None:
    """True or False, or None when a v2 account's billing state is not known yet."""
    if account.api_version == ApiVersion.V3:
        return account.sync_state != GONE
    if account.billing_state is None:
        return None
    return account.billing_state not in NOT_BILLED


def billing_words(account: Account) -> str:
    """One sentence for the alert: billed, not billed, or not known yet."""
    billed = still_billed(account)
    if billed is None:
        return "Its billing state is not known yet."
    if not billed:
        return f"Nylas no longer bills it (billing state {account.billing_state})."
    if account.api_version == ApiVersion.V3:
        return "Nylas still bills this grant until it is deleted."
    return f"Nylas still bills this account (billing state {account.billing_state})."


class BillingView(Protocol):
    """What tells an account stopped on purpose: a stored Account or one Nylas lists."""

    @property
    def api_version(self) -> str: ...
    @property
    def sync_state(self) -> str | None: ...
    @property
    def billing_state(self) -> str | None: ...


def stopped_on_purpose(account: BillingView) -> bool:
    """Whether a v2 account is stopped because it was downgraded, not because sync failed."""
    return (
        account.api_version == ApiVersion.V2
        and account.sync_state == "stopped"
        and account.billing_state in NOT_BILLED
    )


def on_purpose_words(account: Account) -> str:
    """The resolution of a case whose account was stopped on purpose."""
    return (
        f"Stopped on purpose: the account was downgraded (billing state {account.billing_state}), "
        "so Nylas neither syncs nor bills it."
    )


def retry_restarts_billing(case: Case, account: Account) -> bool:
    """Whether Retry sync (downgrade, then upgrade) would make Nylas bill the account again."""
    return (
        account.api_version == ApiVersion.V2
        and case.kind == CaseKind.STOPPED
        and account.billing_state in NOT_BILLED
    )


def restart_warning(account: Account) -> str:
    """What an operator must accept before Retry sync on an account Nylas no longer bills."""
    return (
        f"Its billing state is {account.billing_state}: it may have been stopped on purpose. "
        "Retry sync upgrades it, and Nylas starts billing it again."
    )
