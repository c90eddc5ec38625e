"""Capture tables: records staged while their chunks arrive, captures landed in a dataset,
each device's capture store as it last reported it, and improvements (reviewed captures to a
new model version on canary).

Staging lives in the database, not in memory: with several control-plane replicas behind an
MQTT shared subscription the chunks of one record reach different replicas, and a restart in
the middle of a record must not lose what already arrived. The schema is owned by the Alembic
migrations in ``control_plane/migrations``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from control_plane.core.database import Base, utcnow


class CaptureUpload(Base):
    """A record whose chunks are arriving: its size, chunk count and (from chunk 0) metadata."""

    __tablename__ = "capture_uploads"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    count: Mapped[int] = mapped_column(Integer)
    # CaptureMeta as a JSON document, once chunk 0 arrived (None before).
    meta: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class CaptureChunk(Base):
    """One received chunk of a staged record (deleted once the record is whole)."""

    __tablename__ = "capture_chunks"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Capture(Base):
    """A captured input, held once per digest, and the sample it became."""

    __tablename__ = "captures"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    service_name: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    deployment_id: Mapped[str] = mapped_column(String(64), default="")
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(128))
    # low_confidence | sampled | disagreement | requested
    reason: Mapped[str] = mapped_column(String(32))
    captured_at: Mapped[dt.datetime] = mapped_column()
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    input_name: Mapped[str] = mapped_column(String(200), default="")
    # image | tensor (the stored sample is an image either way: a tensor rendered to PNG)
    input_kind: Mapped[str] = mapped_column(String(16))
    media_type: Mapped[str] = mapped_column(String(64), default="")
    size: Mapped[int] = mapped_column(BigInteger)
    # [{"index", "label", "score"}], best first.
    top_k: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # The model's top-1 (the pre-label) and its score.
    predicted: Mapped[str] = mapped_column(String(200), default="")
    confidence: Mapped[float] = mapped_column(Float, default=0.0)
    shadow_version: Mapped[str] = mapped_column(String(128), default="")
    shadow_top_k: Mapped[list[Any]] = mapped_column(JSON, default=list)
    disagreement: Mapped[bool] = mapped_column(Boolean, default=False)
    dataset_id: Mapped[str] = mapped_column(String(64), index=True)
    # The sample in ``dataset_id``; None once dropped.
    sample_id: Mapped[int | None] = mapped_column(Integer, default=None)
    # pending | accepted | corrected | dropped
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    label: Mapped[str] = mapped_column(String(200), default="")
    reviewed_by: Mapped[str] = mapped_column(String(200), default="")
    reviewed_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # Where the reviewed capture first went into training data: "<dataset id>/<version>".
    published_in: Mapped[str | None] = mapped_column(String(100), default=None)


class CaptureDeviceState(Base):
    """A device's capture store as it last reported it (``captures/stat``), and the last purge
    asked of it (``captures/ctl``)."""

    __tablename__ = "capture_device_states"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    stored_records: Mapped[int] = mapped_column(Integer, default=0)
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    captured_total: Mapped[int] = mapped_column(BigInteger, default=0)
    uploaded_total: Mapped[int] = mapped_column(BigInteger, default=0)
    dropped_total: Mapped[int] = mapped_column(BigInteger, default=0)
    last_purge_id: Mapped[str] = mapped_column(String(64), default="")
    reported_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    # The purge asked (retained on captures/ctl) and before when.
    purge_id: Mapped[str] = mapped_column(String(64), default="")
    purge_before_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    # Records received from the device that were refused (bad digest, unknown model...).
    rejected_total: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Improvement(Base):
    """Reviewed captures to a better model on an edge service, step by step.

    ``steps`` is the whole memory of the machine ({"publish": {...}, "train": {...}, ...}), written
    in the same transaction as each step, so a restarted control plane resumes it.
    """

    __tablename__ = "capture_improvements"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    service_name: Mapped[str] = mapped_column(String(64), index=True)
    model: Mapped[str] = mapped_column(String(128))
    from_version: Mapped[str] = mapped_column(String(128))
    # running | succeeded | failed
    state: Mapped[str] = mapped_column(String(16), default="running")
    # publish | train | register | rollout | done
    step: Mapped[str] = mapped_column(String(16), default="publish")
    steps: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(200), default="")
    # The replica (``replicas.id``) that walks it; None without replicas. A survivor claims it
    # when that replica's heartbeat stops (``improve.claim_improvements``).
    owner: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
