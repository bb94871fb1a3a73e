"""Which channel a case's alert goes to."""

from __future__ import annotations

from collections.abc import Mapping

from storage.models import domain_of
from workflows.lifecycle import Router


def make_router(domains: Mapping[str, str], default: str) -> Router:
    """Route by the email's domain when the policy names it, else to ``default``."""

    def route(email: str | None) -> str:
        domain = domain_of(email)
        return domains.get(domain, default) if domain else default

    return route
