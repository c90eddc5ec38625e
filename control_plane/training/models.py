"""Training tables: training jobs (model versions are the registry's, ``registry/models.py``).

``control_plane/tables.py`` imports this module so that ``Base.metadata`` (and therefore Alembic)
sees every table.

Design notes:

- A job *name* groups versions: re-running a job with other hyperparameters adds a row with the
  same name and the next ``version``; earlier rows are never changed, which is the history.
- A job's input is a published dataset version (``dataset_id`` + ``dataset_version``) or, for
  tabular data, which has no dataset type yet, a server-side folder (``data_path``).
- The state machine is queued -> running -> succeeded | failed | canceled (queued -> canceled
  too). ``pid`` is kept while running so a restarted control plane can find and end orphans.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, Float, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from control_plane.core.database import Base, utcnow


class TrainingJob(Base):
    __tablename__ = "training_jobs"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_training_jobs_name_version"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    # The job this one re-runs (None for a first version).
    parent_id: Mapped[str | None] = mapped_column(String(64), default=None)
    description: Mapped[str] = mapped_column(Text, default="")
    dataset_id: Mapped[str | None] = mapped_column(String(64), default=None)
    dataset_version: Mapped[str | None] = mapped_column(String(16), default=None)
    data_path: Mapped[str | None] = mapped_column(Text, default=None)
    # image_classification | tabular_classification | script
    algorithm: Mapped[str] = mapped_column(String(64))
    # tensorflow | mxnet
    framework: Mapped[str] = mapped_column(String(32))
    code_id: Mapped[str | None] = mapped_column(String(64), default=None)
    boot_file: Mapped[str | None] = mapped_column(String(500), default=None)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    timeout_s: Mapped[float] = mapped_column(Float)
    # Ray resources asked for this job ({"cpus", "gpus", "memory_mb"}); None: the settings'.
    resources: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    # queued | running | succeeded | failed | canceled
    state: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    pid: Mapped[int | None] = mapped_column(Integer, default=None)
    # The control-plane replica whose runner claimed the job (None: a single control plane).
    replica: Mapped[str | None] = mapped_column(String(64), default=None)
    exit_code: Mapped[int | None] = mapped_column(Integer, default=None)
    failure_reason: Mapped[str] = mapped_column(Text, default="")
    log_tail: Mapped[str] = mapped_column(Text, default="")
    metrics: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    peak_rss_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    cpu_seconds: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(default=None)
    finished_at: Mapped[dt.datetime | None] = mapped_column(default=None)
