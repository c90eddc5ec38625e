"""Registry tables: model versions and the signed packages they were converted into.

A model version points at its package (``package_digest``) and keeps its lineage as plain columns
(training job, dataset version) plus the JSON documents that were true when it was registered
(hyperparameters, metrics, conversion settings and report). Packages are stored by sha256 with
their chunk digests, so the fleet channel can serve and check chunks without rereading the blob.
The schema is owned by the Alembic migrations in ``control_plane/migrations``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, deferred, mapped_column

from control_plane.core.database import Base, utcnow


class Package(Base):
    __tablename__ = "packages"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_packages_name_version"),)

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128))
    size: Mapped[int] = mapped_column(BigInteger)
    key_id: Mapped[str] = mapped_column(String(32))
    manifest: Mapped[dict[str, Any]] = mapped_column()
    chunk_size: Mapped[int] = mapped_column(Integer)
    # Raw 32-byte sha256 of each chunk, concatenated in index order.
    chunk_digests: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Delta updates: the package's content-defined chunk index (model_packager/chunk_index.py)
    # and its sha256 (raw), which the desired state pins. Loaded only when a device asks for it.
    # NULL for packages stored before migration 0014: those are always pulled whole.
    cdc_index: Mapped[bytes | None] = deferred(mapped_column(LargeBinary, nullable=True))
    cdc_index_sha256: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)

    @property
    def chunk_count(self) -> int:
        return len(self.chunk_digests) // 32

    def chunk_sha256(self, index: int) -> bytes:
        return self.chunk_digests[index * 32 : (index + 1) * 32]


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_model_versions_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(128))
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # converting | ready | failed
    state: Mapped[str] = mapped_column(String(16), default="converting")
    error: Mapped[str] = mapped_column(Text, default="")
    # training_job | import
    origin: Mapped[str] = mapped_column(String(16))
    # keras | savedmodel | onnx | tflite | mxnet | modelarts
    source_kind: Mapped[str] = mapped_column(String(32))
    source_framework: Mapped[str] = mapped_column(String(32), default="")
    job_id: Mapped[str | None] = mapped_column(
        ForeignKey("training_jobs.id", ondelete="RESTRICT"), default=None, index=True
    )
    dataset_id: Mapped[str | None] = mapped_column(String(64), default=None)
    dataset_version: Mapped[str | None] = mapped_column(String(16), default=None)
    hyperparameters: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # What was asked of the converter (targets, parity policy, shapes, processing).
    conversion: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # What the converter reported: per variant kept/dropped, parity figures, sizes.
    conversion_report: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    package_digest: Mapped[str | None] = mapped_column(
        ForeignKey("packages.digest", ondelete="RESTRICT"), default=None, index=True
    )
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class SigningKey(Base):
    """One registry signing key: the current one, or a retired one and the end of its grace.

    The private key stays a file (``private_key_path``); the table says which file signs now and
    until when a retired key's packages are still accepted. Its generation is the trust set's
    version devices compare (``keys.py``).
    """

    __tablename__ = "signing_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, unique=True)
    public_key_pem: Mapped[str] = mapped_column(Text)
    private_key_path: Mapped[str] = mapped_column(Text)
    # current | retired
    state: Mapped[str] = mapped_column(String(16), default="current")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    retired_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # Packages signed by a retired key are refused from this moment on.
    not_after: Mapped[dt.datetime | None] = mapped_column(default=None)
