"""/visualizations: TensorBoard servers over jobs' event folders (start, list, get, stop)."""

from __future__ import annotations

from fastapi import APIRouter, status

from control_plane.core.deps import ContextDep, SessionDep
from control_plane.training.deps import RuntimeDep
from control_plane.training.schemas import VisualizationCreate, VisualizationPublic
from control_plane.training.service import TrainingService
from control_plane.training.tensorboard import Visualization

router = APIRouter(prefix="/visualizations", tags=["visualizations"])


def _public(v: Visualization) -> VisualizationPublic:
    return VisualizationPublic(
        id=v.id,
        job_ids=v.job_ids,
        state=v.state,
        url=v.url,
        port=v.port,
        idle_s=v.idle_s,
        reason=v.reason,
        started_at=v.started_at,
        last_activity_at=v.last_activity_at,
    )


@router.post("", status_code=status.HTTP_201_CREATED)
def start_visualization(
    spec: VisualizationCreate, session: SessionDep, ctx: ContextDep, runtime: RuntimeDep
) -> VisualizationPublic:
    """Start TensorBoard on loopback at a free port; poll until ``state`` is ``running``."""
    service = TrainingService(session, ctx, runtime.runner)
    logdirs = {job_id: service.event_dir(job_id) for job_id in spec.job_ids}
    return _public(runtime.visualizations.start(logdirs, spec.idle_s))


@router.get("")
def list_visualizations(runtime: RuntimeDep) -> list[VisualizationPublic]:
    return [_public(v) for v in runtime.visualizations.list()]


@router.get("/{vid}")
def get_visualization(vid: str, runtime: RuntimeDep) -> VisualizationPublic:
    """The server's state and URL; each call counts as activity (keeps it from idling out)."""
    return _public(runtime.visualizations.get(vid))


@router.post("/{vid}/stop")
def stop_visualization(vid: str, runtime: RuntimeDep) -> VisualizationPublic:
    return _public(runtime.visualizations.stop(vid))
