"""Accounts: the email domain after the last '@', for rows 0006 filled after the first.

0006 filled ``email_domain`` of existing rows in SQL, after the first '@' and unstripped,
while every row written since has ``storage.models.domain_of``: after the last '@' (RFC 5321
allows an '@' in a quoted local part, never in the domain), stripped, and NULL when empty.
Now that every query by domain reads the column, the rows that differ are written again.

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_accounts = sa.table(
    "accounts",
    sa.column("id", sa.String),
    sa.column("email", sa.String),
    sa.column("email_domain", sa.String),
)


def _domain(email: str | None) -> str | None:
    # storage.models.domain_of as of this revision, copied so the migration stays fixed.
    if not email or "@" not in email:
        return None
    return email.rsplit("@", 1)[1].strip().lower() or None


def upgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(_accounts.c.id, _accounts.c.email, _accounts.c.email_domain).where(
            _accounts.c.email.is_not(None)
        )
    )
    changed = [
        {"account_id": account_id, "domain": _domain(email)}
        for account_id, email, stored in rows
        if _domain(email) != stored
    ]
    if changed:
        bind.execute(
            _accounts.update()
            .where(_accounts.c.id == sa.bindparam("account_id"))
            .values(email_domain=sa.bindparam("domain")),
            changed,
        )


def downgrade() -> None:
    # The domains after the last '@' are right under 0009 too: nothing to undo.
    pass
