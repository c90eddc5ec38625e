"""edge rollouts: explicit activation, weights, guards and removals on deployments; rollouts

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(
            sa.Column("action", sa.String(length=16), nullable=False, server_default="install")
        )
        batch.add_column(
            sa.Column("standby", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("weight", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("guard", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("warmup", sa.JSON(), nullable=True))
    op.create_table(
        "service_rollouts",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("service_name", sa.String(length=64), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("package_digest", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("stage", sa.Integer(), nullable=False),
        sa.Column("plan", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["service_name"], ["services.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_service_rollouts_service_name", "service_rollouts", ["service_name"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_service_rollouts_service_name", table_name="service_rollouts")
    op.drop_table("service_rollouts")
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("warmup")
        batch.drop_column("guard")
        batch.drop_column("weight")
        batch.drop_column("standby")
        batch.drop_column("action")
