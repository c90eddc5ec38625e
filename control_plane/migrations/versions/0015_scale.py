"""scale: index deployment targets by device

Every per-device question about deployments (a device's desired state, whether a chunk request
is for a package deployed to it, supersession when a new deployment arrives) filters
``deployment_targets`` by ``device_id``. That column is the second of the primary key, so without
an index of its own each such query scanned every target row of every deployment: one chunk
request cost time in proportion to devices x deployments, and a rollout to N devices N times
that.

Revision ID: 0015
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployment_targets", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_deployment_targets_device_id"), ["device_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("deployment_targets", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deployment_targets_device_id"))
