"""The notebook table: one JupyterLab server, its work folder and where it listens.

The schema is owned by the Alembic migrations in ``control_plane/migrations``.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from control_plane.core.database import Base, utcnow


class Notebook(Base):
    __tablename__ = "notebooks"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # starting | running | stopped | failed
    state: Mapped[str] = mapped_column(String(16), default="starting")
    reason: Mapped[str] = mapped_column(Text, default="")
    dataset_id: Mapped[str | None] = mapped_column(String(64), default=None)
    dataset_version: Mapped[str | None] = mapped_column(String(200), default=None)
    idle_s: Mapped[float] = mapped_column(Float)
    # The server process (its own process group) and its loopback port, while it runs.
    pid: Mapped[int | None] = mapped_column(Integer, default=None)
    port: Mapped[int | None] = mapped_column(Integer, default=None)
    # Jupyter's own token: only the proxy uses it, it never leaves the control plane.
    token: Mapped[str] = mapped_column(String(64))
    # The control plane's URL as the creator saw it, given to the kernel for the SDK.
    api_url: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(default=None)
