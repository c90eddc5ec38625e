"""Request and response bodies of training jobs and visualizations (XCreate / XPublic families)."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from control_plane.core.schemas import Name, OrmModel

HyperValue = str | int | float | bool


class Framework(StrEnum):
    tensorflow = "tensorflow"
    mxnet = "mxnet"


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"


class AlgorithmPublic(BaseModel):
    name: str
    description: str
    input: str = Field(description="image_classification (a dataset version) or tabular (CSV).")
    defaults: dict[str, Any]


class CodePublic(BaseModel):
    code_id: str = Field(description="sha256 of the uploaded zip; name it in a job.")
    files: list[str]


class JobResources(BaseModel):
    """What a job asks its executor for; an unset field takes the settings' value
    (``training.ray_num_cpus``, ``ray_num_gpus``, ``ray_memory_bytes``). Ray places the job on a
    node with that much free, or holds it (running, no pid) until one has; local worker
    processes take no reservation and ignore it."""

    model_config = ConfigDict(extra="forbid")

    cpus: float | None = Field(None, ge=0, le=1024, description="CPUs (fractions allowed).")
    gpus: float | None = Field(None, ge=0, le=64, description="GPUs (fractions allowed).")
    memory_mb: int | None = Field(None, ge=1, le=16 << 20, description="Memory, MiB.")


class JobCreate(BaseModel):
    name: str = Name
    description: str = Field("", max_length=10_000)
    algorithm: str = Field(
        description="A built-in algorithm (GET /training/algorithms) or `script` (uploaded code)."
    )
    framework: Framework = Framework.tensorflow
    dataset_id: str | None = None
    dataset_version: str | None = Field(None, description="A published version name, e.g. V001.")
    data_path: str | None = Field(
        None,
        description="Tabular data: a server-side CSV file or folder inside an allowed import "
        "root (CONTROL_PLANE_DATASET_IMPORT_ROOTS), instead of a dataset version.",
    )
    code_id: str | None = Field(None, description="Uploaded code (POST /training/code).")
    boot_file: str | None = Field(None, description="Script inside the code, e.g. train.py.")
    hyperparameters: dict[str, HyperValue] = Field(
        default_factory=dict, description="Passed to the script as --name=value."
    )
    timeout_s: float | None = Field(None, gt=0, description="Default: the configured limit.")
    resources: JobResources | None = Field(
        None, description="Ray resources of this job; default: the settings' (Ray only)."
    )


class JobRerun(BaseModel):
    """A new version of a job: same name, input and code; hyperparameters merged over the old."""

    hyperparameters: dict[str, HyperValue] = Field(default_factory=dict)
    description: str | None = None
    timeout_s: float | None = Field(None, gt=0)


class JobPublic(OrmModel):
    id: str
    name: str
    version: int
    parent_id: str | None
    description: str
    algorithm: str
    framework: str
    dataset_id: str | None
    dataset_version: str | None
    data_path: str | None
    code_id: str | None
    boot_file: str | None
    hyperparameters: dict[str, Any]
    timeout_s: float
    resources: dict[str, Any] | None = Field(
        None, description="The resources the job asked for (unset fields: the settings')."
    )
    state: JobState
    replica: str | None = Field(
        None, description="The control-plane replica running the job (None: a single one)."
    )
    exit_code: int | None
    failure_reason: str
    log_tail: str
    metrics: dict[str, Any] | None
    peak_rss_bytes: int | None
    cpu_seconds: float | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


class ScalarPoint(BaseModel):
    step: int
    wall_time: float
    value: float


class ScalarsPublic(BaseModel):
    """``runs[run][tag]``: a run is an event folder (``train``, ``validation``, ...)."""

    job_id: str
    runs: dict[str, dict[str, list[ScalarPoint]]]


class VisualizationCreate(BaseModel):
    job_ids: list[str] = Field(min_length=1, max_length=50)
    idle_s: float | None = Field(None, gt=0, description="Default: tensorboard_idle_s.")


class VisualizationPublic(BaseModel):
    id: str
    job_ids: list[str]
    state: str = Field(description="starting | running | stopped | failed")
    url: str | None
    port: int | None
    idle_s: float
    reason: str
    started_at: dt.datetime
    last_activity_at: dt.datetime
