"""dataset listing indexes: (label_id, sample_id) on annotations, (dataset_id, split) on samples

Revision ID: 0004
Revises: 0003

The sample listing filters by label and by split. Single-column indexes made the label filter a
correlated probe of the annotation index for every sample of the dataset, and the split filter a
scan of every dataset's samples of that split. The composite indexes replace the single-column
ones (their leading column serves every query those served, foreign-key checks included).

"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dataset_annotations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_dataset_annotations_label_sample", ["label_id", "sample_id"], unique=False
        )
        batch_op.drop_index("ix_dataset_annotations_label_id")
    with op.batch_alter_table("dataset_samples", schema=None) as batch_op:
        batch_op.create_index(
            "ix_dataset_samples_dataset_split", ["dataset_id", "split"], unique=False
        )
        batch_op.drop_index("ix_dataset_samples_split")


def downgrade() -> None:
    with op.batch_alter_table("dataset_samples", schema=None) as batch_op:
        batch_op.create_index("ix_dataset_samples_split", ["split"], unique=False)
        batch_op.drop_index("ix_dataset_samples_dataset_split")
    with op.batch_alter_table("dataset_annotations", schema=None) as batch_op:
        batch_op.create_index("ix_dataset_annotations_label_id", ["label_id"], unique=False)
        batch_op.drop_index("ix_dataset_annotations_label_sample")
