"""package chunk index for delta updates: packages.cdc_index and its sha256

Revision ID: 0014
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("packages") as batch:
        batch.add_column(sa.Column("cdc_index", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("cdc_index_sha256", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("packages") as batch:
        batch.drop_column("cdc_index_sha256")
        batch.drop_column("cdc_index")
