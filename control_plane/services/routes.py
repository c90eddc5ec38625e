"""/services: online services (create, list, get, roll to new versions, delete), batch
services (create, follow, read the results, delete) and edge services (staged rollouts to devices:
history, pause, resume, abort, rollback)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response, UploadFile, status
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from control_plane.core.context import app_state
from control_plane.core.deps import ContextDep, SessionDep
from control_plane.core.errors import InvalidRequest, PayloadTooLarge
from control_plane.services.batch import csv_chunks
from control_plane.services.device_batch import DeviceBatches
from control_plane.services.proxy import ReplicaProxy
from control_plane.services.rollouts.engine import RolloutEngine
from control_plane.services.rollouts.service import RolloutService
from control_plane.services.schemas import (
    InputUpload,
    ResultPage,
    RolloutPublic,
    ServiceCreate,
    ServicePublic,
    ServiceUpdate,
    ServiceVersions,
)
from control_plane.services.service import ServiceManager
from control_plane.services.supervisor import Supervisor

router = APIRouter(prefix="/services", tags=["services"])


def get_supervisor(request: Request) -> Supervisor:
    return app_state(request.app, "services", Supervisor.start)


SupervisorDep = Annotated[Supervisor, Depends(get_supervisor)]


def get_proxy(request: Request) -> ReplicaProxy:
    return app_state(
        request.app,
        "service_proxy",
        lambda ctx: ReplicaProxy(ctx.settings.services.proxy_timeout_s),
    )


ProxyDep = Annotated[ReplicaProxy, Depends(get_proxy)]


def get_rollout_engine(request: Request) -> RolloutEngine:
    return app_state(request.app, "rollouts", RolloutEngine.start)


RolloutEngineDep = Annotated[RolloutEngine, Depends(get_rollout_engine)]


def get_device_batches(request: Request) -> DeviceBatches:
    return app_state(request.app, "device_batches", DeviceBatches)


DeviceBatchesDep = Annotated[DeviceBatches, Depends(get_device_batches)]


# Declared before ``/{name}`` so that ``inputs`` is never read as a service name (it is reserved).
@router.post("/inputs", status_code=status.HTTP_201_CREATED)
def upload_input(
    file: UploadFile, session: SessionDep, ctx: ContextDep, supervisor: SupervisorDep
) -> InputUpload:
    """Upload a batch input: a ``.zip`` of images, ``.npy`` and tensor ``.jsonl`` files, or one
    ``.npy`` or ``.jsonl`` file; its ``id`` goes into a batch service's ``input.upload``."""
    manager = ServiceManager(session, ctx, supervisor)
    return manager.upload_input(file.file, file.filename or "")


@router.get("/inputs")
def list_inputs(
    session: SessionDep, ctx: ContextDep, supervisor: SupervisorDep
) -> list[InputUpload]:
    return ServiceManager(session, ctx, supervisor).list_inputs()


@router.get("/inputs/{upload_id}")
def get_input(
    upload_id: str, session: SessionDep, ctx: ContextDep, supervisor: SupervisorDep
) -> InputUpload:
    return ServiceManager(session, ctx, supervisor).get_input(upload_id)


@router.delete("/inputs/{upload_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_input(
    upload_id: str, session: SessionDep, ctx: ContextDep, supervisor: SupervisorDep
) -> None:
    """Remove an uploaded input (409 while a batch service uses it)."""
    ServiceManager(session, ctx, supervisor).delete_input(upload_id)


@router.post("", status_code=status.HTTP_201_CREATED)
def create_service(
    spec: ServiceCreate,
    session: SessionDep,
    ctx: ContextDep,
    supervisor: SupervisorDep,
    device_batches: DeviceBatchesDep,
) -> ServicePublic:
    """Start the service's replicas and deploy its models to them (state ``deploying``); a
    batch service with a ``device`` sends its job to that device instead."""
    manager = ServiceManager(session, ctx, supervisor, device_batches)
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
    name: str,
    session: SessionDep,
    ctx: ContextDep,
    supervisor: SupervisorDep,
    device_batches: DeviceBatchesDep,
) -> None:
    """Stop the replicas and remove them (and their devices); cancel a device's batch job."""
    ServiceManager(session, ctx, supervisor, device_batches).delete(name)


