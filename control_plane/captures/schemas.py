"""Request and response bodies of captures, their review, purges and improvements."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal, Self

from pydantic import BaseModel, Field, model_validator

from control_plane.core.schemas import OrmModel


class PredictionPublic(BaseModel):
    index: int
    label: str
    score: float


class CapturePublic(OrmModel):
    id: str
    digest: str = Field(description="sha256 of the input as the device captured it.")
    device_id: str
    service_name: str | None = Field(description="The edge service the device ran it for.")
    deployment_id: str
    model: str
    version: str
    reason: str = Field(description="low_confidence | sampled | disagreement | requested")
    captured_at: dt.datetime
    received_at: dt.datetime
    input_name: str
    input_kind: str = Field(description="image | tensor (rendered to a PNG sample)")
    media_type: str
    size: int
    top_k: list[PredictionPublic]
    predicted: str = Field(description="The model's top-1 label: the sample's pre-label.")
    confidence: float = Field(description="The model's top-1 score.")
    shadow_version: str
    shadow_top_k: list[PredictionPublic]
    disagreement: bool = Field(description="The shadow version's top-1 differs.")
    dataset_id: str
    sample_id: int | None = Field(description="The sample in dataset_id; None once dropped.")
    state: str = Field(description="pending | accepted | corrected | dropped")
    label: str = Field(description="The label a reviewer gave (accepted or corrected).")
    reviewed_by: str
    reviewed_at: dt.datetime | None
    published_in: str | None = Field(
        description="<dataset id>/<version> of the training data it first went into."
    )


class ReviewQueue(BaseModel):
    dataset_id: str
    dataset_name: str
    labels: list[str]
    pending: int = Field(description="Captures of the dataset still waiting for review.")
    items: list[CapturePublic]


class ReviewAction(BaseModel):
    action: Literal["accept", "correct", "drop"] = Field(
        description="accept: the model's label becomes a person's; correct: `label` instead; "
        "drop: the sample leaves the dataset (the capture is kept as dropped)."
    )
    label: str | None = Field(None, min_length=1, max_length=200)

    @model_validator(mode="after")
    def _label(self) -> Self:
        if (self.action == "correct") != (self.label is not None):
            raise ValueError("label is given with action correct, and only then")
        return self


class DeviceCaptures(BaseModel):
    device_id: str
    stored_records: int = Field(description="Records in the device's store (last report).")
    stored_bytes: int
    captured_total: int
    uploaded_total: int
    dropped_total: int = Field(description="Dropped on the device to keep within its quotas.")
    last_purge_id: str = Field(description="The last purge the device applied.")
    reported_at: dt.datetime | None
    purge_id: str = Field(description="The purge asked of it ('' for none).")
    purge_before_ms: int
    rejected_total: int = Field(description="Records from it the control plane refused.")
    received: int = Field(description="Captures from it held by the control plane.")


class PurgeCreate(BaseModel):
    before: dt.datetime | None = Field(
        None, description="Purge records captured before this time (default: now)."
    )


class StepRequest(BaseModel):
    service: str = Field(min_length=1, max_length=64, description="The edge service.")


class RetrainRequest(StepRequest):
    dataset_version: str | None = Field(
        None,
        max_length=16,
        description="The version of the training dataset to train on (default: its latest).",
    )


class RegisterRequest(StepRequest):
    job_id: str


class CanaryRequest(StepRequest):
    version: str = Field(min_length=1, max_length=128, description="The model version.")


class PublishResult(BaseModel):
    dataset_id: str
    version: str
    captures: int = Field(description="Reviewed captures this version adds.")
    sample_count: int


class ImprovementCreate(StepRequest):
    pass


class ImprovementPublic(OrmModel):
    id: str
    service_name: str
    model: str
    from_version: str
    state: str = Field(description="running | succeeded | failed")
    step: str = Field(description="publish | train | register | rollout | done")
    steps: dict[str, Any] = Field(
        description="What each step made: publish {dataset_id, version, captures}, train "
        "{job_id}, register {version}, rollout {number, state}."
    )
    error: str
    created_by: str
    created_at: dt.datetime
    updated_at: dt.datetime


class CaptureLineageItem(BaseModel):
    id: str
    device_id: str
    digest: str
    state: str
    label: str
    captured_at: dt.datetime


class CaptureLineage(BaseModel):
    """From a package back to the device captures that went into its training data."""

    package_digest: str
    model: str
    version: str
    job_id: str | None
    dataset_id: str | None
    dataset_version: str | None
    devices: dict[str, int] = Field(description="Captures per device.")
    captures: list[CaptureLineageItem]
