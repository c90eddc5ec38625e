"""Request and response bodies of notebooks and their export (XCreate / XPublic families)."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from pydantic import BaseModel, Field

from control_plane.core.schemas import Name, OrmModel


class NotebookState(StrEnum):
    starting = "starting"
    running = "running"
    stopped = "stopped"
    failed = "failed"


class NotebookCreate(BaseModel):
    name: str = Name
    dataset_id: str | None = Field(None, description="With dataset_version: mounted read-only.")
    dataset_version: str | None = Field(None, description="A published version name, e.g. V001.")
    idle_s: float | None = Field(
        None, gt=0, description="Idle time before the server stops (default: notebook_idle_s)."
    )
    example: str | None = Field(
        None, description="Copy a shipped example into the work folder (GET /notebooks/examples)."
    )


class NotebookPublic(OrmModel):
    id: str
    name: str
    state: NotebookState
    reason: str
    dataset_id: str | None
    dataset_version: str | None
    idle_s: float
    created_at: dt.datetime
    updated_at: dt.datetime
    started_at: dt.datetime | None
    url: str = Field("", description="Path of JupyterLab through the control plane's proxy.")
    data_url: str | None = Field(
        None, description="Where the kernel reads the dataset version (also $DATA_URL)."
    )


class ExamplePublic(BaseModel):
    name: str
    title: str
    file: str


class NotebookFile(BaseModel):
    path: str
    size: int


class ExportCreate(BaseModel):
    path: str = Field(description="The notebook to export, relative to the work folder.")
    boot_file: str | None = Field(
        None, description="Name of the script in the code zip (default: the notebook's stem.py)."
    )


class ExportChange(BaseModel):
    cell: int = Field(description="Index of the notebook cell, from 0.")
    line: int = Field(description="Line within the cell, from 1.")
    original: str
    replacement: str
    reason: str


class ExportPublic(BaseModel):
    code_id: str = Field(description="Training code id: name it in POST /training/jobs.")
    boot_file: str
    files: list[str]
    changes: list[ExportChange]
    script: str = Field(description="The exported script's text.")
