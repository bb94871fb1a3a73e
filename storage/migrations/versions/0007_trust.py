"""Accounts: credential, connection time, send-only; incidents: sealed when their storm is over.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OPEN = "status = 'open'"
_ABSORBING = "status = 'open' AND sealed_at IS NULL"


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("credential_id", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("connected_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("send_only", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("incidents") as batch:
        batch.add_column(sa.Column("sealed_at", sa.DateTime(timezone=True), nullable=True))
    _replace_index(_ABSORBING)


def downgrade() -> None:
    _replace_index(_OPEN)
    with op.batch_alter_table("incidents") as batch:
        batch.drop_column("sealed_at")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("send_only")
        batch.drop_column("connected_at")
        batch.drop_column("credential_id")


def _replace_index(where: str) -> None:
    op.drop_index("uq_incidents_one_open_per_key", table_name="incidents")
    op.create_index(
        "uq_incidents_one_open_per_key",
        "incidents",
        ["scope", "key"],
        unique=True,
        sqlite_where=sa.text(where),
        postgresql_where=sa.text(where),
    )
