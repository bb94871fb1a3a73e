"""Slack requests already served (replay ledger) and the modals the app opened.

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "slack_requests",
        sa.Column("signature", sa.String(length=128), primary_key=True),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
    )
    op.create_index(
        op.f("ix_slack_requests_timestamp"), "slack_requests", ["timestamp"], unique=False
    )
    op.create_table(
        "slack_views",
        sa.Column("view_id", sa.String(length=64), primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(op.f("ix_slack_views_expires_at"), "slack_views", ["expires_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_slack_views_expires_at"), table_name="slack_views")
    op.drop_table("slack_views")
    op.drop_index(op.f("ix_slack_requests_timestamp"), table_name="slack_requests")
    op.drop_table("slack_requests")
