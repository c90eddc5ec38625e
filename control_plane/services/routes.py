"""/services: online services (create, list, get, roll to new versions, delete)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, status

from control_plane.core.context import app_state
from control_plane.core.deps import ContextDep, SessionDep
from control_plane.services.schemas import ServiceCreate, ServicePublic, ServiceUpdate
from control_plane.services.service import ServiceManager
from control_plane.services.supervisor import Supervisor

router = APIRouter(prefix="/services", tags=["services"])


def get_supervisor(request: Request) -> Supervisor:
    return app_state(request.app, "services", Supervisor.start)


SupervisorDep = Annotated[Supervisor, Depends(get_supervisor)]


@router.post("", status_code=status.HTTP_201_CREATED)
def create_service(
    spec: ServiceCreate, session: SessionDep, ctx: ContextDep, supervisor: SupervisorDep
) -> ServicePublic:
    """Start the service's replicas and deploy its models to them (state ``deploying``)."""
    manager = ServiceManager(session, ctx, supervisor)
    return manager.public(manager.create(spec))


@router.get("")
def list_services(
    session: SessionDep, ctx: ContextDep, supervisor: SupervisorDep
) -> list[ServicePublic]:
    manager = ServiceManager(session, ctx, supervisor)
    return [manager.public(s) for s in manager.list()]


@router.get("/{name}")
def get_service(
    name: str, session: SessionDep, ctx: ContextDep, supervisor: SupervisorDep
) -> ServicePublic:
    manager = ServiceManager(session, ctx, supervisor)
    return manager.public(manager.get(name))


@router.patch("/{name}")
def update_service(
    name: str,
    change: ServiceUpdate,
    session: SessionDep,
    ctx: ContextDep,
    supervisor: SupervisorDep,
) -> ServicePublic:
    """New model versions, rolled out one replica at a time (each hot-swaps without dropping a
    request)."""
    manager = ServiceManager(session, ctx, supervisor)
    return manager.public(manager.update(name, change))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def delete_service(
    name: str, session: SessionDep, ctx: ContextDep, supervisor: SupervisorDep
) -> None:
    """Stop the replicas and remove them (and their devices)."""
    ServiceManager(session, ctx, supervisor).delete(name)
