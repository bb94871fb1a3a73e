"""Cases: escalation schedule, PagerDuty state, when the account went bad; report indexes.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("broken_since", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("escalation_step", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("escalation_due_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("pager_state", sa.String(length=16), nullable=True))
    op.create_index("ix_cases_status_escalation_due", "cases", ["status", "escalation_due_at"])
    for column in ("opened_at", "acknowledged_at", "resolved_at"):
        op.create_index(f"ix_cases_{column}", "cases", [column])
    op.execute("UPDATE cases SET broken_since = opened_at")


def downgrade() -> None:
    for column in ("opened_at", "acknowledged_at", "resolved_at"):
        op.drop_index(f"ix_cases_{column}", table_name="cases")
    op.drop_index("ix_cases_status_escalation_due", table_name="cases")
    with op.batch_alter_table("cases") as batch:
        batch.drop_column("pager_state")
        batch.drop_column("escalation_due_at")
        batch.drop_column("escalation_step")
        batch.drop_column("broken_since")
