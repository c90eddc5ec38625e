"""Services: the list (online, batch and edge, with state) and create forms, and a service's
page: replicas, endpoints and per-version figures for an online service; progress, evaluation and
paged result rows for a batch service; the rollout's stages for an edge service (``edge.py``)."""

from __future__ import annotations

from typing import Any

from fastapi import Query, Request
from fastapi.responses import HTMLResponse

from control_plane.core.deps import ContextDep, SessionDep
from control_plane.dashboard.charts import bar_chart
from control_plane.dashboard.deps import PageUser
from control_plane.dashboard.pages.base import page_router, version_choices
from control_plane.dashboard.pages.edge import edge_page
from control_plane.dashboard.render import page
from control_plane.devices.service import DeviceService
from control_plane.registry.packages.service import PackageService
from control_plane.registry.service import ModelService
from control_plane.services.deps import SupervisorDep
from control_plane.services.schemas import Evaluation
from control_plane.services.service import ServiceManager

router = page_router()
ACTIVE = ("deploying",)
RESULTS_PER_PAGE = 50


@router.get("/services")
def services(
    request: Request,
    user: PageUser,
    session: SessionDep,
    ctx: ContextDep,
    supervisor: SupervisorDep,
) -> HTMLResponse:
    manager = ServiceManager(session, ctx, supervisor)
    inputs = version_choices(session, ctx)
    models = [m for m in ModelService(session, ctx).list_versions() if m.state == "ready"]
    return page(
        request,
        "services_list.html",
        user,
        services=[manager.public(s) for s in manager.list()],
        models=models,
        inputs=inputs,
        # An edge service takes a ready registry version or an uploaded (signed) package.
        edge_models=sorted(
            {(m.name, m.version) for m in models}
            | {(p.name, p.version) for p in PackageService(session, ctx).list()}
        ),
        devices=[d.id for d in DeviceService(session, ctx).list()],
    )


def _confusion(ev: Evaluation | None) -> dict[str, Any] | None:
    """Rows of (count, shade 0..1) for the heatmap, rows the true label."""
    if ev is None or not ev.confusion_matrix:
        return None
    top = max((max(r) for r in ev.confusion_matrix if r), default=0) or 1
    return {"labels": ev.labels, "rows": [[(c, c / top) for c in r] for r in ev.confusion_matrix]}


@router.get("/services/{name}")
def service(
    name: str,
    request: Request,
    user: PageUser,
    session: SessionDep,
    ctx: ContextDep,
    supervisor: SupervisorDep,
    offset: int = Query(0, ge=0),
) -> HTMLResponse:
    manager = ServiceManager(session, ctx, supervisor)
    svc = manager.public(manager.get(name))
    if svc.type == "edge":
        return edge_page(request, user, session, ctx, svc)
    values: dict[str, Any] = {"svc": svc, "live": svc.state in ACTIVE}
    if svc.type == "batch":
        batch = svc.batch
        values["live"] = svc.state in ("deploying", "running")
        values["percent"] = 100 * batch.done / batch.total if batch and batch.total else 0
        values["confusion"] = _confusion(svc.evaluation)
        values["results"] = manager.result_page(name, offset, RESULTS_PER_PAGE)
        values["per_page"] = RESULTS_PER_PAGE
        return page(request, "services_batch.html", user, **values)
    figures = manager.versions(name)
    values["figures"] = figures
    values["requests_chart"] = bar_chart(
        [(f"{f.model} {f.version}", f.requests) for f in figures.items]
    )
    values["rest_base"] = f"{str(request.base_url).rstrip('/')}/api/v1/services/{name}"
    return page(request, "services_online.html", user, **values)
