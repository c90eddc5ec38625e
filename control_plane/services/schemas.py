"""Request and response bodies of services."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal, Self

from pydantic import BaseModel, Field, model_validator

from control_plane.core.schemas import OrmModel

ServiceName = Field(min_length=1, max_length=40, pattern=r"^[a-z0-9][a-z0-9-]*$")


class ServiceModel(BaseModel):
    """A registered model version the service serves (by its registry name)."""

    model: str = Field(min_length=1, max_length=128, description="Registered model name.")
    version: str = Field(min_length=1, max_length=128)
    max_batch_size: int = Field(
        1, ge=1, le=1024, description="Dynamic batching: the largest batch (1 = off)."
    )
    max_queue_delay_ms: float = Field(
        0.0, ge=0, le=1000, description="How long a request may wait for others to batch with."
    )


class BatchInput(BaseModel):
    """What a batch service predicts over: one split of a published dataset version."""

    dataset_id: str = Field(min_length=1, max_length=64)
    dataset_version: str = Field(min_length=1, max_length=16, description="e.g. V001")
    split: Literal["validation", "train", "all"] = "validation"


#: Settings that only mean something for a service that keeps serving requests.
_ONLINE_ONLY_MODEL_FIELDS = ("max_batch_size", "max_queue_delay_ms")


class ServiceCreate(BaseModel):
    name: str = ServiceName
    type: Literal["online", "batch"] = "online"
    models: list[ServiceModel] = Field(min_length=1, max_length=16)
    replicas: int = Field(1, ge=1, le=16, description="Agent processes serving it.")
    input: BatchInput | None = Field(
        None, description="Batch services only: the dataset version split to predict over."
    )

    @model_validator(mode="after")
    def _fits_type(self) -> Self:
        """Refuse fields of the other type rather than silently ignore them: a batch request
        asking for replicas or dynamic batching would otherwise get something it did not ask."""
        if self.type == "online":
            if self.input is not None:
                raise ValueError("input is for batch services (type: batch)")
            return self
        if self.input is None:
            raise ValueError("a batch service needs an input (dataset_id, dataset_version, split)")
        if len(self.models) != 1:
            raise ValueError("a batch service runs exactly one model version")
        if "replicas" in self.model_fields_set:
            raise ValueError("replicas is for online services; a batch service runs on one")
        given = [f for f in _ONLINE_ONLY_MODEL_FIELDS if f in self.models[0].model_fields_set]
        if given:
            raise ValueError(f"{', '.join(given)}: online services only")
        return self


class ServiceUpdate(BaseModel):
    """A new set of model versions: rolled out one replica at a time."""

    models: list[ServiceModel] = Field(min_length=1, max_length=16)


class ReplicaPublic(OrmModel):
    index: int
    device_id: str
    state: str = Field(description="starting | running | crashed | stopped")
    reason: str
    pid: int | None
    grpc_address: str | None = None
    http_address: str | None = None
    restarts: int
    generation: int = Field(description="The service generation this replica was last given.")
    installed: bool = Field(
        False, description="Every model of the replica's generation is installed and active."
    )
    started_at: dt.datetime | None


class BatchProgress(BaseModel):
    """The agent job of a batch service, as last seen."""

    job_id: str = ""
    state: str = Field("", description="the agent job's QUEUED | RUNNING | SUCCEEDED | FAILED")
    total: int = 0
    done: int = 0
    failed: int = Field(0, description="Inputs whose row holds an error.")


class ClassMetrics(BaseModel):
    label: str
    support: int = Field(description="Rows whose true label is this one.")
    predicted: int = Field(description="Rows predicted as this label.")
    precision: float | None = Field(description="null when nothing was predicted as it.")
    recall: float | None = Field(description="null when no row has it as its true label.")


class Evaluation(BaseModel):
    """How the predictions compare with the dataset's labels (image classification)."""

    total: int = Field(description="Labeled rows; a row that failed counts as wrong.")
    correct: int
    errors: int = Field(description="Labeled rows without a prediction (their input failed).")
    accuracy: float | None
    labels: list[str] = Field(description="The confusion matrix's row and column order.")
    per_class: list[ClassMetrics]
    confusion_matrix: list[list[int]] = Field(
        description="[true][predicted] counts over the rows that have a prediction."
    )


class ResultRow(BaseModel):
    """One input of a batch service and what the model said of it."""

    index: int
    source: str = Field(description="The sample's path in the dataset version folder.")
    label: str | None = Field(None, description="The dataset's label, when it has one.")
    predicted: str | None = None
    score: float | None = None
    top_k: list[dict[str, Any]] | None = None
    error: str | None = None


class ResultPage(BaseModel):
    total: int
    offset: int
    items: list[ResultRow]


class ServicePublic(BaseModel):
    name: str
    type: str
    state: str = Field(
        description="deploying | running | failed | stopped; a batch service ends succeeded "
        "or failed"
    )
    reason: str
    models: list[ServiceModel]
    generation: int
    replicas: list[ReplicaPublic]
    grpc_addresses: list[str] = Field(
        description="Each running replica's OIP v2 gRPC address (tritonclient.grpc)."
    )
    input: BatchInput | None = None
    batch: BatchProgress | None = None
    evaluation: Evaluation | None = None
    created_at: dt.datetime
    updated_at: dt.datetime
