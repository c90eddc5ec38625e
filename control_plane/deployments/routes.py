"""/deployments: create (publishes desired state), list, get with per-device progress."""

from __future__ import annotations

from fastapi import APIRouter, status

from control_plane.core.deps import ContextDep, SessionDep
from control_plane.deployments.schemas import (
    DeploymentCreate,
    DeploymentPublic,
    DeviceModelPublic,
)
from control_plane.deployments.service import DeploymentService

router = APIRouter(prefix="/deployments", tags=["deployments"])


@router.post("", status_code=status.HTTP_201_CREATED)
def create_deployment(
    body: DeploymentCreate, session: SessionDep, ctx: ContextDep
) -> DeploymentPublic:
    """Make a package the desired state of a device or a label-selected group (or remove it)."""
    deployment = DeploymentService(session, ctx).create(
        package_digest=body.package_digest,
        package_name=body.package_name,
        package_version=body.package_version,
        device_id=body.device_id,
        selector=body.selector,
        action=body.action,
        standby=body.standby,
        weight=body.weight,
        guard=body.guard.model_dump() if body.guard else None,
        warmup=body.warmup.model_dump() if body.warmup else None,
    )
    return DeploymentPublic.of(deployment)


@router.get("")
def list_deployments(session: SessionDep, ctx: ContextDep) -> list[DeploymentPublic]:
    return [DeploymentPublic.of(d) for d in DeploymentService(session, ctx).list()]


@router.get("/devices/{device_id}/models")
def device_models(device_id: str, session: SessionDep, ctx: ContextDep) -> list[DeviceModelPublic]:
    """What a device reports holding, each with its deployment, or marked ``out_of_band``."""
    views = DeploymentService(session, ctx).device_models(device_id)
    return [DeviceModelPublic(**vars(v)) for v in views]


@router.get("/{deployment_id}")
def get_deployment(deployment_id: str, session: SessionDep, ctx: ContextDep) -> DeploymentPublic:
    return DeploymentPublic.of(DeploymentService(session, ctx).get(deployment_id))
