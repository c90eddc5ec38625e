"""Request and response bodies of the model registry and the package store."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field

from control_plane.core.schemas import Name, OrmModel
from control_plane.registry.models import Package
from control_plane.training.schemas import JobPublic


class PackagePublic(OrmModel):
    digest: str
    name: str
    version: str
    size: int
    key_id: str
    chunk_size: int
    chunk_count: int
    created_at: dt.datetime
    manifest: dict[str, Any]

    @classmethod
    def of(cls, package: Package) -> PackagePublic:
        return cls.model_validate(package)


class ModelRegister(BaseModel):
    """Register a succeeded job's model as a new model version (converted in the background)."""

    name: str = Name
    job_id: str
    version: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", description="Default: next number."
    )
    description: str = Field("", max_length=10_000)
    tags: dict[str, str] = Field(default_factory=dict)
    targets: list[str] | None = Field(None, description="Conversion targets; default the usual.")
    on_parity_fail: str = Field("drop", pattern="^(drop|fail)$")
    input_shapes: dict[str, list[int]] | None = Field(
        None, description="Needed for MXNet models unless the script described them."
    )
    labels: list[str] | None = Field(
        None,
        description="Class names in output order. Default: the script's model.json, else the "
        "dataset version's label names, sorted.",
    )
    preprocessing: dict[str, Any] | None = Field(
        None,
        description="The package's image preprocessing (as in model.json); default: the "
        "script's model.json. With it, the parity gate and int8 calibration use the job's "
        "validation images.",
    )
    postprocessing: dict[str, Any] | None = Field(
        None, description="Softmax / top-k on an output; default: the script's model.json."
    )
    calibrate_on_generated: bool = Field(
        False,
        description="Allow calibrated int8 targets (tflite-int8, onnx-int8-static) when the "
        "gate has no real data (no parity_samples.npy, no preprocessing): they are then "
        "calibrated on generated noise.",
    )


class ModelVersionUpdate(BaseModel):
    description: str | None = None
    tags: dict[str, str] | None = None


class ModelVersionPublic(OrmModel):
    name: str
    version: str
    description: str
    tags: dict[str, Any]
    state: str = Field(description="converting | ready | failed")
    error: str
    origin: str
    source_kind: str
    source_framework: str
    job_id: str | None
    dataset_id: str | None
    dataset_version: str | None
    hyperparameters: dict[str, Any] | None
    metrics: dict[str, Any] | None
    conversion: dict[str, Any]
    conversion_report: dict[str, Any] | None
    package_digest: str | None
    created_at: dt.datetime


class ModelSummary(BaseModel):
    name: str
    versions: list[str]
    latest: str


class Lineage(BaseModel):
    """From a package back to what made it."""

    package_digest: str
    model: ModelVersionPublic
    job: JobPublic | None
    dataset: dict[str, Any] | None = Field(
        None, description="The dataset version: id, name, digest, counts."
    )


class SigningKeyPublic(BaseModel):
    """A registry signing key: ``current`` signs new packages; a ``retired`` one's packages are
    accepted until ``not_after``."""

    key_id: str
    generation: int = Field(description="1 for the first key; the trust set's version.")
    state: str = Field(description="current | retired")
    created_at: dt.datetime
    retired_at: dt.datetime | None = None
    not_after: dt.datetime | None = Field(
        None, description="End of a retired key's grace period: its packages are refused after."
    )
