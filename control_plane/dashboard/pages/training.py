"""Training: job list with the create form, and a job's page (log, curves, metrics)."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from control_plane.core.deps import ContextDep, SessionDep
from control_plane.dashboard.charts import LineChart, line_chart
from control_plane.dashboard.deps import PageUser
from control_plane.dashboard.pages.base import page_router, version_choices
from control_plane.dashboard.render import page
from control_plane.training.deps import RuntimeDep
from control_plane.training.service import TrainingService, algorithms

router = page_router()
ACTIVE = ("queued", "running")
LOG_TAIL_BYTES = 16_000


@router.get("/training")
def jobs(request: Request, user: PageUser, session: SessionDep, ctx: ContextDep) -> HTMLResponse:
    inputs = version_choices(session, ctx)
    return page(
        request,
        "training_list.html",
        user,
        jobs=TrainingService(session, ctx).list(),
        algorithms=algorithms(),
        inputs=inputs,
    )


def curves(runs: dict[str, dict[str, list[dict[str, float]]]]) -> list[LineChart]:
    """One chart per tag (loss, accuracy, ...), one line per run (train, validation)."""
    by_tag: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for run, tags in runs.items():
        for tag, points in tags.items():
            by_tag.setdefault(tag, {})[run] = [(p["step"], p["value"]) for p in points]
    return [line_chart(tag, series) for tag, series in sorted(by_tag.items())]


def _log_tail(service: TrainingService, job_id: str) -> str:
    path = service.log_path(job_id)
    if not path.is_file():
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
        return f.read().decode("utf-8", "replace")


def _confusion(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    """The confusion matrix (``edge_training.classification_metrics``: ``{labels, matrix}``,
    rows the true class) as rows of (count, shade 0..1) for the heatmap."""
    cm = (metrics or {}).get("confusion_matrix")
    if not isinstance(cm, dict) or not isinstance(cm.get("matrix"), list) or not cm["matrix"]:
        return None
    matrix: list[list[int]] = cm["matrix"]
    top = max((max(r) for r in matrix if r), default=0) or 1
    labels = cm.get("labels") or [str(i) for i in range(len(matrix))]
    return {"labels": labels, "rows": [[(c, c / top) for c in r] for r in matrix]}


@router.get("/training/{job_id}")
def job(
    job_id: str,
    request: Request,
    user: PageUser,
    session: SessionDep,
    ctx: ContextDep,
    runtime: RuntimeDep,
) -> HTMLResponse:
    service = TrainingService(session, ctx)
    j = service.get(job_id)
    metrics = j.metrics or {}
    per_class = metrics.get("per_class") if isinstance(metrics.get("per_class"), dict) else None
    return page(
        request,
        "training_job.html",
        user,
        job=j,
        live=j.state in ACTIVE,
        log=_log_tail(service, job_id),
        charts=curves(service.scalars(job_id)),
        confusion=_confusion(metrics),
        per_class=per_class,
        scalar_metrics={k: v for k, v in metrics.items() if isinstance(v, int | float)},
        versions=[v for v in service.list(name=j.name)],
        tensorboards=[
            v
            for v in runtime.visualizations.list()
            if job_id in v.job_ids and v.state in ("starting", "running")
        ],
    )


@router.get("/visualizations/{vid}")
def visualization(vid: str, request: Request, user: PageUser, runtime: RuntimeDep) -> Response:
    """Waits (refreshing) while TensorBoard starts, then sends the browser to its proxy."""
    item = runtime.visualizations.get(vid)
    if item.state == "running":
        return RedirectResponse(f"/tensorboard/{vid}/", status_code=303)
    return page(request, "training_tensorboard.html", user, item=item)
