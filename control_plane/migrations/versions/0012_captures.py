"""captures: staged capture records and chunks, captures, device capture stores, improvements;
the capture policy of a deployment

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("capture", sa.JSON(), nullable=True))
    op.create_table(
        "capture_uploads",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "digest"),
    )
    op.create_table(
        "capture_chunks",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "digest", "index"),
    )
    op.create_table(
        "captures",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("service_name", sa.String(length=64), nullable=True),
        sa.Column("deployment_id", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("captured_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("input_name", sa.String(length=200), nullable=False),
        sa.Column("input_kind", sa.String(length=16), nullable=False),
        sa.Column("media_type", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("top_k", sa.JSON(), nullable=False),
        sa.Column("predicted", sa.String(length=200), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("shadow_version", sa.String(length=128), nullable=False),
        sa.Column("shadow_top_k", sa.JSON(), nullable=False),
        sa.Column("disagreement", sa.Boolean(), nullable=False),
        sa.Column("dataset_id", sa.String(length=64), nullable=False),
        sa.Column("sample_id", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("label", sa.String(length=200), nullable=False),
        sa.Column("reviewed_by", sa.String(length=200), nullable=False),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("published_in", sa.String(length=100), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("digest"),
    )
    for column in ("device_id", "service_name", "dataset_id", "state"):
        op.create_index(f"ix_captures_{column}", "captures", [column], unique=False)
    op.create_table(
        "capture_device_states",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("stored_records", sa.Integer(), nullable=False),
        sa.Column("stored_bytes", sa.BigInteger(), nullable=False),
        sa.Column("captured_total", sa.BigInteger(), nullable=False),
        sa.Column("uploaded_total", sa.BigInteger(), nullable=False),
        sa.Column("dropped_total", sa.BigInteger(), nullable=False),
        sa.Column("last_purge_id", sa.String(length=64), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("purge_id", sa.String(length=64), nullable=False),
        sa.Column("purge_before_ms", sa.BigInteger(), nullable=False),
        sa.Column("rejected_total", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("device_id"),
    )
    op.create_table(
        "capture_improvements",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("service_name", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("from_version", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("step", sa.String(length=16), nullable=False),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_capture_improvements_service_name",
        "capture_improvements",
        ["service_name"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_capture_improvements_service_name", table_name="capture_improvements")
    op.drop_table("capture_improvements")
    op.drop_table("capture_device_states")
    for column in ("device_id", "service_name", "dataset_id", "state"):
        op.drop_index(f"ix_captures_{column}", table_name="captures")
    op.drop_table("captures")
    op.drop_table("capture_chunks")
    op.drop_table("capture_uploads")
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("capture")
