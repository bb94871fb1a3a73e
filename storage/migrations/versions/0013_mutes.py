"""Maintenance windows: the mutes table, and the window a case opened in.

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "mutes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("value", sa.String(length=320), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_by", sa.String(length=128), nullable=True),
        sa.Column("summarised_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_mutes_summarised_ends", "mutes", ["summarised_at", "ends_at"])
    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("muted_by", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_cases_muted_by", "mutes", ["muted_by"], ["id"])
        batch.create_index("ix_cases_muted_by", ["muted_by"])


def downgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.drop_index("ix_cases_muted_by")
        batch.drop_constraint("fk_cases_muted_by", type_="foreignkey")
        batch.drop_column("muted_by")
    op.drop_index("ix_mutes_summarised_ends", table_name="mutes")
    op.drop_table("mutes")
