"""Request and response bodies of deployments."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field

from control_plane.core.schemas import OrmModel
from control_plane.deployments.models import Deployment, DeploymentTarget


class DeploymentCreate(BaseModel):
    package_digest: str | None = Field(None, description="The package by digest, or ...")
    package_name: str | None = Field(None, description="... by name and version.")
    package_version: str | None = None
    device_id: str | None = Field(None, description="Target one device, or ...")
    selector: dict[str, str] | None = Field(
        None, description="... every device whose labels match all of these."
    )


class DeploymentTargetPublic(OrmModel):
    device_id: str
    state: str = Field(description="pending | in_progress | installed | failed | superseded")
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
            created_at=d.created_at,
            targets=[DeploymentTargetPublic.model_validate(t) for t in targets],
            summary=summary,
        )
