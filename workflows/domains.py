"""Email domains that say nothing about who owns a mailbox: those of public mail providers."""

from __future__ import annotations

# Mailbox providers for the public: many unrelated people share these domains, so accounts of
# one of them going bad together says nothing about an administrator (diagnosis) and is no
# storm (incidents).
PUBLIC_MAIL_DOMAINS = frozenset(
    {
        "gmail.com",
        "googlemail.com",
        "outlook.com",
        "hotmail.com",
        "hotmail.co.uk",
        "live.com",
        "msn.com",
        "yahoo.com",
        "yahoo.co.uk",
        "ymail.com",
        "icloud.com",
        "me.com",
        "mac.com",
        "aol.com",
        "proton.me",
        "protonmail.com",
        "gmx.com",
        "gmx.de",
        "web.de",
        "mail.com",
        "zoho.com",
        "yandex.com",
        "fastmail.com",
    }
)


def is_public(domain: str | None) -> bool:
    """Whether ``domain`` belongs to a public mail provider (gmail.com, outlook.com, …)."""
    return domain is not None and domain in PUBLIC_MAIL_DOMAINS
