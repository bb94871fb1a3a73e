"""Whether Nylas still bills an account.

Nylas bills every v2 account whose ``billing_state`` is neither ``cancelled`` nor ``deleted``
(a stopped or invalid account included), and every v3 grant until it is deleted (an invalid
grant included). A v2 account whose billing state is not known yet is neither.
"""

from __future__ import annotations

from storage.models import Account

NOT_BILLED = ("cancelled", "deleted")  # v2 billing states Nylas does not bill
GONE = "deleted"  # the sync state of a deleted v3 grant


def still_billed(account: Account) -> bool | None:
    """True or False, or None when a v2 account's billing state is not known yet."""
    if account.api_version == "v3":
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
    if account.api_version == "v3":
        return "Nylas still bills this grant until it is deleted."
    return f"Nylas still bills this account (billing state {account.billing_state})."
