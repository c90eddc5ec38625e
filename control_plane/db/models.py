"""ORM models. The schema is owned by the Alembic migrations in ``migrations/versions``.

Timestamps are timezone-aware UTC. JSON columns hold small documents (labels, the last reported
state, a package manifest) that are read whole and never queried inside.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Mosquitto's PBKDF2-SHA512 format ($7$...), so the password file is written from it directly.
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    desired_generation: Mapped[int] = mapped_column(BigInteger, default=0)
    reported: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    reported_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    status: Mapped[str] = mapped_column(String(16), default="unknown")
    status_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    telemetry_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    telemetry_dropped: Mapped[int] = mapped_column(BigInteger, default=0)


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

    @property
    def chunk_count(self) -> int:
        return len(self.chunk_digests) // 32

    def chunk_sha256(self, index: int) -> bytes:
        return self.chunk_digests[index * 32 : (index + 1) * 32]


class Deployment(Base):
    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    package_digest: Mapped[str] = mapped_column(ForeignKey("packages.digest"))
    # {"device_id": "..."} or {"selector": {"label": "value", ...}}
    target: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    package: Mapped[Package] = relationship(lazy="joined")
    targets: Mapped[list[DeploymentTarget]] = relationship(
        back_populates="deployment", cascade="all, delete-orphan", lazy="selectin"
    )


class DeploymentTarget(Base):
    """One device's part in a deployment: its progress and final state."""

    __tablename__ = "deployment_targets"

    deployment_id: Mapped[str] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    )
    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    # The package's model name, denormalised: supersession is per (device, model name).
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    # pending | in_progress | installed | failed | superseded
    state: Mapped[str] = mapped_column(String(16), default="pending")
    reason: Mapped[str] = mapped_column(Text, default="")
    step: Mapped[str] = mapped_column(String(64), default="")
    chunks_done: Mapped[int] = mapped_column(Integer, default=0)
    chunks_total: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    deployment: Mapped[Deployment] = relationship(back_populates="targets")


class TelemetryRecord(Base):
    __tablename__ = "telemetry"
    __table_args__ = (UniqueConstraint("device_id", "seq", name="uq_telemetry_device_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)
    recorded_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


# Dataset tables live in their own module; imported here so Base.metadata holds every table.
from control_plane.db import dataset_models as _dataset_models  # noqa: E402, F401

# Training jobs and model versions live in their own module too.
from control_plane.db import training_models as _training_models  # noqa: E402, F401
