"""Datasets: the list, a dataset's page (sample grid, label statistics, upload, versions) and the
labelling page. Reads go through ``DatasetService`` / ``VersionService``; writes are the REST
API's (``api-form`` and the upload script)."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Query, Request
from fastapi.responses import HTMLResponse

from control_plane.captures.service import ORDERS, CaptureService
from control_plane.core.deps import ContextDep, SessionDep
from control_plane.dashboard.charts import bar_chart
from control_plane.dashboard.deps import PageUser
from control_plane.dashboard.pages.base import page_router
from control_plane.dashboard.render import page
from control_plane.datasets.service import SAMPLE_FIELDS, DatasetService, SampleFilter
from control_plane.datasets.versions.service import VersionService

router = page_router()
PAGE_SIZES = (50, 100, 200)
IMPORT_FORMATS = ("imagefolder", "coco", "voc", "yolo", "manifest")
EXPORT_FORMATS = ("manifest", "imagefolder", "coco", "voc", "yolo")


@router.get("/datasets")
def datasets(
    request: Request, user: PageUser, session: SessionDep, ctx: ContextDep
) -> HTMLResponse:
    service = DatasetService(session, ctx)
    rows = [(d, service.sample_count(d.id)) for d in service.list()]
    return page(request, "datasets_list.html", user, rows=rows)


def _filter_query(label: str | None, unlabeled: bool, split: str | None) -> dict[str, Any]:
    q: dict[str, Any] = {}
    if label:
        q["label"] = label
    if unlabeled:
        q["unlabeled"] = "true"
    if split:
        q["split"] = split
    return q


def _samples(listing: Any) -> list[dict[str, Any]]:
    """Plain dicts for the template: the sample's fields and its annotations."""
    out = []
    for row in listing.samples:
        item = dict(zip(SAMPLE_FIELDS, row, strict=True))
        item["annotations"] = [
            {
                "label": a[2],
                "box": None if a[3] is None else [a[3], a[4], a[5], a[6]],
                "source": a[7],
                "creator": a[8],
                "confidence": a[9],
            }
            for a in listing.annotations.get(item["id"], ())
        ]
        out.append(item)
    return out


@router.get("/datasets/{dataset_id}")
def dataset(
    dataset_id: str, request: Request, user: PageUser, session: SessionDep, ctx: ContextDep
) -> HTMLResponse:
    """The dataset's summary: label statistics, uploads, versions and publishing."""
    service = DatasetService(session, ctx)
    stats = service.stats(dataset_id)
    return page(
        request,
        "datasets_detail.html",
        user,
        ds=service.get(dataset_id),
        stats=stats,
        chart=bar_chart([(s.name, s.samples) for s in stats.labels]),
        versions=VersionService(session, ctx).list(dataset_id),
        captures_pending=CaptureService(session, ctx).review_queue(dataset_id, limit=1)[1],
        import_formats=IMPORT_FORMATS,
        export_formats=EXPORT_FORMATS,
    )


@router.get("/datasets/{dataset_id}/samples")
def samples(
    dataset_id: str,
    request: Request,
    user: PageUser,
    session: SessionDep,
    ctx: ContextDep,
    label: Annotated[str | None, Query(max_length=200)] = None,
    unlabeled: bool = False,
    split: Annotated[str | None, Query(pattern="^(train|validation)$")] = None,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 100,
) -> HTMLResponse:
    """The sample grid: one page of the listing the REST API serves, with its filters.

    Only what the grid needs is read (the listing and the label set), so the page costs about
    what ``GET /datasets/{id}/samples`` costs (``scripts/bench-dashboard``).
    """
    service = DatasetService(session, ctx)
    listing = service.list_samples(dataset_id, SampleFilter(label, unlabeled, split), offset, limit)
    ds = service.get(dataset_id)
    query = _filter_query(label, unlabeled, split)
    base = f"/ui/datasets/{dataset_id}"

    def page_url(at: int) -> str:
        return f"{base}/samples?" + urlencode({**query, "offset": at, "limit": limit})

    label_base = f"{base}/label?" + urlencode(query) + ("&" if query else "") + "i="
    return page(
        request,
        "datasets_samples.html",
        user,
        ds=ds,
        samples=_samples(listing),
        total=listing.total,
        offset=offset,
        limit=limit,
        label=label or "",
        unlabeled=unlabeled,
        split=split or "",
        prev_url=page_url(max(0, offset - limit)) if offset > 0 else "",
        next_url=page_url(offset + limit) if offset + limit < listing.total else "",
        label_base=label_base,
    )


@router.get("/datasets/{dataset_id}/label")
def label_page(
    dataset_id: str,
    request: Request,
    user: PageUser,
    session: SessionDep,
    ctx: ContextDep,
    label: Annotated[str | None, Query(max_length=200)] = None,
    unlabeled: bool = False,
    split: Annotated[str | None, Query(pattern="^(train|validation)$")] = None,
    i: Annotated[int, Query(ge=0, le=2**31)] = 0,
) -> HTMLResponse:
    """One sample at a time, at position ``i`` of the filtered listing."""
    service = DatasetService(session, ctx)
    ds = service.get(dataset_id)
    listing = service.list_samples(dataset_id, SampleFilter(label, unlabeled, split), i, 1)
    samples = _samples(listing)
    query = _filter_query(label, unlabeled, split)

    def at(n: int) -> str:
        return f"/ui/datasets/{dataset_id}/label?" + urlencode({**query, "i": n})

    # With the "unlabeled" filter a labelled sample leaves the listing, so the next one moves up.
    after_save = at(i) if unlabeled else at(i + 1)
    return page(
        request,
        "datasets_label.html",
        user,
        ds=ds,
        sample=samples[0] if samples else None,
        i=i,
        total=listing.total,
        prev_url=at(i - 1) if i > 0 else "",
        next_url=at(i + 1) if i + 1 < listing.total else "",
        after_save=after_save if (unlabeled or i + 1 < listing.total) else at(i),
        labels=sorted(lb.name for lb in ds.labels),
        back_url=f"/ui/datasets/{dataset_id}/samples?" + urlencode(query),
    )


@router.get("/datasets/{dataset_id}/review")
def review_page(
    dataset_id: str,
    request: Request,
    user: PageUser,
    session: SessionDep,
    ctx: ContextDep,
    order: Annotated[str, Query(pattern="^(confidence|disagreement)$")] = "confidence",
    i: Annotated[int, Query(ge=0, le=10_000)] = 0,
) -> HTMLResponse:
    """Review mode: the dataset's captures waiting for review, one at a time, in the queue's
    order; position ``i`` skips the ones passed over (a reviewed capture leaves the queue, so
    the next one moves up to the same position)."""
    captures = CaptureService(session, ctx)
    ds, pending, items = captures.review_queue(dataset_id, order, i + 1)
    capture = items[i] if i < len(items) else None

    def at(n: int) -> str:
        return f"/ui/datasets/{dataset_id}/review?" + urlencode({"order": order, "i": n})

    return page(
        request,
        "datasets_review.html",
        user,
        ds=ds,
        capture=capture,
        pending=pending,
        i=i,
        order=order,
        orders=ORDERS,
        labels=sorted(ds.labels),
        next_url=at(i + 1) if i + 1 < pending else "",
        prev_url=at(i - 1) if i > 0 else "",
        after=at(i),
        order_url=f"/ui/datasets/{dataset_id}/review?order=",
        back_url=f"/ui/datasets/{dataset_id}",
    )
