"""ORM models of datasets, samples, labels, annotations and published dataset versions.

``control_plane/tables.py`` imports this module so that ``Base.metadata`` (and therefore Alembic)
sees every table.

Design notes:

- A sample's bytes live once in the dataset object store, named by sha256; the ``samples`` row
  points at the digest. ``(dataset_id, digest)`` is unique, which is how duplicates are detected.
- Annotations reference a ``labels`` row, not a label name, so renaming a label is one update and
  merging is a re-point of foreign keys.
- Every annotation records who made it (``source`` person | model, ``creator`` a user name or a
  model version) and a ``confidence``, so model pre-labels can be reviewed later.
- A published version is immutable; ``dataset_version_uses`` lists what depends on it (training
  jobs, models), and a version with uses cannot be deleted.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from control_plane.core.database import Base, utcnow


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # image_classification | object_detection
    type: Mapped[str] = mapped_column(String(32))
    multi_label: Mapped[bool] = mapped_column(default=False)
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Versions ever published: names are never reused, even after a version is deleted.
    versions_published: Mapped[int] = mapped_column(Integer, default=0)

    labels: Mapped[list[Label]] = relationship(
        back_populates="dataset",
        cascade="all, delete-orphan",
        order_by="Label.name",
        lazy="selectin",
    )


class Label(Base):
    __tablename__ = "dataset_labels"
    __table_args__ = (UniqueConstraint("dataset_id", "name", name="uq_dataset_labels_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200))

    dataset: Mapped[Dataset] = relationship(back_populates="labels")


class Sample(Base):
    __tablename__ = "dataset_samples"
    __table_args__ = (
        UniqueConstraint("dataset_id", "digest", name="uq_dataset_samples_digest"),
        # The split filter of the sample listing: the dataset's samples of one split, already
        # in id order (an index entry ends with the row id), instead of every dataset's.
        Index("ix_dataset_samples_dataset_split", "dataset_id", "split"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    digest: Mapped[str] = mapped_column(String(64), index=True)
    # The name the file had where it came from (relative path inside an upload / folder / zip).
    source_name: Mapped[str] = mapped_column(String(1000))
    media_type: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    # A usage fixed by the data itself (a manifest's usage, a split folder): train | validation.
    # None: the split is drawn when a version is published.
    split: Mapped[str | None] = mapped_column(String(16), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    annotations: Mapped[list[Annotation]] = relationship(
        back_populates="sample",
        cascade="all, delete-orphan",
        order_by="Annotation.id",
        lazy="selectin",
    )


class Annotation(Base):
    __tablename__ = "dataset_annotations"
    __table_args__ = (
        # The label filter of the sample listing (and label statistics) read the sample ids of
        # one label from this index alone, without visiting the table.
        Index("ix_dataset_annotations_label_sample", "label_id", "sample_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sample_id: Mapped[int] = mapped_column(
        ForeignKey("dataset_samples.id", ondelete="CASCADE"), index=True
    )
    label_id: Mapped[int] = mapped_column(ForeignKey("dataset_labels.id", ondelete="CASCADE"))
    # Box in pixels (x, y = top-left corner); all None for a classification label.
    x: Mapped[float | None] = mapped_column(Float, default=None)
    y: Mapped[float | None] = mapped_column(Float, default=None)
    w: Mapped[float | None] = mapped_column(Float, default=None)
    h: Mapped[float | None] = mapped_column(Float, default=None)
    # person | model
    source: Mapped[str] = mapped_column(String(16), default="person")
    # A user name, or a model version such as "digits-cnn:3".
    creator: Mapped[str] = mapped_column(String(200), default="")
    confidence: Mapped[float] = mapped_column(Float, default=1.0)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    sample: Mapped[Sample] = relationship(back_populates="annotations")
    label: Mapped[Label] = relationship(lazy="joined")

    @property
    def box(self) -> tuple[float, float, float, float] | None:
        if self.x is None or self.y is None or self.w is None or self.h is None:
            return None
        return (self.x, self.y, self.w, self.h)


class DatasetVersion(Base):
    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "name", name="uq_dataset_versions_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    dataset_id: Mapped[str] = mapped_column(
        ForeignKey("datasets.id", ondelete="CASCADE"), index=True
    )
    # V001, V002, ...
    name: Mapped[str] = mapped_column(String(16))
    description: Mapped[str] = mapped_column(Text, default="")
    train_ratio: Mapped[float] = mapped_column(Float)
    seed: Mapped[int] = mapped_column(BigInteger)
    sample_count: Mapped[int] = mapped_column(Integer)
    train_count: Mapped[int] = mapped_column(Integer)
    validation_count: Mapped[int] = mapped_column(Integer)
    # {label: {"samples": n, "annotations": n, "train": n, "validation": n}}
    label_stats: Mapped[dict[str, Any]] = mapped_column()
    # sha256 of manifest.jsonl, which names every file by its own sha256.
    digest: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    uses: Mapped[list[DatasetVersionUse]] = relationship(
        back_populates="version", lazy="selectin", passive_deletes=True
    )


class DatasetVersionUse(Base):
    """Something that depends on a published version (filled by training and the registry)."""

    __tablename__ = "dataset_version_uses"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("dataset_versions.id", ondelete="RESTRICT"), primary_key=True
    )
    # training_job | model | batch_service | notebook
    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    ref: Mapped[str] = mapped_column(String(200), primary_key=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    version: Mapped[DatasetVersion] = relationship(back_populates="uses")
