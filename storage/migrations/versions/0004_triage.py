"""Triage: incidents (storms), diagnosis and duplicates on cases, how long a state has lasted.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "incidents",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("key", sa.String(length=320), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_case_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_case_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("slack_channel", sa.String(length=64), nullable=True),
        sa.Column("slack_ts", sa.String(length=32), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_by", sa.String(length=64), nullable=True),
        sa.Column("escalation_step", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("escalation_due_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pager_state", sa.String(length=16), nullable=True),
    )
    op.create_index(
        "uq_incidents_one_open_per_key",
        "incidents",
        ["scope", "key"],
        unique=True,
        sqlite_where=sa.text("status = 'open'"),
        postgresql_where=sa.text("status = 'open'"),
    )
    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("incident_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("diagnosis", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("related_account_id", sa.String(length=255), nullable=True))
        batch.add_column(
            sa.Column("own_alert", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch.create_foreign_key("fk_cases_incident_id", "incidents", ["incident_id"], ["id"])
        batch.create_index("ix_cases_incident_id", ["incident_id"])
    op.execute("UPDATE cases SET diagnosis = '[]'")
    with op.batch_alter_table("cases") as batch:
        batch.alter_column("diagnosis", existing_type=sa.JSON(), nullable=False)
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("incident_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_outbox_incident_id", "incidents", ["incident_id"], ["id"])
        batch.create_index("ix_outbox_incident_id", ["incident_id"])
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("state_since", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE accounts SET state_since = state_at")


def downgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("state_since")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_index("ix_outbox_incident_id")
        batch.drop_constraint("fk_outbox_incident_id", type_="foreignkey")
        batch.drop_column("incident_id")
    with op.batch_alter_table("cases") as batch:
        batch.drop_index("ix_cases_incident_id")
        batch.drop_constraint("fk_cases_incident_id", type_="foreignkey")
        batch.drop_column("own_alert")
        batch.drop_column("related_account_id")
        batch.drop_column("diagnosis")
        batch.drop_column("incident_id")
    op.drop_index("uq_incidents_one_open_per_key", table_name="incidents")
    op.drop_table("incidents")
