"""Request and response bodies of deployments."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from control_plane.core.schemas import OrmModel
from control_plane.deployments.models import Deployment, DeploymentTarget


class GuardSpec(BaseModel):
    """The device's local guard after it activates the version (works with the broker down).
    Unknown fields are refused: a misspelt limit taken as absent would leave the guard looser."""

    model_config = ConfigDict(extra="forbid")

    bake_s: float = Field(gt=0, le=86400, description="How long the device watches the version.")
    max_error_rate: float = Field(
        1.0, ge=0, le=1, description="Revert when errors / requests goes above this."
    )
    max_p99_ms: float = Field(0.0, ge=0, description="Revert when p99 goes above this (0: off).")
    min_requests: int = Field(1, ge=1, description="Requests needed before the guard judges.")


class WarmupSpec(BaseModel):
    """Shadow warm-up: the device activates the version only if its answers on mirrored live
    requests agree with the active version's. Unknown fields are refused, as in ``GuardSpec``."""

    model_config = ConfigDict(extra="forbid")

    fraction: float = Field(1.0, gt=0, le=1, description="Share of requests mirrored to it.")
    min_requests: int = Field(20, ge=1, le=100000, description="Requests compared before deciding.")
    min_agreement: float = Field(0.95, ge=0, le=1, description="Top-1 agreement (classifiers).")
    max_abs_diff: float = Field(
        1e-3, ge=0, description="Largest element difference (outputs without classes)."
    )
    timeout_s: float = Field(300.0, gt=0, le=86400, description="Not enough traffic by then: no.")


class DeploymentCreate(BaseModel):
    package_digest: str | None = Field(None, description="The package by digest, or ...")
    package_name: str | None = Field(None, description="... by name and version.")
    package_version: str | None = None
    device_id: str | None = Field(None, description="Target one device, or ...")
    selector: dict[str, str] | None = Field(
        None, description="... every device whose labels match all of these."
    )
    action: Literal["install", "remove"] = Field(
        "install", description="install (and activate), or remove (uninstall that version)."
    )
    standby: bool = Field(
        False, description="Install without activating: held beside the active version."
    )
    weight: float = Field(
        0.0,
        ge=0,
        le=100,
        description="Standby only: percent of the requests naming no version sent to it.",
    )
    guard: GuardSpec | None = None
    warmup: WarmupSpec | None = None


class DeploymentTargetPublic(OrmModel):
    device_id: str
    state: str = Field(
        description="pending | in_progress | installed | failed | removed | superseded"
    )
    reason: str
    step: str
    chunks_done: int
    chunks_total: int
    updated_at: dt.datetime


class DeploymentPublic(BaseModel):
    id: str
    package_digest: str
    package_name: str
    package_version: str
    target: dict[str, Any]
    action: str
    standby: bool
    weight: float
    guard: dict[str, Any] | None
    warmup: dict[str, Any] | None
    created_at: dt.datetime
    targets: list[DeploymentTargetPublic]
    summary: dict[str, int] = Field(description="Number of targeted devices in each state.")

    @classmethod
    def of(cls, d: Deployment) -> DeploymentPublic:
        targets: list[DeploymentTarget] = sorted(d.targets, key=lambda t: t.device_id)
        summary: dict[str, int] = {}
        for t in targets:
            summary[t.state] = summary.get(t.state, 0) + 1
        return cls(
            id=d.id,
            package_digest=d.package_digest,
            package_name=d.package.name,
            package_version=d.package.version,
            target=d.target,
            action=d.action,
            standby=d.standby,
            weight=d.weight,
            guard=d.guard,
            warmup=d.warmup,
            created_at=d.created_at,
            targets=[DeploymentTargetPublic.model_validate(t) for t in targets],
            summary=summary,
        )


class DeviceModelPublic(BaseModel):
    """A version a device reports holding, and how it got there."""

    name: str
    version: str
    package_digest: str
    active: bool
    deployment_id: str | None = Field(description="The latest deployment that installed it.")
    out_of_band: bool = Field(
        description="No deployment installed it (an offline bundle, a local install)."
    )
