"""Webhook alerts: destinations that stopped delivering account events; posted notices.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OPEN = "resolved_at IS NULL"


def upgrade() -> None:
    op.create_table(
        "webhook_alerts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("api_version", sa.String(length=8), nullable=False),
        sa.Column("destination_id", sa.String(length=255), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolution", sa.String(length=16), nullable=True),
    )
    op.create_index(
        "uq_webhook_alerts_one_open",
        "webhook_alerts",
        ["api_version", "destination_id"],
        unique=True,
        sqlite_where=sa.text(_OPEN),
        postgresql_where=sa.text(_OPEN),
    )
    op.create_table(
        "posted_notices",
        sa.Column("key", sa.String(length=255), primary_key=True),
        sa.Column("channel", sa.String(length=64), nullable=False),
        sa.Column("ts", sa.String(length=32), nullable=False),
        sa.Column("posted_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("posted_notices")
    op.drop_index("uq_webhook_alerts_one_open", table_name="webhook_alerts")
    op.drop_table("webhook_alerts")