@router.get("/{name}/versions")
def get_versions(
    name: str,
    session: SessionDep,
    ctx: ContextDep,
    supervisor: SupervisorDep,
    baseline: Annotated[str | None, Query(max_length=128)] = None,
) -> ServiceVersions:
    """Requests, errors and p50 / p99 per model version over the service's replicas, each
    compared with ``baseline`` (default: the version the service serves now)."""
    return ServiceManager(session, ctx, supervisor).versions(name, baseline)


@router.get("/{name}/rollouts")
def list_rollouts(
    name: str, session: SessionDep, ctx: ContextDep, supervisor: SupervisorDep
) -> list[RolloutPublic]:
    """An edge service's rollouts, newest first: stages, device states, gate figures."""
    service = ServiceManager(session, ctx, supervisor).get(name)
    rollouts = RolloutService(session, ctx)
    return [rollouts.public(r) for r in rollouts.history(service.name)]


@router.post("/{name}/rollout/{action}")
def act_on_rollout(
    name: str,
    action: Literal["pause", "resume", "abort", "rollback"],
    session: SessionDep,
    ctx: ContextDep,
    supervisor: SupervisorDep,
    engine: RolloutEngineDep,
) -> RolloutPublic:
    """Pause, resume or abort the latest rollout, or roll every device it reached back to the
    version that device had before (a re-activation where the device still holds it)."""
    service = ServiceManager(session, ctx, supervisor).get(name)
    if service.type != "edge":
        raise InvalidRequest(f"service {name} is a {service.type} service; rollouts are edge's")
    rollouts = RolloutService(session, ctx)
    rollout = getattr(rollouts, action)(service)
    session.commit()
    engine.wake()
    return rollouts.public(rollout)


@router.get("/{name}/results")
def get_results(
    name: str,
    session: SessionDep,
    ctx: ContextDep,
    supervisor: SupervisorDep,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ResultPage:
    """A page of a batch service's result rows, one per input (none until its job has ended)."""
    return ServiceManager(session, ctx, supervisor).result_page(name, offset, limit)


@router.get(
    "/{name}/results.jsonl",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/x-ndjson": {}}}},
)
def download_results_jsonl(
    name: str, session: SessionDep, ctx: ContextDep, supervisor: SupervisorDep
) -> StreamingResponse:
    """Every result row, one JSON object a line."""
    rows = ServiceManager(session, ctx, supervisor).results(name)
    return StreamingResponse(
        (row.model_dump_json() + "\n" for row in rows),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": f'attachment; filename="{name}-results.jsonl"'},
    )


@router.get(
    "/{name}/results.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {}}}},
)
def download_results_csv(
    name: str, session: SessionDep, ctx: ContextDep, supervisor: SupervisorDep
) -> StreamingResponse:
    """Every result row as CSV (``top_k`` as JSON in its cell)."""
    rows = ServiceManager(session, ctx, supervisor).results(name)
    return StreamingResponse(
        csv_chunks(rows),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}-results.csv"'},
    )


# Two routes (not one api_route with two methods) so each has its own OpenAPI operation id.
@router.get("/{name}/v2/{path:path}", name="service_oip_rest")
@router.post("/{name}/v2/{path:path}", name="service_oip_rest")
async def call_service(
    name: str,
    path: str,
    request: Request,
    ctx: ContextDep,
    supervisor: SupervisorDep,
    proxy: ProxyDep,
) -> Response:
    """The service's OIP v2 REST API (``/v2/...`` of its agents, KServe v2 paths), spread over its
    running replicas: ``tritonclient.http`` works against ``<host>/api/v1/services/{name}`` with
    the control plane's bearer token."""
    limit = ctx.settings.services.proxy_max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds {limit}")
    body = await request.body()
    if len(body) > limit:
        raise PayloadTooLarge(f"request body exceeds {limit} bytes")

    def addresses() -> list[str]:
        with ctx.sessions() as session:
            return ServiceManager(session, ctx, supervisor).http_addresses(name)

    answer = await proxy.forward(
        name,
        await run_in_threadpool(addresses),
        request.method,
        path,
        request.url.query,
        dict(request.headers),
        body,
    )
    return Response(answer.body, status_code=answer.status, headers=answer.headers)
