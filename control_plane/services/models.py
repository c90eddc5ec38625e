"""Service tables: a service (its spec and state) and its replicas (one agent process each).

The schema is owned by the Alembic migrations in ``control_plane/migrations``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from control_plane.core.database import Base, utcnow


class Service(Base):
    __tablename__ = "services"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    # online | batch | edge
    type: Mapped[str] = mapped_column(String(16))
    # deploying | running | failed | stopped (edge services also: paused | rolled_back)
    state: Mapped[str] = mapped_column(String(16), default="deploying")
    reason: Mapped[str] = mapped_column(Text, default="")
    # {"models": [{"model", "version"}], "replicas", "threads", "max_batch_size", ...}
    spec: Mapped[dict[str, Any]] = mapped_column()
    # Bumped by every change of the spec; a replica that has applied it records it.
    generation: Mapped[int] = mapped_column(Integer, default=1)
    # With several control-plane replicas: the one that runs this service's agent processes
    # (None: a single control plane, or not claimed yet), and the host its agents listen on,
    # which every replica's REST proxy uses to reach them.
    owner: Mapped[str | None] = mapped_column(String(64), default=None)
    owner_address: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)

    replicas: Mapped[list[ServiceReplica]] = relationship(
        back_populates="service",
        cascade="all, delete-orphan",
        lazy="selectin",
        order_by="ServiceReplica.index",
    )
    rollouts: Mapped[list[Rollout]] = relationship(
        cascade="all, delete-orphan", lazy="select", order_by="Rollout.number"
    )


class ServiceReplica(Base):
    """One agent process of a service, and the fleet device it is."""

    __tablename__ = "service_replicas"

    service_name: Mapped[str] = mapped_column(
        ForeignKey("services.name", ondelete="CASCADE"), primary_key=True
    )
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64))
    # starting | running | crashed | stopped
    state: Mapped[str] = mapped_column(String(16), default="starting")
    reason: Mapped[str] = mapped_column(Text, default="")
    pid: Mapped[int | None] = mapped_column(Integer, default=None)
    grpc_port: Mapped[int | None] = mapped_column(Integer, default=None)
    http_port: Mapped[int | None] = mapped_column(Integer, default=None)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    # The service generation whose models this replica was last given (0: none yet).
    generation: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[dt.datetime | None] = mapped_column(default=None)

    service: Mapped[Service] = relationship(back_populates="replicas")


class Rollout(Base):
    """One staged rollout of an edge service's model version, and its history once done.

    ``plan`` is the whole state machine's memory (stages, their devices, deployments, the
    previous version of each device, gate figures), so a control plane killed in the middle
    resumes from the database alone (``services/rollouts/engine.py``).
    """

    __tablename__ = "service_rollouts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    service_name: Mapped[str] = mapped_column(
        ForeignKey("services.name", ondelete="CASCADE"), index=True
    )
    number: Mapped[int] = mapped_column(Integer)  # 1, 2, ... per service
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128))
    package_digest: Mapped[str] = mapped_column(String(64))
    # running | paused | succeeded | failed | aborted | rolled_back | superseded
    state: Mapped[str] = mapped_column(String(16), default="running")
    reason: Mapped[str] = mapped_column(Text, default="")
    stage: Mapped[int] = mapped_column(Integer, default=0)  # index into plan["stages"]
    plan: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)
