"""Models: versions with tags and state, the registry's signing keys, a version's page (conversion
report, lineage)."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import HTMLResponse

from control_plane.captures.service import lineage as capture_lineage
from control_plane.core.deps import ContextDep, SessionDep
from control_plane.dashboard.deps import PageUser
from control_plane.dashboard.pages.base import page_router
from control_plane.dashboard.render import page
from control_plane.deployments.service import DeploymentService
from control_plane.registry.keys.service import list_keys
from control_plane.registry.service import ModelService
from control_plane.training.service import TrainingService

router = page_router()


@router.get("/models")
def models(request: Request, user: PageUser, session: SessionDep, ctx: ContextDep) -> HTMLResponse:
    jobs = [j for j in TrainingService(session, ctx).list() if j.state == "succeeded"]
    return page(
        request,
        "models_list.html",
        user,
        versions=ModelService(session, ctx).list_versions(),
        jobs=jobs,
        signing_keys=list_keys(ctx),
    )


@router.get("/models/{name}/{version}")
def model_version(
    name: str, version: str, request: Request, user: PageUser, session: SessionDep, ctx: ContextDep
) -> HTMLResponse:
    service = ModelService(session, ctx)
    mv = service.get(name, version)
    job, dataset, devices, captured = None, None, [], None
    if mv.package_digest:
        _, job, dataset = service.lineage(mv.package_digest)
        captured = capture_lineage(session, ctx, mv.package_digest)
        devices = sorted(
            {
                (t.device_id, t.state)
                for d in DeploymentService(session, ctx).list()
                if d.package_digest == mv.package_digest
                for t in d.targets
                if t.state != "superseded"
            }
        )
    # The lineage as a left-to-right chain of boxes: device captures -> dataset version -> job
    # -> model -> package -> devices (only the stages that exist).
    chain = []
    if captured is not None and captured.captures:
        n, k = len(captured.captures), len(captured.devices)
        chain.append(("device captures", f"{n} from {k} device(s)", ""))
    if dataset:
        chain.append(
            (
                "dataset version",
                f"{dataset['dataset_id']} {dataset['version']}",
                f"/ui/datasets/{dataset['dataset_id']}",
            )
        )
    if job:
        chain.append(("training job", f"{job.name} v{job.version}", f"/ui/training/{job.id}"))
    chain.append(("model", f"{mv.name} {mv.version}", ""))
    if mv.package_digest:
        chain.append(("package", mv.package_digest[:12], ""))
    for device_id, state in devices:
        chain.append(("device", f"{device_id} ({state})", f"/ui/devices/{device_id}"))
    return page(
        request, "models_version.html", user, mv=mv, report=mv.conversion_report, chain=chain
    )
