"""Deployment tables: a package deployed to a device or a label selector, one target row per device.

The target rows carry each device's progress and final state; the device itself is referenced by
id only (a foreign key), so this domain reads devices through the devices service.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from control_plane.core.database import Base, utcnow
from control_plane.registry.models import Package


class Deployment(Base):
    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    package_digest: Mapped[str] = mapped_column(ForeignKey("packages.digest"))
    # {"device_id": "..."} or {"selector": {"label": "value", ...}}
    target: Mapped[dict[str, Any]] = mapped_column()
    # install: hold the package (and activate it unless standby) | remove: uninstall the version
    action: Mapped[str] = mapped_column(String(16), default="install")
    # Installed but not activated; ``weight`` percent of the requests naming no version.
    standby: Mapped[bool] = mapped_column(Boolean, default=False)
    weight: Mapped[float] = mapped_column(Float, default=0.0)
    # The device's local guard after activation ({"bake_s", "max_error_rate", ...}) or None.
    guard: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # Shadow warm-up before activation ({"fraction", "min_requests", ...}) or None.
    warmup: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # What the device keeps of this version's inputs for review (the edge service's capture
    # policy: {"enabled", "below_confidence", ...}; protos/fleet_capture.proto) or None.
    capture: Mapped[dict[str, Any] | None] = mapped_column(default=None)
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
    # Indexed on its own (migration 0015): per-device queries cannot use the primary key,
    # whose first column is the deployment.
    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    # The package's model name, denormalised: supersession is per (device, model name).
    model_name: Mapped[str] = mapped_column(String(128), index=True)
    # pending | in_progress | installed | failed | removed | superseded
    state: Mapped[str] = mapped_column(String(16), default="pending")
    reason: Mapped[str] = mapped_column(Text, default="")
    step: Mapped[str] = mapped_column(String(64), default="")
    chunks_done: Mapped[int] = mapped_column(Integer, default=0)
    chunks_total: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    deployment: Mapped[Deployment] = relationship(back_populates="targets")
