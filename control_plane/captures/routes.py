"""``/captures``: captured samples, the review queue, device capture stores and purges, the
improvement steps and the improvement that runs them all, and capture lineage."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, status

from control_plane.captures.deps import CapturesDep, ImproverDep
from control_plane.captures.schemas import (
    CanaryRequest,
    CaptureLineage,
    CapturePublic,
    DeviceCaptures,
    ImprovementCreate,
    ImprovementPublic,
    PublishResult,
    PurgeCreate,
    RegisterRequest,
    RetrainRequest,
    ReviewAction,
    ReviewQueue,
    StepRequest,
)
from control_plane.captures.service import find_improvement, list_improvements
from control_plane.captures.service import lineage as capture_lineage
from control_plane.core.auth import Role, needs_role
from control_plane.core.deps import ContextDep, CurrentUser, SessionDep
from control_plane.registry.schemas import ModelVersionPublic
from control_plane.services.schemas import ServicePublic
from control_plane.training.schemas import JobPublic

router = APIRouter(prefix="/captures", tags=["captures"])
# Reviewing a capture is labelling: open to labellers.
LABELLING = needs_role(Role.labeller)


@router.get("")
def list_captures(
    captures: CapturesDep,
    device_id: str | None = None,
    service: str | None = None,
    state: Literal["pending", "accepted", "corrected", "dropped"] | None = None,
    dataset: str | None = Query(None, description="A dataset id or name."),
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[CapturePublic]:
    rows = captures.list(device_id, service, state, dataset, limit, offset)
    return [CapturePublic.model_validate(c) for c in rows]


@router.get("/review")
def review_queue(
    captures: CapturesDep,
    dataset: str = Query(description="A dataset id or name."),
    order: Literal["confidence", "disagreement"] = "confidence",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> ReviewQueue:
    """Captures of the dataset waiting for review: lowest model confidence first, or those
    where the shadow version disagreed first (``order=disagreement``)."""
    ds, pending, items = captures.review_queue(dataset, order, limit)
    return ReviewQueue(
        dataset_id=ds.id,
        dataset_name=ds.name,
        labels=ds.labels,
        pending=pending,
        items=[CapturePublic.model_validate(c) for c in items],
    )


@router.post("/publish")
def publish(spec: StepRequest, improver: ImproverDep) -> PublishResult:
    """Step 1: the service's reviewed captures join its model's training dataset, whose next
    version is published."""
    return improver.publish(spec.service)


@router.post("/retrain", status_code=status.HTTP_201_CREATED)
def retrain(spec: RetrainRequest, improver: ImproverDep) -> JobPublic:
    """Step 2: the job that made the service's model, again, on a dataset version."""
    return JobPublic.model_validate(improver.retrain(spec.service, spec.dataset_version))


@router.post("/register", status_code=status.HTTP_202_ACCEPTED)
def register(spec: RegisterRequest, improver: ImproverDep) -> ModelVersionPublic:
    """Step 3: a succeeded job's model as the service model's next version (converts in the
    background, with the current version's conversion settings)."""
    return ModelVersionPublic.model_validate(improver.register(spec.service, spec.job_id))


@router.post("/canary")
def canary(spec: CanaryRequest, improver: ImproverDep) -> ServicePublic:
    """Step 4: the edge service moves to the version: a staged rollout, canary first."""
    service = improver.canary(spec.service, spec.version)
    return improver.services.public(service)


@router.post("/improvements", status_code=status.HTTP_202_ACCEPTED)
def create_improvement(
    spec: ImprovementCreate, improver: ImproverDep, user: CurrentUser, request: Request
) -> ImprovementPublic:
    """All four steps, in the background: follow ``state`` and ``steps``."""
    imp = improver.start(spec.service, user.name)
    engine = getattr(request.app.state, "improvements", None)
    if engine is not None:
        engine.wake()
    return ImprovementPublic.model_validate(imp)


@router.get("/improvements")
def improvements(session: SessionDep, service: str | None = None) -> list[ImprovementPublic]:
    return [ImprovementPublic.model_validate(i) for i in list_improvements(session, service)]


@router.get("/improvements/{improvement_id}")
def get_improvement(improvement_id: str, session: SessionDep) -> ImprovementPublic:
    return ImprovementPublic.model_validate(find_improvement(session, improvement_id))


@router.get("/devices/{device_id}")
def device_captures(device_id: str, captures: CapturesDep) -> DeviceCaptures:
    """The device's capture store as it last reported it, and what the control plane holds."""
    return captures.device(device_id)


@router.post("/devices/{device_id}/purge")
def purge_device(device_id: str, spec: PurgeCreate, captures: CapturesDep) -> DeviceCaptures:
    """Tell the device to delete the records it holds captured before ``before`` (default
    now); a retained order, applied once even if the device is offline now."""
    return captures.purge(device_id, spec.before)


@router.get("/lineage/{package_digest}")
def lineage(package_digest: str, session: SessionDep, ctx: ContextDep) -> CaptureLineage:
    """Which device captures went into the training data of this package's model version."""
    return capture_lineage(session, ctx, package_digest)


@router.get("/{capture_id}")
def get_capture(capture_id: str, captures: CapturesDep) -> CapturePublic:
    return CapturePublic.model_validate(captures.get(capture_id))


@router.post("/{capture_id}/review", openapi_extra=LABELLING)
def review(
    capture_id: str, spec: ReviewAction, captures: CapturesDep, user: CurrentUser
) -> CapturePublic:
    """accept (the model's label becomes a person's), correct (with ``label``), or drop."""
    return CapturePublic.model_validate(captures.review(capture_id, spec, user.name))
