"""The overview: counts and what needs attention, each read through its domain's service."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse

from control_plane.core.deps import ContextDep, SessionDep
from control_plane.dashboard.deps import PageUser
from control_plane.dashboard.pages.base import page_router
from control_plane.dashboard.render import page
from control_plane.datasets.service import DatasetService
from control_plane.deployments.service import DeploymentService
from control_plane.devices.service import DeviceService
from control_plane.registry.service import ModelService
from control_plane.training.service import TrainingService

router = page_router()
RECENT = 8


@dataclass(frozen=True)
class Failure:
    kind: str  # job | deployment | model
    name: str
    detail: str
    reason: str
    when: dt.datetime | None
    url: str


def recent_failures(jobs: list[Any], deployments: list[Any], models: list[Any]) -> list[Failure]:
    """Failed jobs, device installs and conversions, newest first."""
    found = [
        Failure(
            "job", j.name, f"v{j.version}", j.failure_reason, j.finished_at, f"/ui/training/{j.id}"
        )
        for j in jobs
        if j.state == "failed"
    ]
    found += [
        Failure(
            "deployment",
            t.device_id,
            d.package.name,
            t.reason,
            t.updated_at,
            f"/ui/deployments/{d.id}",
        )
        for d in deployments
        for t in d.targets
        if t.state == "failed"
    ]
    found += [
        Failure(
            "model", m.name, m.version, m.error, m.created_at, f"/ui/models/{m.name}/{m.version}"
        )
        for m in models
        if m.state == "failed"
    ]
    return sorted(found, key=lambda f: str(f.when or ""), reverse=True)[:RECENT]


@router.get("/")
def overview(
    request: Request, user: PageUser, session: SessionDep, ctx: ContextDep
) -> HTMLResponse:
    jobs = TrainingService(session, ctx).list()
    devices = DeviceService(session, ctx).list()
    deployments = DeploymentService(session, ctx).list()
    models = ModelService(session, ctx).list_versions()
    in_progress = [
        d for d in deployments if any(t.state in ("pending", "in_progress") for t in d.targets)
    ]
    failures = recent_failures(jobs, deployments, models)
    return page(
        request,
        "overview.html",
        user,
        datasets=DatasetService(session, ctx).list(),
        running=[j for j in jobs if j.state in ("queued", "running")],
        jobs=len(jobs),
        models=models,
        online=sum(1 for d in devices if d.status == "online"),
        offline=sum(1 for d in devices if d.status != "online"),
        devices=len(devices),
        in_progress=in_progress,
        failures=failures,
    )
