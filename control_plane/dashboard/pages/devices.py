"""Devices (table, register, a device's telemetry, the models it holds and its capture store) and
deployments (create, per-device progress)."""

from __future__ import annotations

import json

from fastapi import Request
from fastapi.responses import HTMLResponse

from control_plane.captures.service import CaptureService
from control_plane.core.deps import ContextDep, SessionDep
from control_plane.dashboard.charts import line_chart
from control_plane.dashboard.deps import PageUser
from control_plane.dashboard.pages.base import page_router
from control_plane.dashboard.render import page
from control_plane.deployments.service import DeploymentService
from control_plane.devices.service import DeviceService
from control_plane.devices.telemetry.service import TelemetryService
from control_plane.registry.service import ModelService

router = page_router()
TELEMETRY_POINTS = 1000


@router.get("/devices")
def devices(request: Request, user: PageUser, session: SessionDep, ctx: ContextDep) -> HTMLResponse:
    deployments = DeploymentService(session, ctx)
    rows = []
    for d in DeviceService(session, ctx).list():
        targets = deployments.device_targets(d.id)
        rows.append((d, targets[0] if targets else None))
    return page(request, "devices_list.html", user, rows=rows)


@router.get("/devices/{device_id}")
def device(
    device_id: str, request: Request, user: PageUser, session: SessionDep, ctx: ContextDep
) -> HTMLResponse:
    d = DeviceService(session, ctx).get(device_id)
    records = TelemetryService(session, ctx).list(
        device_id, after_seq=max(0, d.telemetry_seq - TELEMETRY_POINTS), limit=TELEMETRY_POINTS
    )
    series: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for r in records:
        try:
            payload = json.loads(r.payload)
        except ValueError:
            continue
        if not isinstance(payload, dict):
            continue
        for key, value in payload.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                series.setdefault(r.kind, {}).setdefault(key, []).append((r.seq, float(value)))
    charts = [line_chart(kind, s) for kind, s in sorted(series.items())]
    deployments = DeploymentService(session, ctx)
    return page(
        request,
        "devices_detail.html",
        user,
        device=d,
        charts=charts,
        targets=deployments.device_targets(device_id),
        held=deployments.device_models(device_id),
        captures=CaptureService(session, ctx).device(device_id),
    )


@router.get("/deployments")
def deployments(
    request: Request, user: PageUser, session: SessionDep, ctx: ContextDep
) -> HTMLResponse:
    ready = [m for m in ModelService(session, ctx).list_versions() if m.package_digest]
    return page(
        request,
        "deployments_list.html",
        user,
        deployments=DeploymentService(session, ctx).list(),
        models=ready,
        devices=DeviceService(session, ctx).list(),
    )


@router.get("/deployments/{deployment_id}")
def deployment(
    deployment_id: str, request: Request, user: PageUser, session: SessionDep, ctx: ContextDep
) -> HTMLResponse:
    d = DeploymentService(session, ctx).get(deployment_id)
    live = any(t.state in ("pending", "in_progress") for t in d.targets)
    return page(request, "deployments_detail.html", user, deployment=d, live=live)
