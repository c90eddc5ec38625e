"""Typed results: what the REST API answers, as pydantic models.

They mirror the API's response bodies (``XPublic`` schemas in ``control_plane``) without
importing the server. ``extra="allow"``: a field a newer server adds is kept, not an error, so an
older SDK keeps working.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict


class Resource(BaseModel):
    model_config = ConfigDict(extra="allow")


# --- datasets --------------------------------------------------------------------------------


class Dataset(Resource):
    id: str
    name: str
    type: str
    multi_label: bool
    description: str
    created_at: dt.datetime
    labels: list[str]
    sample_count: int


class LabelStat(Resource):
    name: str
    samples: int
    annotations: int


class DatasetStats(Resource):
    samples: int
    labeled: int
    unlabeled: int
    splits: dict[str, int]
    labels: list[LabelStat]


class Annotation(Resource):
    id: int
    label: str
    box: dict[str, float] | None = None
    source: str
    creator: str
    confidence: float


class Sample(Resource):
    id: int
    digest: str
    source_name: str
    media_type: str
    size: int
    width: int
    height: int
    split: str | None
    annotations: list[Annotation]


class SamplePage(Resource):
    total: int
    offset: int
    limit: int
    items: list[Sample]


class ImportReport(Resource):
    imported: int
    duplicates: list[dict[str, Any]]
    errors: list[dict[str, Any]]
    labels_added: list[str]


class BulkResult(Resource):
    updated: int


class DatasetVersion(Resource):
    name: str
    dataset_id: str
    description: str
    train_ratio: float
    seed: int
    sample_count: int
    train_count: int
    validation_count: int
    label_stats: dict[str, Any]
    digest: str
    created_at: dt.datetime
    data_url: str
    used_by: list[dict[str, Any]]


# --- training --------------------------------------------------------------------------------


class Algorithm(Resource):
    name: str
    description: str
    input: str
    defaults: dict[str, Any]


class Code(Resource):
    code_id: str
    files: list[str]


class TrainingJob(Resource):
    id: str
    name: str
    version: int
    parent_id: str | None
    algorithm: str
    framework: str
    dataset_id: str | None
    dataset_version: str | None
    code_id: str | None
    boot_file: str | None
    hyperparameters: dict[str, Any]
    resources: dict[str, Any] | None = None
    """Ray resources the job asked for (``cpus``, ``gpus``, ``memory_mb``); None: the settings'."""
    state: str
    exit_code: int | None
    failure_reason: str
    log_tail: str
    metrics: dict[str, Any] | None
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None

    @property
    def final(self) -> bool:
        return self.state in ("succeeded", "failed", "canceled")


class Scalars(Resource):
    job_id: str
    runs: dict[str, dict[str, list[dict[str, float]]]]


class Visualization(Resource):
    id: str
    job_ids: list[str]
    state: str
    url: str | None
    port: int | None
    idle_s: float
    reason: str


# --- registry and packages -------------------------------------------------------------------


class ModelSummary(Resource):
    name: str
    versions: list[str]
    latest: str


class ModelVersion(Resource):
    name: str
    version: str
    description: str
    tags: dict[str, Any]
    state: str
    error: str
    origin: str
    job_id: str | None
    dataset_id: str | None
    dataset_version: str | None
    metrics: dict[str, Any] | None
    conversion_report: dict[str, Any] | None
    package_digest: str | None
    created_at: dt.datetime


class Lineage(Resource):
    package_digest: str
    model: ModelVersion
    job: TrainingJob | None
    dataset: dict[str, Any] | None


class Package(Resource):
    digest: str
    name: str
    version: str
    size: int
    key_id: str
    chunk_size: int
    chunk_count: int
    created_at: dt.datetime
    manifest: dict[str, Any]


class SigningKey(Resource):
    key_id: str
    generation: int
    state: str  # current | retired
    created_at: dt.datetime
    retired_at: dt.datetime | None = None
    not_after: dt.datetime | None = None


# --- fleet -----------------------------------------------------------------------------------


class Device(Resource):
    id: str
    name: str
    labels: dict[str, Any]
    created_at: dt.datetime
    status: str
    reported: dict[str, Any] | None
    desired_generation: int
    telemetry_seq: int


class DeviceRegistration(Resource):
    device: Device
    bundle: dict[str, Any]


class TelemetryRecord(Resource):
    seq: int
    kind: str
    payload: str
    received_at: dt.datetime


class DeploymentTarget(Resource):
    device_id: str
    state: str
    reason: str
    step: str
    chunks_done: int
    chunks_total: int


class Deployment(Resource):
    id: str
    package_digest: str
    package_name: str
    package_version: str
    target: dict[str, Any]
    created_at: dt.datetime
    targets: list[DeploymentTarget]
    summary: dict[str, int]


# --- services --------------------------------------------------------------------------------


class Replica(Resource):
    index: int
    device_id: str
    state: str
    reason: str
    restarts: int
    pid: int | None = None
    grpc_address: str | None = None
    http_address: str | None = None


class Service(Resource):
    name: str
    type: str
    state: str
    reason: str
    models: list[dict[str, Any]]
    generation: int
    replicas: list[Replica]
    grpc_addresses: list[str] = []
    batch: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None
    rollout: dict[str, Any] | None = None
    """Edge services: the latest rollout (``state``, ``stages`` with their gates, ``reason``)."""
    owner: str | None = None
    """With several control-plane replicas: the one running this service's agents."""


class ResultRow(Resource):
    index: int
    source: str
    label: str | None = None
    predicted: str | None = None
    score: float | None = None
    error: str | None = None


class ResultPage(Resource):
    total: int
    offset: int
    items: list[ResultRow]


# --- notebooks -------------------------------------------------------------------------------


class Notebook(Resource):
    id: str
    name: str
    state: str
    reason: str
    dataset_id: str | None
    dataset_version: str | None
    idle_s: float
    url: str
    data_url: str | None


class NotebookExample(Resource):
    name: str
    title: str
    file: str


class NotebookFile(Resource):
    path: str
    size: int


class ExportChange(Resource):
    cell: int
    line: int
    original: str
    replacement: str
    reason: str


class NotebookExport(Resource):
    code_id: str
    boot_file: str
    files: list[str]
    changes: list[ExportChange]
    script: str


# --- captures (the data flywheel) --------------------------------------------------------------


class Capture(Resource):
    id: str
    digest: str
    device_id: str
    service_name: str | None
    model: str
    version: str
    reason: str
    captured_at: dt.datetime
    top_k: list[dict[str, Any]]
    predicted: str
    confidence: float
    disagreement: bool
    dataset_id: str
    sample_id: int | None
    state: str
    label: str


class ReviewQueue(Resource):
    dataset_id: str
    dataset_name: str
    labels: list[str]
    pending: int
    items: list[Capture]


class DeviceCaptures(Resource):
    device_id: str
    stored_records: int
    dropped_total: int
    purge_id: str
    last_purge_id: str
    received: int


class Improvement(Resource):
    id: str
    service_name: str
    model: str
    from_version: str
    state: str
    step: str
    steps: dict[str, Any]
    error: str
