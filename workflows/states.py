"""What each Nylas account state means, taken from the Nylas account sync-state documentation.

One table for v2 ``sync_state`` values and one for v3 grant states. Each row says whether the
account is healthy, passing through a transient state, broken (a case is needed, of which kind)
or gone, in plain words an operator understands and with the next step to take.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from storage.models import ApiVersion, CaseKind


class Health(StrEnum):
    HEALTHY = "healthy"  # syncing; an open case is resolved
    TRANSIENT = "transient"  # syncing but catching up; resolves a case, never opens one here
    BROKEN = "broken"  # not syncing: a case is opened
    GONE = "gone"  # deleted: an open case is resolved as deleted


@dataclass(frozen=True, slots=True)
class StateRule:
    health: Health
    words: str  # the state in plain words
    kind: CaseKind | None = None  # the case to open when broken
    next_step: str = ""


REAUTH_STEP = "Send the end user a re-authentication link."
SUPPORT_STEP = (
    "Contact Nylas Support with the account id, timestamps, the errors seen and the "
    "troubleshooting steps already taken."
)

V2_STATES: dict[str, StateRule] = {
    "running": StateRule(Health.HEALTHY, "syncing reliably"),
    "valid": StateRule(Health.HEALTHY, "syncing reliably"),
    "partial": StateRule(
        Health.TRANSIENT,
        "running with a temporary issue (partial); usually recovers on its own",
    ),
    "initializing": StateRule(
        Health.TRANSIENT, "authenticated; Nylas is connecting to the account's folders"
    ),
    "downloading": StateRule(
        Health.TRANSIENT, "connected; Nylas is running a historical data sync"
    ),
    "invalid": StateRule(
        Health.BROKEN, "has an authorization issue and must be re-authenticated",
        CaseKind.REAUTH, REAUTH_STEP,
    ),
    "invalid-credentials": StateRule(
        Health.BROKEN, "has invalidated credentials and must be re-authenticated",
        CaseKind.REAUTH, REAUTH_STEP,
    ),
    "stopped": StateRule(
        Health.BROKEN,
        "stopped: Nylas cannot reach the provider or repeatedly hit an error",
        CaseKind.STOPPED,
        "Retry sync (downgrade, then upgrade); if it stays stopped, re-authenticate, and if "
        "it keeps stopping, contact Nylas Support.",
    ),
    "exception": StateRule(
        Health.BROKEN, "hit a provider error the Nylas sync engine does not understand",
        CaseKind.SUPPORT, SUPPORT_STEP,
    ),
    "sync-error": StateRule(
        Health.BROKEN, "hit an unexpected error while syncing",
        CaseKind.SUPPORT, SUPPORT_STEP,
    ),
    "deleted": StateRule(Health.GONE, "deleted"),
}  # fmt: skip

V3_STATES: dict[str, StateRule] = {
    "valid": StateRule(Health.HEALTHY, "grant is valid"),
    "invalid": StateRule(
        Health.BROKEN, "grant has expired and must be re-authenticated",
        CaseKind.REAUTH, REAUTH_STEP,
    ),
    "deleted": StateRule(Health.GONE, "grant was deleted"),
}  # fmt: skip

# The state each v2 trigger announces. v2 account webhooks carry only the account id, so the
# account is fetched for its current state; this is what applies when it cannot be.
V2_TRIGGER_STATES: dict[str, str] = {
    "account.connected": "initializing",
    "account.running": "running",
    "account.stopped": "stopped",
    "account.invalid": "invalid",
    "account.sync_error": "sync-error",
}

V3_TRIGGERS = ("grant.created", "grant.updated", "grant.expired", "grant.deleted")

# A stuck case (a transient state that lasted too long) needs other advice than the state's
# own row, which says it usually recovers by itself.
STUCK_SUPPORT_STEP = (
    "Contact Nylas Support. In the ticket, include the account id, any message ids and "
    "timestamps, the errors you and the end user see, any custom code involved, and the "
    "troubleshooting steps already taken."
)
STUCK_STEPS: dict[str, str] = {
    "partial": (
        "An account newly connected or re-authenticated may stay partial for up to a week "
        "during its first sync, an existing one for a day; this one has been partial longer. "
        f"{STUCK_SUPPORT_STEP}"
    ),
    "downloading": STUCK_SUPPORT_STEP,
    "initializing": (
        "Check the scopes the account was authenticated with: an account with only the "
        "email.send scope always stays initializing. Re-authenticate it with the scopes your "
        "application needs or, if it only sends, press Expected (send-only)."
    ),
}

# How a stuck initializing case is closed when an operator says the account only sends.
SEND_ONLY_RESOLUTION = (
    "Expected: the account only sends (the email.send scope), so it stays initializing."
)


def classify(api_version: str, state: str) -> StateRule:
    """Return the rule for a state; an unknown state is broken, never ignored."""
    table = V2_STATES if api_version == ApiVersion.V2 else V3_STATES
    rule = table.get(state)
    if rule is not None:
        return rule
    return StateRule(
        Health.BROKEN,
        f"is in state {state!r}, which reauthbot does not know",
        CaseKind.UNKNOWN,
        "Check the account in the Nylas Dashboard.",
    )


DUPLICATE_STEP = (
    "Delete the old account id so the mailbox is billed once, and re-sync the end user's data "
    "under the new id (every object id changed)."
)


def next_step(kind: str, api_version: str, state: str | None) -> str:
    """Return what an operator should do next about a case of ``kind`` in ``state``."""
    if kind == CaseKind.STUCK:
        return STUCK_STEPS.get(state or "", STUCK_SUPPORT_STEP)
    if kind == CaseKind.DUPLICATE:
        return DUPLICATE_STEP
    return classify(api_version, state or "unknown").next_step
