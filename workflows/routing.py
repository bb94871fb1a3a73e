"""Which channel a case's alert goes to."""

from __future__ import annotations

from collections.abc import Mapping

from workflows.lifecycle import Router


def domain_of(email: str | None) -> str | None:
    if not email or "@" not in email:
        return None
    return email.rsplit("@", 1)[1].strip().lower() or None


def make_router(domains: Mapping[str, str], default: str) -> Router:
    """Route by the email's domain when the policy names it, else to ``default``."""

    def route(email: str | None) -> str:
        domain = domain_of(email)
        return domains.get(domain, default) if domain else default

    return route
