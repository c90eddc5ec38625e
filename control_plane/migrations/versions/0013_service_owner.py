"""service owner: the replica running an online service's agents; per-job Ray resources

Revision ID: 0013
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("services") as batch:
        batch.add_column(sa.Column("owner", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("owner_address", sa.String(length=255), nullable=True))
    with op.batch_alter_table("training_jobs") as batch:
        batch.add_column(sa.Column("resources", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_jobs") as batch:
        batch.drop_column("resources")
    with op.batch_alter_table("services") as batch:
        batch.drop_column("owner_address")
        batch.drop_column("owner")
