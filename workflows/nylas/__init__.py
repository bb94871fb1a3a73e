"""Nylas API client (v2 accounts and v3 grants); depends only on httpx and the stdlib."""

from workflows.nylas.client import NylasClient, RemoteAccount, SkippedAccount, WebhookDestination
from workflows.nylas.errors import (
    NylasAuthError,
    NylasBadResponse,
    NylasError,
    NylasNotFound,
    NylasRateLimited,
    NylasRequestError,
    NylasUnavailable,
    UnsupportedOperation,
)

__all__ = [
    "NylasAuthError",
    "NylasBadResponse",
    "NylasClient",
    "NylasError",
    "NylasNotFound",
    "NylasRateLimited",
    "NylasRequestError",
    "NylasUnavailable",
    "RemoteAccount",
    "SkippedAccount",
    "UnsupportedOperation",
    "WebhookDestination",
]
