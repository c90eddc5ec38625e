"""Device tables: registered devices (credentials, last reported state, status) and telemetry.

The schema is owned by the Alembic migrations in ``control_plane/migrations``. Timestamps are
timezone-aware UTC; JSON columns hold small documents (labels, the last reported state) that are
read whole and never queried inside.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from control_plane.core.database import Base, utcnow


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
