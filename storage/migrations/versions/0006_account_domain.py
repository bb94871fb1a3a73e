"""Accounts: the email's domain as an indexed column, for storms and diagnosis by domain.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("email_domain", sa.String(length=320), nullable=True))
    op.create_index("ix_accounts_email_domain", "accounts", ["email_domain"])
    find = "strpos" if op.get_bind().dialect.name == "postgresql" else "instr"
    # Existing rows: after the first '@' (new rows are written after the last one; an email
    # with two '@' is all but unheard of).
    op.execute(
        f"UPDATE accounts SET email_domain = lower(substr(email, {find}(email, '@') + 1)) "
        f"WHERE {find}(email, '@') > 0"
    )


def downgrade() -> None:
    op.drop_index("ix_accounts_email_domain", table_name="accounts")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("email_domain")
