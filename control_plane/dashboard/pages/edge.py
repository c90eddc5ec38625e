"""An edge service's page: its current rollout as stages, each with its devices and their
per-device state, the gate figures, the operator's buttons, and the rollout history.

The REST view of a stage (``RolloutPublic``) carries each device's deployment state
(pending | in_progress | installed | failed | removed | superseded). A person following a rollout
asks something simpler: is the device waiting, fetching, done, broken, or back on its previous
version? ``device_state`` answers that from the stage, its deployment's progress step and its
rollback deployments, without deciding anything the rollout engine did not.
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import HTMLResponse

from control_plane.captures.service import CaptureService, list_improvements
from control_plane.core.auth import Principal
from control_plane.core.deps import ContextDep, SessionDep
from control_plane.core.errors import NotFound
from control_plane.dashboard.render import page
from control_plane.deployments.service import DeploymentService
from control_plane.services.rollouts.service import RolloutService
from control_plane.services.schemas import RolloutPublic, ServicePublic, StagePublic

#: Rollout states in which the engine still acts: the page refreshes itself while in one.
LIVE = ("running", "paused")


@dataclass(frozen=True)
class DeviceRow:
    """One device of a stage as the page shows it."""

    device_id: str
    #: pending | downloading | installing | installed | failed | rolling back | rolled back |
    #: rollback failed,
    #: or the deployment's own word (removed, superseded).
    state: str
    previous: str | None
    detail: str


@dataclass(frozen=True)
class StageView:
    stage: StagePublic
    devices: list[DeviceRow]
    failed_gates: list[str]


def device_state(target_state: str, step: str, rollback_state: str | None) -> str:
    """What a device is at in a stage, in the words of the page.

    ``rollback_state`` is the device's state in one of the stage's rollback deployments (None
    when the stage was not rolled back for it).
    """
    if rollback_state is not None:
        if rollback_state in ("installed", "removed"):
            return "rolled back"
        return "rollback failed" if rollback_state == "failed" else "rolling back"
    if target_state == "in_progress":
        return "installing" if step == "install" else "downloading"  # the agent's two steps
    return target_state or "pending"  # no deployment yet: the stage has not started


def stage_view(stage: StagePublic, deployments: DeploymentService) -> StageView:
    steps: dict[str, tuple[str, str]] = {}
    if stage.deployment_id:
        try:
            dep = deployments.get(stage.deployment_id)
            steps = {t.device_id: (t.step, t.reason) for t in dep.targets}
        except NotFound:
            steps = {}
    back: dict[str, str] = {}
    for dep_id in stage.rollback_deployments:
        try:
            back.update({t.device_id: t.state for t in deployments.get(dep_id).targets})
        except NotFound:
            continue
    rows = []
    for device in stage.devices:
        step, reason = steps.get(device, ("", ""))
        state = device_state(stage.device_states.get(device, ""), step, back.get(device))
        rows.append(DeviceRow(device, state, stage.previous.get(device), reason))
    failed = [g.gate for g in stage.gates if not g.passed]
    return StageView(stage, rows, failed)


def edge_page(
    request: Request,
    user: Principal,
    session: SessionDep,
    ctx: ContextDep,
    svc: ServicePublic,
) -> HTMLResponse:
    rollouts = RolloutService(session, ctx)
    history: list[RolloutPublic] = [rollouts.public(r) for r in rollouts.history(svc.name)]
    current = history[0] if history else None
    deployments = DeploymentService(session, ctx)
    stages = [stage_view(s, deployments) for s in current.stages] if current else []
    captures = CaptureService(session, ctx)
    capture_block = svc.capture.model_dump() if svc.capture else None
    return page(
        request,
        "services_edge.html",
        user,
        svc=svc,
        flywheel=captures.service_summary(svc.name, capture_block) if svc.capture else None,
        improvements=list_improvements(session, svc.name)[::-1][:10],
        rollout=current,
        stages=stages,
        history=history,
        live=current is not None and current.state in LIVE,
    )
